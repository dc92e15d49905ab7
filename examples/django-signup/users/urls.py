from django.urls import path

from users import views

urlpatterns = [
    path("signup", views.signup),
    path("signup/", views.signup),
    path("tasks/<str:task_id>", views.task_state),
    path("healthz", views.healthz),
]
