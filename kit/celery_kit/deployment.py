"""The deployment's settings as the hosts see them: one JSON file.

The celery_app role renders it from the inventory (the broker, its URLs,
Redis, the queues the broker declares, the time limit); every kit process on
a host reads it: the worker and producer boot (celery_kit.boot), the
at-most-once guard, the dead-letter tools. CELERY_KIT_DEPLOYMENT names it;
without it, the defaults below apply (an in-memory broker and result store),
good for unit tests and a developer's machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from celery_kit import apigate

DEPLOYMENT_ENV = "CELERY_KIT_DEPLOYMENT"

BROKERS = ("rabbitmq", "redis")
QUEUE_TYPES = ("quorum", "classic")
# A queue without a type is a quorum queue, as in the rabbitmq role.
DEFAULT_QUEUE_TYPE = "quorum"
# The kit's own queue: the health check (make deploy ends with one) runs
# there, so it never waits behind the tasks users queued. Every worker pool
# consumes it; it is not dead-lettered.
HEALTH_QUEUE = {"name": "health", "type": "quorum", "exchange": "tasks", "dead_letter": False}
DEAD_LETTER_QUEUE = "dead-letter"

DEFAULTS: dict[str, Any] = {
    "broker": "rabbitmq",
    "broker_url": "memory://",
    "result_backend": "cache+memory://",
    "locks_url": None,
    "queues": [HEALTH_QUEUE, {"name": "default", "type": "quorum", "exchange": "tasks"}],
    "default_queue": "default",
    "dead_letter_queue": DEAD_LETTER_QUEUE,
    "task_time_limit": 300,
    "max_countdown": 3600,
    "result_expires": 86400,
    # Workers send task events (Flower's task list), with a monitoring host.
    "task_events": False,
    # Whether this host's Celery declares the queues and exchanges it
    # publishes to. False on a producer whose broker user may only publish
    # (the api hosts: the rabbitmq role's publisher user); the broker has
    # them already (the rabbitmq role declares them).
    "declare": True,
    # The producers' durable outbox (celery_kit.outbox): a SQLite file on
    # each producer host and its bounds. No path: no outbox, a producer
    # answers 503 while the broker does not take a task.
    "outbox": {"path": None, "max_entries": 100_000, "max_bytes": 256 * 1024 * 1024},
    # The deployment's certificate authority on the host (TLS, the kit's
    # default): the only CA its clients trust. The broker and Redis URLs
    # carry it too; the kit's own HTTPS clients (celery_kit.loadgen) read it
    # here. None: no TLS.
    "tls_ca": None,
    # The producer's gate (celery_kit.apigate): its tokens file, public
    # paths and their limits. None: no gate (unit tests, a developer's
    # machine); every deployment of the kit has one.
    "api_gate": None,
}


class DeploymentError(ValueError):
    """The deployment file is missing, unreadable or inconsistent."""


def load(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The deployment's settings: the defaults updated with the file's keys."""
    path = path or os.environ.get(DEPLOYMENT_ENV)
    settings = dict(DEFAULTS)
    if path:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise DeploymentError(f"cannot read the deployment settings {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise DeploymentError(f"the deployment settings {path} must hold a JSON object")
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise DeploymentError(f"the deployment settings {path} have unknown keys: {', '.join(unknown)}")
        settings.update(loaded)
    validate(settings)
    return settings


def validate(settings: dict[str, Any]) -> None:
    """Reject settings no app can run with, naming the key."""
    if settings["broker"] not in BROKERS:
        raise DeploymentError(f"broker must be one of {BROKERS}, not {settings['broker']!r}")
    validate_queues(settings)
    for key in ("task_events", "declare"):
        if not isinstance(settings[key], bool):
            raise DeploymentError(f"{key} must be true or false")
    validate_outbox(settings["outbox"])
    if settings["api_gate"] is not None:
        try:
            apigate.Settings.parse(settings["api_gate"])
        except (apigate.GateError, TypeError, ValueError) as exc:
            raise DeploymentError(f"api_gate: {exc}") from exc
    tls_ca = settings["tls_ca"]
    if tls_ca is not None and not (isinstance(tls_ca, str) and tls_ca.startswith("/")):
        raise DeploymentError("tls_ca must be the absolute path of the CA's certificate, or null")
    for key in ("task_time_limit", "max_countdown", "result_expires"):
        if not isinstance(settings[key], int) or settings[key] <= 0:
            raise DeploymentError(f"{key} must be a positive integer")


def validate_queues(settings: dict[str, Any]) -> None:
    names = queue_names(settings)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise DeploymentError("queues must be a non-empty list of objects with a name")
    for queue in settings["queues"]:
        kind = queue.get("type", DEFAULT_QUEUE_TYPE)
        if kind not in QUEUE_TYPES:
            raise DeploymentError(f"queue {queue['name']!r}: type must be one of {QUEUE_TYPES}, not {kind!r}")
        if kind == "quorum" and queue.get("max_priority") is not None:
            raise DeploymentError(f"queue {queue['name']!r}: max_priority applies to classic queues only")
    if settings["default_queue"] not in names:
        raise DeploymentError(f"default_queue {settings['default_queue']!r} is not one of the queues {names}")


def validate_outbox(outbox: Any) -> None:
    if not isinstance(outbox, dict) or set(outbox) - {"path", "max_entries", "max_bytes"}:
        raise DeploymentError("outbox must be an object with path, max_entries and max_bytes")
    if outbox.get("path") is not None and not (isinstance(outbox["path"], str) and outbox["path"].startswith("/")):
        raise DeploymentError("outbox.path must be an absolute path or null")
    for key in ("max_entries", "max_bytes"):
        value = outbox.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DeploymentError(f"outbox.{key} must be a positive integer")


def queue_names(settings: dict[str, Any]) -> list[str]:
    return [queue.get("name") for queue in settings["queues"]]


def broker_urls(settings: dict[str, Any]) -> list[str]:
    """The broker's URLs: one per RabbitMQ node, tried in this order (failover)."""
    return [url for url in settings["broker_url"].split(";") if url]
