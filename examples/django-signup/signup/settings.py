"""Django settings of the signup example.

Everything that differs between a developer's machine and a deployment comes
from the environment; the defaults suit a development run from this
directory (DJANGO_DEBUG=1 python manage.py runserver). Under the kit, the
values come from kit_app_environment and kit_app_secrets in celery-kit.yml.
"""

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

# The project directory (the one holding manage.py). The deployment sets
# every path below explicitly: installed in a virtualenv, this would be
# site-packages.
BASE_DIR = Path(__file__).resolve().parent.parent


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


DEBUG = _flag("DJANGO_DEBUG")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set: it is required when DEBUG is off"
            " (the kit generates one per deployment; for a development run set DJANGO_DEBUG=1)"
        )
    # Development only: a throwaway key per process. Nothing in this project
    # keeps signed data across processes (no sessions, no password-reset links).
    SECRET_KEY = secrets.token_urlsafe(50)

ALLOWED_HOSTS = [host.strip() for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")]

# Only what the signup API uses: the auth app for its User model (it needs
# contenttypes for its permissions). No admin, sessions or static files, so
# the deployment has nothing to collect or serve besides the API.
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "users",
]

# The API is JSON only, used without cookies or browser sessions, so there is
# no CSRF middleware (CSRF protects cookie-authenticated browser forms) and no
# session or authentication middleware.
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
]
# An API answers the path it was asked; a redirect to the slashed URL would
# turn a POST into a GET. The routes that want it accept both forms.
APPEND_SLASH = False

ROOT_URLCONF = "signup.urls"
WSGI_APPLICATION = "signup.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SIGNUP_DATABASE") or BASE_DIR / "db.sqlite3",
        "OPTIONS": {
            # Several gunicorn processes and threads share the file: with
            # WAL, readers do not block the writer nor the writer them.
            "init_command": "PRAGMA journal_mode=WAL;",
            # Take the write lock when a transaction starts, so a busy
            # database makes the transaction wait (up to the timeout) instead
            # of failing when a read lock must be upgraded mid-transaction.
            "transaction_mode": "IMMEDIATE",
            # Seconds a connection waits for another's write lock.
            "timeout": 20,
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Kept simple on purpose: a password of at least 8 characters. Add Django's
# other validators (similarity, common passwords, numeric) here to tighten it.
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 8},
    },
]

# A signup body is a few short fields: anything larger is refused (413)
# before it is parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = 4096

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# Mail is written to files, one per message, in SIGNUP_MAIL_DIR: nothing ever
# leaves the host. (A real deployment would point EMAIL_BACKEND at SMTP.)
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = os.environ.get("SIGNUP_MAIL_DIR") or BASE_DIR / "sent-mail"
DEFAULT_FROM_EMAIL = "welcome@signup.example"

# Where users.tasks.track_signup appends one JSON line per signup.
SIGNUP_ANALYTICS_FILE = os.environ.get("SIGNUP_ANALYTICS_FILE") or BASE_DIR / "analytics.jsonl"

# With DEBUG off, Django sends request errors (the traceback of a 500) only
# to mail_admins; send them to stderr instead, which the service manager
# keeps. Not propagated: a Celery worker puts its own handler on the root.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING", "propagate": False}},
}

# --- Celery (read by signup.celery with the CELERY_ namespace) -------------
# The app's own choices: which queue each task goes to, its time limits, its
# serializers. The kit replaces the connection settings with the
# deployment's and adds its safety settings (late acknowledgement, requeue
# when a worker is lost, dead-lettering of failed tasks, publisher confirms,
# prefetch of one) at deploy time, so they are not set here: setting them
# differently would make `celery-kit check` refuse the app.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "redis://localhost:6379/1")
CELERY_TASK_ROUTES = {
    "users.tasks.send_welcome_email": {"queue": "email"},
    "users.tasks.track_signup": {"queue": "analytics"},
}
CELERY_TASK_DEFAULT_QUEUE = "email"
# At most the deployment's task time limit (kit_task_time_limit), which the
# kit derives RabbitMQ's consumer timeout from; the soft limit leaves a task
# ten seconds to clean up.
CELERY_TASK_TIME_LIMIT = 60
CELERY_TASK_SOFT_TIME_LIMIT = 50
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
