"""Celery messages as each broker holds them, and the translation between the two.

kombu's Redis transport keeps a message as a JSON envelope (body base64,
headers, properties with the delivery info) in a list per queue and
priority; RabbitMQ keeps an AMQP message with properties. The broker mover
(celery_kit.mover) translates one into the other without losing what Celery
reads: task name and id, arguments, countdown (ETA), priority, retries.
Pure functions; no broker is needed to test them.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kombu.transport.native_delayed_delivery import MAX_LEVEL, calculate_routing_key, level_name
from kombu.utils.json import dumps as kombu_dumps

from celery_kit.rabbit import AmqpMessage, BrokerError

DIRECTIONS = ("redis-to-rabbitmq", "rabbitmq-to-redis")
# Celery's delayed delivery on RabbitMQ: where a delayed message enters, the
# delay queues from the longest level down, and the delay prefix of a
# routing key (28 bits, "0." or "1." each).
DELAY_ENTRY_EXCHANGE = level_name(MAX_LEVEL)
DELAY_QUEUES = tuple(level_name(level) for level in range(MAX_LEVEL, -1, -1))
DELAY_PREFIX = re.compile(rf"^(?:[01]\.){{{MAX_LEVEL + 1}}}")
PRIORITY_MIN = 0
PRIORITY_MAX = 9
SEP = ":"

# AMQP basic properties carried over besides content type and encoding,
# headers, delivery mode and priority. user_id is left out: RabbitMQ refuses
# a user_id other than the publishing connection's user.
CARRIED_PROPERTIES = ("correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type", "app_id")


class MoveError(BrokerError):
    """Something the operator must fix; the message says what."""


class UnmovableMessage(MoveError):
    """A Redis element that is not a kombu envelope the mover can translate."""


@dataclass(frozen=True)
class QueueSpec:
    """An app queue, as in kit_queues."""

    name: str
    exchange: str = "tasks"


# --------------------------------------------------------------------------
# Translation (pure functions)


def clamp_priority(value: Any) -> int:
    """A priority as kombu reads one (_get_message_priority): 0..9, else 0."""
    try:
        return max(PRIORITY_MIN, min(int(value), PRIORITY_MAX))
    except (TypeError, ValueError):
        return PRIORITY_MIN


def other_broker_priority(priority: Any) -> int:
    """The priority on the other broker: the scales run opposite ways."""
    return PRIORITY_MAX - clamp_priority(priority)


def redis_list_key(queue: str, redis_priority: int) -> str:
    """The list kombu keeps a priority's messages in (Channel._q_for_pri)."""
    return f"{queue}{SEP}{redis_priority}" if redis_priority else queue


def redis_list_keys(queue: str) -> list[str]:
    """A queue's lists in the order kombu serves them: priority 0 first."""
    return [redis_list_key(queue, priority) for priority in range(PRIORITY_MIN, PRIORITY_MAX + 1)]


def envelope_body(envelope: dict[str, Any]) -> bytes:
    """The body bytes of a kombu envelope (Channel.decode_body)."""
    body = envelope.get("body")
    encoding = (envelope.get("properties") or {}).get("body_encoding")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise UnmovableMessage(f"body is a {type(body).__name__}, not text")
    if encoding == "base64":
        try:
            return base64.b64decode(body, validate=True)
        except ValueError as exc:
            raise UnmovableMessage(f"body is not base64: {exc}") from exc
    if encoding in (None, "utf-8"):
        return body.encode("utf-8")
    raise UnmovableMessage(f"unknown body_encoding {encoding!r}")


def seconds_until_eta(headers: dict[str, Any], now: datetime | None = None) -> float:
    """How long a task has to wait before it is due (0 when it has no ETA or is due)."""
    eta = headers.get("eta")
    if not eta:
        return 0.0
    try:
        due = datetime.fromisoformat(str(eta))
    except ValueError as exc:
        raise UnmovableMessage(f"eta {eta!r} is not an ISO 8601 time") from exc
    if due.tzinfo is None:
        due = due.replace(tzinfo=UTC)
    return max((due - (now or datetime.now(UTC))).total_seconds(), 0.0)


def delayed_destination(routing_key: str) -> str | None:
    """The queue routing key a delayed message goes to (its key without the delay bits), None if not delayed."""
    match = DELAY_PREFIX.match(routing_key)
    return routing_key[match.end() :] if match else None


