"""The broker topology as Celery must see it: the queues the broker declares.

RabbitMQ refuses a redeclaration with other arguments (PRECONDITION_FAILED),
so the kit builds the app's kombu queues from the same list the rabbitmq
role declares (kit_queues in the inventory, written to the deployment file).

On RabbitMQ the queues are quorum queues bound to topic exchanges, so Celery
(5.5 and later) uses RabbitMQ's native delayed delivery: a countdown task
waits in the broker's delay queues, not in a worker's memory.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from celery_kit.deployment import DEFAULT_QUEUE_TYPE

# Celery's native delayed delivery routes a delayed message through topic
# exchanges (its routing key carries the delay's bits before the queue's
# key); it does not work with direct exchanges. The rabbitmq role declares
# the same type.
EXCHANGE_TYPE = "topic"
DEFAULT_EXCHANGE = "tasks"

# Priorities as producers give them on RabbitMQ: 0 (lowest) to 9.
PRIORITY_MIN = 0
PRIORITY_MAX = 9
# RabbitMQ 4.0 quorum queues know two priorities: a message whose priority
# is above 4 is urgent and delivered before the others (two urgent ones for
# every normal one while both wait), 0-4 and none are normal.
QUORUM_URGENT_FROM = 5


def broker_priority(priority: int, broker: str) -> int:
    """Translate a priority (9 most urgent) into the broker's scale.

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
    if queue.get("type", DEFAULT_QUEUE_TYPE) == "quorum":
        arguments["x-queue-type"] = "quorum"
    if queue.get("max_priority") is not None:
        arguments["x-max-priority"] = queue["max_priority"]
    return arguments


def build_queues(queues: list[dict[str, Any]], declare: bool = True) -> list[Queue]:
    """kombu queues bound to their durable topic exchange by queue name.

    declare=False: kombu never declares them (nor their exchanges, nor the
    bindings), so a producer whose broker user may only publish never asks
    for more.
    """
    built = []
    for queue in queues:
        exchange = Exchange(
            queue.get("exchange", DEFAULT_EXCHANGE), type=EXCHANGE_TYPE, durable=True, no_declare=not declare
        )
        built.append(
            Queue(
                queue["name"],
                exchange,
                routing_key=queue.get("routing_key", queue["name"]),
                durable=True,
                queue_arguments=queue_arguments(queue) or None,
                no_declare=not declare,
            )
        )
    return built
