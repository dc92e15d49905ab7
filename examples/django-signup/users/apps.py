from django.apps import AppConfig


class UsersConfig(AppConfig):
    # No models of its own: users are django.contrib.auth's User.
    name = "users"
    verbose_name = "Users"