def envelope_to_amqp(envelope: dict[str, Any], queue: str, now: datetime | None = None) -> AmqpMessage:
    """Translate a kombu Redis envelope into the RabbitMQ message to publish.

    Task id, headers (eta, retries, root and parent ids, ...), body, content
    type and encoding, correlation id and reply-to are kept; the message is
    persistent; its priority becomes 9 minus the Redis one. kombu's own
    bookkeeping (delivery_tag, delivery_info, body_encoding) stays behind,
    and so do properties AMQP has no field for, as a direct publish to
    RabbitMQ would drop them. A task whose ETA is still a second or more away
    goes into Celery's delay queues with the delay it has left (rounded up
    to whole seconds, as the broker counts), so no worker holds it.
    """
    if not isinstance(envelope, dict) or not isinstance(envelope.get("properties"), dict):
        raise UnmovableMessage("not a kombu envelope (no properties object)")
    props = envelope["properties"]
    headers = envelope.get("headers") or {}
    if not isinstance(headers, dict):
        raise UnmovableMessage("headers is not an object")
    properties: dict[str, Any] = {
        "content_type": envelope.get("content-type"),
        "content_encoding": envelope.get("content-encoding"),
        "application_headers": dict(headers),
        "delivery_mode": 2,
        "priority": other_broker_priority(props.get("priority")),
    }
    for name in CARRIED_PROPERTIES:
        if props.get(name) is not None:
            properties[name] = props[name]
    properties = {name: value for name, value in properties.items() if value is not None}
    delay = math.ceil(seconds_until_eta(headers, now))
    if delay >= 1:
        return AmqpMessage(
            body=envelope_body(envelope),
            properties=properties,
            exchange=DELAY_ENTRY_EXCHANGE,
            routing_key=calculate_routing_key(delay, queue),
        )
    return AmqpMessage(body=envelope_body(envelope), properties=properties, exchange="", routing_key=queue)


def amqp_to_envelope(body: bytes, properties: dict[str, Any], queue: str, delivery_tag: str) -> dict[str, Any]:
    """Translate a RabbitMQ message into the envelope kombu's Redis `_put` writes.

    The reverse of envelope_to_amqp: the Redis priority is 9 minus the
    RabbitMQ one (a message without one counts as 0, the lowest), the body is
    base64 text, and delivery_info names the default exchange and the queue,
    as Celery's own publish does.
    """
    redis_priority = other_broker_priority(properties.get("priority"))
    props: dict[str, Any] = {}
    for name in CARRIED_PROPERTIES:
        value = properties.get(name)
        if isinstance(value, datetime):
            value = int(value.replace(tzinfo=value.tzinfo or UTC).timestamp())
        if value is not None:
            props[name] = value
    props.update(
        delivery_mode=properties.get("delivery_mode") or 2,
        delivery_info={"exchange": "", "routing_key": queue},
        priority=redis_priority,
        body_encoding="base64",
        delivery_tag=delivery_tag,
    )
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": properties.get("content_encoding"),
        "content-type": properties.get("content_type"),
        "headers": dict(properties.get("application_headers") or {}),
        "properties": props,
    }


def message_key(body: bytes, headers: dict[str, Any]) -> str:
    """An id for the rollback journal: the task id plus a digest of the message.

    The digest tells a retry (same task id, other headers) from a redelivery
    of the very same message.
    """
    digest = hashlib.sha256(body + kombu_dumps(headers, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return f"{headers.get('id', '')}:{digest}"


def queue_for_route(exchange: str, routing_key: str, queues: tuple[QueueSpec, ...]) -> str | None:
    """The app queue a delivery went to: by name through the default exchange, or by the queue's own exchange."""
    for queue in queues:
        if routing_key == queue.name and exchange in ("", queue.exchange):
            return queue.name
    return None


def has_eta(envelope: Any) -> bool:
    """Whether a message waits for a countdown or ETA (Celery's eta header)."""
    return isinstance(envelope, dict) and bool((envelope.get("headers") or {}).get("eta"))


@dataclass(frozen=True)
class Settings:
    """The mover's configuration file."""

    redis_url: str
    amqp_url: str | None
    queues: tuple[QueueSpec, ...]
    dead_letter_queue: str
