"""The Django project package.

The Celery app is imported here so that it exists (and is the one shared_task
binds to) whenever Django starts: the web process, manage.py, the worker.
"""

from .celery import app as celery_app

__all__ = ["celery_app"]
