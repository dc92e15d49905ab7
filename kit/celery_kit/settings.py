"""The kit's Celery settings, applied on top of any app's own configuration.

Three kinds of settings, and who wins when the app sets one too:

- DEPLOYMENT settings (where the broker and Redis are, the queues the broker
  declares, the broker's transport options): the deployment's values always
  win; the app cannot know them. An app value that differs is reported as
  overridden.
- GUARANTEES (late acks, requeue when a worker is lost, dead-lettering of
  failed tasks, publisher confirms, one message reserved per process, ...):
  the kit's value applies; an app that sets another value (in its
  configuration or on a task) is refused, naming the setting, because the
  kit's promises (no task lost, none run twice) would be false.
- DEFAULTS (time limits, result expiry, serializers, STARTED state): the
  kit's value applies unless the app sets its own, which is kept. A time
  limit above the deployment's is refused (the broker's consumer timeout and
  the workers' stop timeout are derived from it).

"The app sets" means its configured value differs from Celery's default:
a value equal to Celery's default cannot be told from an unset one, so the
kit's applies (task_acks_late=False, for one, is Celery's default: an app
that says so still gets late acks; a task that says so is refused).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS
from kombu import Queue

from celery_kit import amqpurl, redisurl
from celery_kit import deployment as deployment_module
from celery_kit.topology import DEFAULT_EXCHANGE, EXCHANGE_TYPE, PRIORITY_MIN, broker_priority, build_queues

HEALTH_TASK = "celery_kit.health"
# make bench's tasks (celery_kit.brokerbench): the same work with and
# without the at-most-once guard.
BENCH_TASK = "celery_kit.bench"
BENCH_GUARDED_TASK = "celery_kit.bench_guarded"

# Each guarantee with what goes wrong without it.
GUARANTEES: dict[str, tuple[Any, str]] = {
    "task_acks_late": (
        True,
        "a message is acknowledged before its task ran, so a worker that dies mid-task loses it",
    ),
    "task_reject_on_worker_lost": (
        True,
        "a task whose pool process is killed (OOM, SIGKILL) is acknowledged as failed instead of requeued",
    ),
    "task_acks_on_failure_or_timeout": (
        False,
        "a task that fails for good is acknowledged away instead of dead-lettered for a replay",
    ),
    "worker_prefetch_multiplier": (
        1,
        "a process reserves several messages: a dying worker holds more, and a reserved message can wait"
        " past RabbitMQ's consumer timeout (derived from one message per process) and run twice",
    ),
    "worker_cancel_long_running_tasks_on_connection_loss": (
        True,
        "a task still running when the broker connection drops is redelivered and finished twice",
    ),
    "task_create_missing_queues": (
        False,
        "a task routed to a queue the broker does not declare would wait in a queue nobody consumes",
    ),
    "task_always_eager": (
        False,
        "tasks would run inside the producer instead of going through the broker",
    ),
}
# Guarantees a task can also set on itself (Task attributes).
TASK_GUARANTEES = {
    "acks_late": "task_acks_late",
    "reject_on_worker_lost": "task_reject_on_worker_lost",
    "acks_on_failure_or_timeout": "task_acks_on_failure_or_timeout",
}
# Environment variables Celery reads over the app's configuration (and so
# over the kit's): an app environment must not set them.
ENVIRONMENT_OVERRIDES = (
    "CELERY_BROKER_URL",
    "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL",
    "CELERY_RESULT_BACKEND",
)
# How a producer on the Redis broker behind Sentinel retries a publish: about
# 12 s in all, longer than a failover (roles/redis/defaults/main.yml).
SENTINEL_PUBLISH_RETRY_POLICY = {"max_retries": 12, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 1.0}
# The transport option behind publisher confirms, on RabbitMQ.
CONFIRM_REASON = "a publish returns before RabbitMQ has taken the message, so a broker failure loses it"


@dataclass
class Outcome:
    """What applying the kit's settings did, and what it refuses."""

    overridden: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class UnsafeSettings(RuntimeError):
    """The app's configuration would make the kit's guarantees false."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the app's Celery configuration is refused:\n  - " + "\n  - ".join(problems))
        self.problems = problems


def deployment_settings(deployment: dict[str, Any]) -> dict[str, Any]:
    """Settings the deployment owns: connections, queues, transport options."""
    default_queue = deployment["default_queue"]
    urls = deployment_module.broker_urls(deployment)
    settings: dict[str, Any] = {
        # With several Redis hosts these name their Sentinels (the kit's
        # sentinel:// URLs, celery_kit.redisurl): the URL goes to Celery
        # without the kit's query, the group's name and the Sentinels'
        # password go in the transport options.
        "broker_url": broker_url(deployment),
        "result_backend": redisurl.celery_url(deployment["result_backend"]),
        "task_queues": build_queues(deployment["queues"], declare=deployment["declare"]),
        "task_default_queue": default_queue,
        "task_default_exchange": DEFAULT_EXCHANGE,
        "task_default_exchange_type": EXCHANGE_TYPE,
        "task_default_routing_key": default_queue,
        # Producers must not hang on an unreachable broker: short connect
        # timeout and a bounded publish retry. A retry connects to the next
        # node of the list (failover), so every node is tried once before a
        # publish fails.
        "broker_connection_timeout": 2.0,
        "broker_failover_strategy": "round-robin",
        "task_publish_retry_policy": {
            "max_retries": max(len(urls), 1),
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        },
        "broker_connection_retry_on_startup": True,
        # A Redis restart or outage must not fail a task: workers retry
        # every result write (and the STARTED state) until Redis is back,
        # with backoff, instead of failing the task and dead-lettering it.
        "result_backend_always_retry": True,
        "result_backend_max_sleep_between_retries_ms": 2000,
        "redis_socket_connect_timeout": 2,
        "redis_socket_timeout": 5,
        # Results through Sentinel: each retry above asks the Sentinels for
        # the primary again, so a write during a failover lands on the
        # promoted replica once it is the primary.
        "result_backend_transport_options": redisurl.transport_options(deployment["result_backend"]),
        # A task sent without a priority is the least urgent on both brokers
        # (kombu's Redis default, 0, would make it the most urgent there), so
        # a broker migration translating 9 - p keeps the order.
        "task_default_priority": broker_priority(PRIORITY_MIN, deployment["broker"]),
        # Task events for a dashboard (Flower), when the deployment has one:
        # received, started, succeeded or failed, from the worker. Producers
        # send no task-sent event: it would add a confirmed publish to every
        # submission.
        "worker_send_task_events": deployment["task_events"],
    }
    # Over TLS (the kit's default): the deployment's CA is the only one
    # trusted, and the server's certificate must name the address or the
    # service reached (celery_kit.amqpurl, celery_kit.redisurl).
    tls = {
        "broker_use_ssl": broker_ssl(deployment),
        "redis_backend_use_ssl": redisurl.ssl_options(deployment["result_backend"]),
    }
    settings.update({key: options for key, options in tls.items() if options})
    if deployment["broker"] == "rabbitmq":
        # Publisher confirms: a publish returns only once RabbitMQ has taken
        # responsibility for the message (on a quorum queue: once a majority
        # of its members wrote it).
        settings["broker_transport_options"] = {"confirm_publish": True}
        # Quorum queues refuse global QoS; Celery detects them and counts
        # prefetch per consumer, and declares the delay queues it needs as
        # quorum queues (both Celery's defaults, set here on purpose).
        settings["worker_detect_quorum_queues"] = True
        settings["broker_native_delayed_delivery_queue_type"] = "quorum"
    else:
        settings["broker_transport_options"] = {
            # An unacknowledged message comes back after this long; it must
            # outlast the longest countdown plus run time, or ETA tasks run
            # twice.
            "visibility_timeout": longest_hold_seconds(deployment),
            # Ten priority sub-queues, 0 served first (see broker_priority).
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            # Through Sentinel (several Redis hosts): the group's name and
            # the Sentinels' password; kombu asks them for the primary on
            # every (re)connection.
            **redisurl.transport_options(deployment["broker_url"]),
        }
        if redisurl.parse(deployment["broker_url"]).is_sentinel:
            # A publish during a failover waits for the promoted replica
            # (Sentinel needs down-after-milliseconds, 3 s, and about a
            # second more) instead of failing the submission.
            settings["task_publish_retry_policy"] = SENTINEL_PUBLISH_RETRY_POLICY
    return settings


def broker_url(deployment: dict[str, Any]) -> str:
    """The broker's URL(s) as Celery takes them: without the kit's query (TLS options, Sentinel group)."""
    if deployment["broker"] == "rabbitmq" and deployment["broker_url"].startswith("amqp"):
        return amqpurl.kombu_url(deployment["broker_url"])
    return redisurl.celery_url(deployment["broker_url"])


def broker_ssl(deployment: dict[str, Any]) -> dict[str, Any] | None:
    """broker_use_ssl: py-amqp's TLS options for RabbitMQ, redis-py's for the Redis broker; None without TLS."""
    if deployment["broker"] == "rabbitmq" and deployment["broker_url"].startswith("amqp"):
        return amqpurl.ssl_options(deployment["broker_url"]) or None
    return redisurl.ssl_options(deployment["broker_url"])


def default_settings(deployment: dict[str, Any]) -> dict[str, Any]:
    """The kit's defaults: the app's own value wins where it sets one."""
    time_limit = deployment["task_time_limit"]
    return {
        # Hard limit kills a stuck task; the soft limit lets it clean up.
        "task_time_limit": time_limit,
        "task_soft_time_limit": max(time_limit - 10, 1),
        # Report STARTED so a producer tells queued from running.
        "task_track_started": True,
        # Results are kept for a while, then Redis reclaims the memory.
        "result_expires": deployment["result_expires"],
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
    }


def longest_hold_seconds(deployment: dict[str, Any]) -> int:
    """Longest time a Redis-broker worker may hold a delivery: countdown plus run time."""
    return deployment["max_countdown"] + deployment["task_time_limit"] + 60


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def _differs_from_celery(conf: Any, key: str) -> bool:
    return conf.get(key) != CELERY_DEFAULTS.get(key)


def apply(app: Celery, deployment: dict[str, Any], environ: dict[str, str] | None = None) -> Outcome:
    """Apply the kit's settings to app (before its tasks are bound) and say what it refuses."""
    conf = app.conf
    outcome = Outcome()
    outcome.problems.extend(environment_problems(os.environ if environ is None else environ))
    changes: dict[str, Any] = {}
    for key, value in deployment_settings(deployment).items():
        if key == "broker_transport_options":
            own = dict(conf.get(key) or {})
            if deployment["broker"] == "rabbitmq" and own.get("confirm_publish") is False:
                outcome.problems.append(f"broker_transport_options confirm_publish=False: {CONFIRM_REASON}")
            changes[key] = {**own, **value}
            continue
        if _differs_from_celery(conf, key) and conf.get(key) != value:
            outcome.overridden.append(key)
        changes[key] = value
    for key, (required, reason) in GUARANTEES.items():
        if _differs_from_celery(conf, key) and conf.get(key) != required:
            outcome.problems.append(f"{key}={conf.get(key)!r}: {reason}")
        changes[key] = required
    for key, value in default_settings(deployment).items():
        if _differs_from_celery(conf, key):
            outcome.kept.append(key)
        else:
            changes[key] = value
    outcome.problems.extend(limit_problems({**dict(conf), **changes}, deployment))
    changes["task_routes"] = _routes_with_health(conf.get("task_routes"))
    changes["celery_kit"] = deployment
    conf.update(changes)
    _register_health_task(app)
    _register_bench_tasks(app)
    outcome.problems.extend(route_problems(conf.get("task_routes"), deployment))
    return outcome


