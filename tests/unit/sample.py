"""The sample app as the kit configures it, for the unit tests."""

from __future__ import annotations

from typing import Any

from celery import Celery

from celery_kit import boot, deployment
from taskapp.app import create_app

# The sample's queues as the inventory declares them, the kit's in front.
QUEUES = [
    deployment.HEALTH_QUEUE,
    {"name": "default", "type": "quorum", "exchange": "tasks"},
    {"name": "emails", "type": "quorum", "exchange": "tasks"},
    {"name": "priority", "type": "quorum", "exchange": "tasks"},
]


def deployment_settings(**overrides: Any) -> dict[str, Any]:
    """The deployment file's settings (in-memory broker and results unless overridden)."""
    return {**deployment.DEFAULTS, "queues": QUEUES, **overrides}


def kit_app(settings: dict[str, Any] | None = None) -> Celery:
    """A new sample app with the kit's settings applied, as a worker or the API loads it."""
    app = create_app()
    boot.configure(app, settings if settings is not None else deployment_settings())
    return app
