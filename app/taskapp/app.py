"""The Celery application and its settings.

Every setting that differs from Celery's default says why. The queues are
declared exactly as the rabbitmq role declares them: RabbitMQ refuses a
redeclaration with other arguments (PRECONDITION_FAILED), so both are built
from the same list in the inventory.

On RabbitMQ the app queues are quorum queues bound to a topic exchange, so
Celery (5.5 and later) uses RabbitMQ's native delayed delivery: a countdown
task waits in the broker's delay queues, not in a worker's memory.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from taskapp import config as config_module

# Priorities as the API takes them: 0 (lowest) to 9 (most urgent).
PRIORITY_MIN = 0
PRIORITY_MAX = 9


# RabbitMQ 4.0 quorum queues know two priorities: a message whose priority
# is above 4 is urgent and delivered before the others (two urgent ones for
# every normal one while both wait), 0-4 and none are normal.
QUORUM_URGENT_FROM = 5


def broker_priority(priority: int, broker: str) -> int:
    """Translate an API priority (9 most urgent) into the broker's scale.

    RabbitMQ delivers higher numbers first (a quorum queue: 5-9 before 0-4);
    kombu's Redis transport serves its priority sub-queues from 0 upwards, so
    0 is the most urgent there.
    """
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
    return priority if broker == "rabbitmq" else PRIORITY_MAX - priority


def queue_arguments(queue: dict[str, Any]) -> dict[str, Any]:
    """The x-arguments of a queue, as the rabbitmq role passes them."""
    arguments: dict[str, Any] = {}
    if queue.get("type", config_module.DEFAULT_QUEUE_TYPE) == "quorum":
        arguments["x-queue-type"] = "quorum"
    if queue.get("max_priority") is not None:
        arguments["x-max-priority"] = queue["max_priority"]
    return arguments


# Celery's native delayed delivery routes a delayed message through topic
# exchanges (its routing key carries the delay's bits before the queue's
# key); it does not work with direct exchanges. The rabbitmq role declares
# the same type.
EXCHANGE_TYPE = "topic"


def build_queues(config: dict[str, Any]) -> list[Queue]:
    """kombu queues bound to their durable topic exchange by queue name."""
    queues = []
    for queue in config["queues"]:
        exchange = Exchange(queue.get("exchange", "tasks"), type=EXCHANGE_TYPE, durable=True)
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
    """Longest time a Redis-broker worker may hold a delivery: countdown plus run time."""
    return config["max_countdown"] + config["task_time_limit"] + 60


def broker_urls(config: dict[str, Any]) -> list[str]:
    """The broker's URLs: one per RabbitMQ node, tried in this order (failover)."""
    return [url for url in config["broker_url"].split(";") if url]


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
        "task_default_exchange_type": EXCHANGE_TYPE,
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
        # timeout and a bounded publish retry, then the API answers 503. A
        # retry connects to the next node of the list (failover), so every
        # node is tried once before a submission is refused.
        "broker_connection_timeout": 2.0,
        "broker_failover_strategy": "round-robin",
        "task_publish_retry_policy": {
            "max_retries": max(len(broker_urls(config)), 1),
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        },
        # A Redis restart or outage must not fail a task: workers retry
        # every result write (and the STARTED state) until Redis is back,
        # with backoff, instead of failing the task and dead-lettering it.
        # (The API turns this off: it answers 503 at once instead.)
        "result_backend_always_retry": True,
        "result_backend_max_sleep_between_retries_ms": 2000,
        "broker_connection_retry_on_startup": True,
        "redis_socket_connect_timeout": 2,
        "redis_socket_timeout": 5,
        # Welcome emails have their queue; the kit's health check has its
        # own, so it never waits behind the tasks users queued.
        "task_routes": {
            name: {"queue": queue}
            for name, queue in (("send_welcome_email", "emails"), ("health", "health"))
            if queue in queue_names
        },
        # A task sent without a priority is the least urgent on both brokers
        # (kombu's Redis default, 0, would make it the most urgent there), so
        # a broker migration translating 9 - p keeps the order.
        "task_default_priority": broker_priority(PRIORITY_MIN, config["broker"]),
    }
    if config["broker"] == "rabbitmq":
        # Publisher confirms: apply_async returns only once RabbitMQ has
        # taken responsibility for the message (on a quorum queue: once a
        # majority of its members wrote it).
        settings["broker_transport_options"] = {"confirm_publish": True}
        # Quorum queues refuse global QoS; Celery detects them and counts
        # prefetch per consumer, and declares the delay queues it needs as
        # quorum queues (both are Celery's defaults, set here on purpose).
        settings["worker_detect_quorum_queues"] = True
        settings["broker_native_delayed_delivery_queue_type"] = "quorum"
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