def environment_problems(environ: Any) -> list[str]:
    return [
        f"environment variable {name} is set: Celery would use it over the deployment's"
        for name in ENVIRONMENT_OVERRIDES
        if environ.get(name)
    ]


def limit_problems(effective: dict[str, Any], deployment: dict[str, Any]) -> list[str]:
    """Time limits above the deployment's (its consumer and stop timeouts follow from it)."""
    limit = deployment["task_time_limit"]
    problems = []
    for key in ("task_time_limit", "task_soft_time_limit"):
        seconds = _seconds(effective.get(key))
        if seconds is not None and seconds > limit:
            problems.append(
                f"{key}={seconds:g} exceeds the deployment's task time limit ({limit} s, kit_task_time_limit):"
                " RabbitMQ's consumer timeout and the workers' stop timeout are derived from it"
            )
    return problems


def _routes_with_health(routes: Any) -> Any:
    """The app's routes with the kit's health task first (its own queue)."""
    health = {HEALTH_TASK: {"queue": deployment_module.HEALTH_QUEUE["name"]}}
    if routes is None:
        return health
    if isinstance(routes, (list, tuple)):
        return [health, *routes]
    return [health, routes]


def _register_health_task(app: Celery) -> None:
    @app.task(name=HEALTH_TASK, shared=False)
    def health() -> dict[str, str]:
        """The kit's health check: a worker took it from the health queue and Redis stored its result."""
        import socket  # noqa: PLC0415 (only workers run it)
        from datetime import UTC, datetime  # noqa: PLC0415

        return {"worker": socket.gethostname(), "at": datetime.now(UTC).isoformat()}


