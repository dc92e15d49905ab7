"""Test setup: the example's Django project on a temporary database, with Celery running tasks eagerly.

Run from the repository root:
    .venv/bin/python -m pytest examples/django-signup/tests

Everything happens at import, before the test modules import the project:
the environment the settings read, django.setup(), the migrations. Tasks run
inside the request (task_always_eager), so a signup really writes its email
file and its analytics line; the broker and the result store are in memory.
"""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from signup_environment import EXAMPLE, KIT, data_files

sys.path[:0] = [str(EXAMPLE), str(KIT)]

SCRATCH = Path(tempfile.mkdtemp(prefix="django-signup-tests-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
ENVIRONMENT_BEFORE = dict(os.environ)
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "signup.settings",
        "DJANGO_SECRET_KEY": "test",
        # The host name of Django's test client.
        "DJANGO_ALLOWED_HOSTS": "testserver",
        **data_files(SCRATCH),
    }
)
os.environ.pop("DJANGO_DEBUG", None)

import django  # noqa: E402 (after the environment the settings read)

django.setup()

from django.core.management import call_command  # noqa: E402

from signup.celery import app as celery_app  # noqa: E402

call_command("migrate", verbosity=0)

# Set on the app, not as CELERY_BROKER_URL / CELERY_RESULT_BACKEND in the
# environment: Celery reads those for every app in the process, and would
# redirect the apps of other tests run in the same session.
celery_app.conf.broker_url = "memory://"
celery_app.conf.result_backend = "cache+memory://"
celery_app.conf.task_always_eager = True
celery_app.conf.task_eager_propagates = True
# Lets GET /tasks/<id> read the state of a task that ran eagerly.
celery_app.conf.task_store_eager_result = True

# Django is set up; put the environment back, so that the processes other
# tests start in the same session (a Celery app with Django's fixup reads
# DJANGO_SETTINGS_MODULE) do not inherit this project's.
os.environ.clear()
os.environ.update(ENVIRONMENT_BEFORE)


@pytest.fixture(autouse=True)
def isolated(tmp_path):
    """Each test gets its own mail directory and analytics file, and no users left from another test.

    Independent of monkeypatch, so that a test's patches are undone before
    this cleanup runs.
    """
    from django.contrib.auth.models import User  # noqa: PLC0415 (after django.setup())
    from django.test import override_settings  # noqa: PLC0415

    with override_settings(
        EMAIL_FILE_PATH=str(tmp_path / "mail"), SIGNUP_ANALYTICS_FILE=str(tmp_path / "analytics.jsonl")
    ):
        yield
    User.objects.all().delete()


@pytest.fixture
def settings_override(monkeypatch):
    """Set a Django setting for one test (read at use: the mail backend, the analytics task)."""
    from django.conf import settings  # noqa: PLC0415

    def override(name: str, value: object) -> None:
        monkeypatch.setattr(settings, name, value)

    return override


@pytest.fixture
def tasks_fail_quietly():
    """A failing eager task ends as a FAILURE result instead of raising.

    Needed to see retries: with task_eager_propagates on, the first retry
    raises celery.exceptions.Retry out of apply() instead of running again.
    """
    celery_app.conf.task_eager_propagates = False
    yield
    celery_app.conf.task_eager_propagates = True


@pytest.fixture
def mail_dir(tmp_path) -> Path:
    return tmp_path / "mail"


@pytest.fixture
def analytics_file(tmp_path) -> Path:
    return tmp_path / "analytics.jsonl"


@pytest.fixture
def client():
    from django.test import Client  # noqa: PLC0415

    return Client()
