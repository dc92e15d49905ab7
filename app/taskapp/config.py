"""Configuration of the sample app: one JSON file rendered from the inventory.

The file is named by the TASKAPP_CONFIG environment variable (the services
set it to /etc/taskapp/config.json). Without it, the defaults below apply:
an in-memory broker and result store, good for unit tests and a quick look.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CONFIG_ENV = "TASKAPP_CONFIG"

# Queues as the rabbitmq role declares them (rabbitmq_queues format); a
# queue without a type is a quorum queue, as in the role.
DEFAULT_QUEUE_TYPE = "quorum"
QUEUE_TYPES = ("quorum", "classic")
DEFAULT_QUEUES = [
    {"name": "health", "type": "quorum", "exchange": "tasks", "dead_letter": False},
    {"name": "default", "type": "quorum", "exchange": "tasks"},
    {"name": "emails", "type": "quorum", "exchange": "tasks"},
    {"name": "priority", "type": "quorum", "exchange": "tasks"},
]

DEFAULTS: dict[str, Any] = {
    "broker": "rabbitmq",
    "broker_url": "memory://",
    "result_backend": "cache+memory://",
    "locks_url": None,
    "queues": DEFAULT_QUEUES,
    "default_queue": "default",
    "task_time_limit": 300,
    "max_countdown": 3600,
    "result_expires": 86400,
    "mail_sink": os.path.join(tempfile.gettempdir(), "taskapp-mail-sink.log"),
}

BROKERS = ("rabbitmq", "redis")


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or inconsistent."""


def load(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Return the configuration: the defaults updated with the file's keys."""
    path = path or os.environ.get(CONFIG_ENV)
    config = dict(DEFAULTS)
    if path:
        try:
            loaded = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration {path} must hold a JSON object")
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"configuration {path} has unknown keys: {', '.join(unknown)}")
        config.update(loaded)
    validate(config)
    return config


def validate(config: dict[str, Any]) -> None:
    """Reject a configuration the app cannot run with, naming the key."""
    if config["broker"] not in BROKERS:
        raise ConfigError(f"broker must be one of {BROKERS}, not {config['broker']!r}")
    names = [queue.get("name") for queue in config["queues"]]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ConfigError("queues must be a non-empty list of objects with a name")
    for queue in config["queues"]:
        kind = queue.get("type", DEFAULT_QUEUE_TYPE)
        if kind not in QUEUE_TYPES:
            raise ConfigError(f"queue {queue['name']!r}: type must be one of {QUEUE_TYPES}, not {kind!r}")
        if kind == "quorum" and queue.get("max_priority") is not None:
            raise ConfigError(f"queue {queue['name']!r}: max_priority applies to classic queues only")
    if config["default_queue"] not in names:
        raise ConfigError(f"default_queue {config['default_queue']!r} is not one of the queues {names}")
    for key in ("task_time_limit", "max_countdown", "result_expires"):
        if not isinstance(config[key], int) or config[key] <= 0:
            raise ConfigError(f"{key} must be a positive integer")
