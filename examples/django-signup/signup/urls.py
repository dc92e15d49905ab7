"""URL routes: the JSON API of the users app, and JSON error pages."""

from django.urls import include, path

urlpatterns = [
    path("", include("users.urls")),
]

# Every error is answered in JSON, as the API's own answers are (Django uses
# these when DEBUG is off).
handler400 = "signup.errors.bad_request"
handler403 = "signup.errors.forbidden"
handler404 = "signup.errors.not_found"
handler500 = "signup.errors.server_error"
