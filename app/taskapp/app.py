"""The Celery application and its settings.

Every setting that differs from Celery's default says why. The queues are
declared exactly as the rabbitmq role declares them: RabbitMQ refuses a
redeclaration with other arguments (PRECONDITION_FAILED), so both are built
from the same list in the inventory.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from taskapp import config as config_module

# Priorities as the API takes them: 0 (lowest) to 9 (most urgent).
PRIORITY_MIN = 0
PRIORITY_MAX = 9


def broker_priority(priority: int, broker: str) -> int:
    """Translate an API priority (9 most urgent) into the broker's scale.

    RabbitMQ delivers higher numbers first; kombu's Redis transport serves
    its priority sub-queues from 0 upwards, so 0 is the most urgent there.
    """
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
    return priority if broker == "rabbitmq" else PRIORITY_MAX - priority


def queue_arguments(queue: dict[str, Any]) -> dict[str, Any]:
    """The x-arguments of a queue, as the rabbitmq role passes them."""
    arguments: dict[str, Any] = {}
    if queue.get("type", "classic") == "quorum":
        arguments["x-queue-type"] = "quorum"
    if queue.get("max_priority") is not None:
        arguments["x-max-priority"] = queue["max_priority"]
    return arguments


def build_queues(config: dict[str, Any]) -> list[Queue]:
    """kombu queues bound to their durable direct exchange by queue name."""
    queues = []
    for queue in config["queues"]:
        exchange = Exchange(queue.get("exchange", "tasks"), type="direct", durable=True)
        queues.append(
            Queue(
                queue["name"],
                exchange,
                routing_key=queue.get("routing_key", queue["name"]),
                durable=True,
                queue_arguments=queue_arguments(queue) or None,
            )
        )
    return queues


def longest_hold_seconds(config: dict[str, Any]) -> int:
    """Longest time a worker may hold a delivery: countdown plus run time."""
    return config["max_countdown"] + config["task_time_limit"] + 60


def build_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Celery settings for a configuration (see taskapp.config)."""
    time_limit = config["task_time_limit"]
    default_queue = config["default_queue"]
    queue_names = {queue["name"] for queue in config["queues"]}
    settings: dict[str, Any] = {
        "broker_url": config["broker_url"],
        "result_backend": config["result_backend"],
        "task_queues": build_queues(config),
        "task_default_queue": default_queue,
        "task_default_exchange": "tasks",
        "task_default_routing_key": default_queue,
        # A task sent to a queue nobody declared would sit unconsumed.
        "task_create_missing_queues": False,
        # Acknowledge after the task ran, not when it was received: a worker
        # that dies mid-task leaves the message to be delivered again.
        "task_acks_late": True,
        # ... and when the pool process is killed (OOM, SIGKILL), requeue the
        # message instead of acknowledging it as failed.
        "task_reject_on_worker_lost": True,
        # A task that fails for good is rejected without requeue, so
        # RabbitMQ dead-letters it instead of it being acknowledged away.
        "task_acks_on_failure_or_timeout": False,
        # Each process reserves one message at a time: long tasks do not
        # hold back short ones, and a dying worker holds as few as possible.
        "worker_prefetch_multiplier": 1,
        # If the broker connection drops, running late-ack tasks will be
        # redelivered; cancel them rather than finish them twice.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Hard limit kills a stuck task; the soft limit lets it clean up.
        "task_time_limit": time_limit,
        "task_soft_time_limit": max(time_limit - 10, 1),
        # Report STARTED so GET /tasks/<id> tells queued from running.
        "task_track_started": True,
        # Results are kept for a while, then Redis reclaims the memory.
        "result_expires": config["result_expires"],
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Producers must not hang on an unreachable broker: short connect
        # timeout and a bounded publish retry, then the API answers 503.
        "broker_connection_timeout": 2.0,
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        },
        "broker_connection_retry_on_startup": True,
        "redis_socket_connect_timeout": 2,
        "redis_socket_timeout": 5,
        "task_routes": {"send_welcome_email": {"queue": "emails"}} if "emails" in queue_names else {},
        # A task sent without a priority is the least urgent on both brokers
        # (kombu's Redis default, 0, would make it the most urgent there), so
        # a broker migration translating 9 - p keeps the order.
        "task_default_priority": broker_priority(PRIORITY_MIN, config["broker"]),
    }
    if config["broker"] == "rabbitmq":
        # Publisher confirms: apply_async returns only once RabbitMQ has
        # taken responsibility for the message.
        settings["broker_transport_options"] = {"confirm_publish": True}
    else:
        settings["broker_transport_options"] = {
            # An unacknowledged message comes back after this long; it must
            # outlast the longest countdown plus run time, or ETA tasks run
            # twice.
            "visibility_timeout": longest_hold_seconds(config),
            # Ten priority sub-queues, 0 served first (see broker_priority).
            "priority_steps": list(range(PRIORITY_MIN, PRIORITY_MAX + 1)),
            "sep": ":",
            "queue_order_strategy": "priority",
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        }
    return settings


def create_app(config: dict[str, Any] | None = None) -> Celery:
    """A Celery app configured from the given (or the loaded) configuration."""
    config = config if config is not None else config_module.load()
    celery_app = Celery("taskapp")
    celery_app.config_from_object(build_settings(config))
    celery_app.conf.taskapp = config
    celery_app.autodiscover_tasks(["taskapp"], related_name="tasks", force=True)
    return celery_app


app = create_app()