def _register_bench_tasks(app: Celery) -> None:
    from celery_kit.guard import AtMostOnceTask  # noqa: PLC0415 (guard imports Celery's task machinery)

    def bench(sleep: float, submitted: float) -> dict[str, float]:
        """make bench's task: sleep that long; when it started, for the submit-to-start latency."""
        import time  # noqa: PLC0415

        started = time.time()
        if sleep > 0:
            time.sleep(min(sleep, 1.0))
        return {"started": started, "submitted": submitted}

    app.task(name=BENCH_TASK, shared=False)(bench)
    app.task(name=BENCH_GUARDED_TASK, shared=False, base=AtMostOnceTask)(bench)


def _queue_name(target: Any) -> str | None:
    if isinstance(target, Queue):
        return target.name
    if isinstance(target, dict):
        return _queue_name(target.get("queue"))
    return target if isinstance(target, str) else None


def route_problems(routes: Any, deployment: dict[str, Any]) -> list[str]:
    """Routes (dicts only; a router function cannot be read) to queues the broker does not declare."""
    declared = set(deployment_module.queue_names(deployment))
    problems = []
    for routing in routes if isinstance(routes, (list, tuple)) else [routes]:
        if not isinstance(routing, dict):
            continue
        for pattern, target in routing.items():
            queue = _queue_name(target)
            if queue is not None and queue not in declared:
                problems.append(
                    f"task_routes sends {pattern!r} to queue {queue!r}, which this deployment does not declare"
                    f" (kit_queues: {', '.join(sorted(declared))})"
                )
    return problems


def task_problems(app: Celery, deployment: dict[str, Any]) -> list[str]:
    """Guarantees and limits a registered task overrides on itself (call after the app is finalized)."""
    declared = set(deployment_module.queue_names(deployment))
    limit = deployment["task_time_limit"]
    problems = []
    for name, task in sorted(app.tasks.items()):
        if name.startswith("celery."):
            continue
        for attribute, key in TASK_GUARANTEES.items():
            required, reason = GUARANTEES[key]
            value = getattr(task, attribute, None)
            if value is not None and value != required:
                problems.append(
                    f"task {name} sets {attribute}={value!r}: {reason}"
                    " (set on the task, or the task was bound before the kit configured the app)"
                )
        for attribute in ("time_limit", "soft_time_limit"):
            seconds = _seconds(getattr(task, attribute, None))
            if seconds is not None and seconds > limit:
                problems.append(f"task {name} sets {attribute}={seconds:g}, above the deployment's {limit} s")
        queue = _queue_name(getattr(task, "queue", None))
        if queue is not None and queue not in declared:
            problems.append(f"task {name} is sent to queue {queue!r}, which this deployment does not declare")
    return problems
