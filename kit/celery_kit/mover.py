"""Move queued Celery messages between kombu's Redis transport and RabbitMQ.

`make migrate` moves a running deployment's broker from Redis (db 0) to
RabbitMQ, `make rollback-broker` moves it back. The messages already queued
must follow without being lost or run twice in effect; this module moves
them, one broker's wire format into the other's:

    celery-kit move plan --config PATH --direction redis-to-rabbitmq
    celery-kit move move --config PATH --direction redis-to-rabbitmq
    celery-kit move verify --config PATH --direction redis-to-rabbitmq
    celery-kit move cleanup-redis --config PATH

Every command prints JSON, one object per line (progress lines while moving,
then a summary with "event": "summary"), and exits 0 when done, 1 when
`verify` or `cleanup-redis` found messages left, 2 on an error (the line
then has "event": "error" and the message is also written to stderr), 70
when `--fail-after-publish` (tests only) made it stop like a killed process.

Safety, in short (the classes below say how):
- Redis to RabbitMQ: a message leaves Redis only after RabbitMQ confirmed
  it; a journal in db 0 lets a run after a crash finish the move, at worst
  publishing a few messages twice (reported as possible_duplicates; the app
  skips a task id that already finished). Refused while a Redis worker is
  connected or kombu's unacked_mutex is held.
- RabbitMQ to Redis: a message is acknowledged only after it was written to
  Redis; a journal set tells a redelivered message that is already there.
  Refused while a consumer is attached to an app queue.
- One mover at a time (a lock key in Redis that expires 60 s after its
  holder died).

The configuration file (so that no password is on a command line):

    {"redis_url": "redis://:pw@host:6379/0",
     "amqp_url": "amqp://user:pw@host:5672/%2Fcelery",
     "queues": [{"name": "default", "exchange": "tasks"}, ...],
     "dead_letter_queue": "dead-letter"}

How kombu's Redis transport stores a message (kombu/transport/redis.py and
virtual/base.py), which the translations below follow:

- A queue is a list per priority: `<queue>` for priority 0 and
  `<queue>:<n>` for n in 1..9 (`_q_for_pri` with priority_steps 0..9 and
  sep ":"). `_put` LPUSHes, `_get`/BRPOP pop from the right, serving
  sub-queue 0 first: the right end of a list is its oldest message.
- Each element is the JSON "envelope" {"body": base64 text, "content-type",
  "content-encoding", "headers", "properties": {"correlation_id",
  "reply_to", "delivery_mode", "priority", "body_encoding": "base64",
  "delivery_tag": a uuid, "delivery_info": {"exchange", "routing_key"}, ...}}.
- A message a worker holds (reserved, running, or waiting for its ETA) sits
  in the hash `unacked` (delivery tag -> JSON [envelope, exchange,
  routing_key]) and the sorted set `unacked_index` (tag -> delivery time).

Celery publishes a task through the default exchange with the queue's name
as routing key (that is what both brokers hold: "exchange": "",
"routing_key": "default"), so the mover does the same in both directions:
deterministic, and independent of bindings. A countdown/ETA task is the
exception on RabbitMQ: with quorum queues Celery delays it in the broker
(kombu.transport.native_delayed_delivery), publishing it to the exchange
celery_delayed_27 with a routing key made of its delay's 28 bits and the
queue's key; it waits in the queues celery_delayed_27..0 until due, then
reaches its queue. The mover publishes a Redis ETA message that is still
due the same way, with the delay it has left, and on the way back takes the
waiting ones out of the delay queues (their destination is the routing
key's end).

Priorities: the API's 0..9 (9 most urgent) are stored as 9 - p on Redis and
as p on RabbitMQ (celery_kit.topology.broker_priority). A moved message's priority is
9 minus its priority on the other broker, clamped to 0..9 as kombu clamps it.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import math
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import amqp
import redis
from kombu.transport.native_delayed_delivery import MAX_LEVEL, calculate_routing_key, level_name
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from celery_kit.rabbit import AmqpMessage, BrokerError, Rabbit

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

# kombu's own keys in the broker database: Channel.unacked_key and friends,
# the binding tables (keyprefix_queue and kombu 5.7's binding_deadlines and
# binding_permanent), and reply queues of Celery's remote control.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
UNACKED_MUTEX_KEY = "unacked_mutex"
KOMBU_KEY_PATTERNS = ("_kombu.*", UNACKED_KEY, UNACKED_INDEX_KEY, UNACKED_MUTEX_KEY, "*.reply.celery.pidbox")

# The mover's journal, in the broker database too (db 0).
JOURNAL_PREFIX = "celery-kit:migration:"
INFLIGHT_KEY = JOURNAL_PREFIX + "inflight:{queue}"
UNMOVABLE_KEY = JOURNAL_PREFIX + "unmovable"
MOVED_KEY = JOURNAL_PREFIX + "moved"
LOCK_KEY = JOURNAL_PREFIX + "lock"
LOCK_SECONDS = 60
MOVED_KEEP_SECONDS = 7 * 86400

DEFAULT_BATCH = 500
PROGRESS_EVERY_MESSAGES = 5000
PROGRESS_EVERY_SECONDS = 5.0
CRASH_EXIT_CODE = 70
CLIENT_NAME = "celery-kit-move"

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


@dataclass(frozen=True)
class Settings:
    """The mover's configuration file."""

    redis_url: str
    amqp_url: str | None
    queues: tuple[QueueSpec, ...]
    dead_letter_queue: str


# --------------------------------------------------------------------------
# Configuration


def load_settings(path: str) -> Settings:
    """Read the JSON configuration, naming the key that is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError) as exc:
        raise MoveError(f"cannot read configuration {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise MoveError(f"configuration {path} must hold a JSON object")
    required = {"redis_url", "amqp_url", "queues", "dead_letter_queue"}
    missing, unknown = sorted(required - set(raw)), sorted(set(raw) - required)
    if missing or unknown:
        raise MoveError(f"configuration {path}: missing keys {missing}, unknown keys {unknown}")
    for key in ("redis_url", "amqp_url", "dead_letter_queue"):
        # amqp_url may be null for a plan only: RabbitMQ is not deployed yet.
        if key == "amqp_url" and raw[key] is None:
            continue
        if not isinstance(raw[key], str) or not raw[key]:
            raise MoveError(f"configuration {path}: {key} must be a non-empty string")
    if not isinstance(raw["queues"], list) or not raw["queues"]:
        raise MoveError(f"configuration {path}: queues must be a non-empty list")
    queues = []
    for entry in raw["queues"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise MoveError(f"configuration {path}: every queue needs a name, got {entry!r}")
        queues.append(QueueSpec(name=entry["name"], exchange=entry.get("exchange", "tasks")))
    if raw["dead_letter_queue"] in {queue.name for queue in queues}:
        raise MoveError(f"configuration {path}: the dead-letter queue is not an app queue")
    return Settings(raw["redis_url"], raw["amqp_url"], tuple(queues), raw["dead_letter_queue"])


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


# --------------------------------------------------------------------------
# Output


class Reporter:
    """Prints the JSON lines: progress now and then, a summary at the end."""

    def __init__(self, command: str, direction: str | None, found: int = 0) -> None:
        self.command = command
        self.direction = direction
        self.found = found
        self.started = time.monotonic()
        self._last_count = 0
        self._last_time = self.started

    def emit(self, event: str, **fields: Any) -> None:
        line = {"event": event, "command": self.command}
        if self.direction:
            line["direction"] = self.direction
        line.update(fields)
        print(json.dumps(line), flush=True)

    def timing(self, moved: int) -> dict[str, float]:
        elapsed = time.monotonic() - self.started
        return {"elapsed": round(elapsed, 3), "rate": round(moved / elapsed, 1) if elapsed > 0 else 0.0}

    def progress(self, moved: int) -> None:
        """A progress line every 5,000 messages or 5 seconds."""
        now = time.monotonic()
        if moved - self._last_count >= PROGRESS_EVERY_MESSAGES or now - self._last_time >= PROGRESS_EVERY_SECONDS:
            self._last_count, self._last_time = moved, now
            self.emit("progress", found=self.found, moved=moved, **self.timing(moved))


# --------------------------------------------------------------------------
# Connections


def connect_redis(url: str) -> redis.Redis:
    """A Redis client named so the consumer check can tell it from workers."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=60, client_name=CLIENT_NAME)
        client.ping()
    except redis.RedisError as exc:
        raise MoveError(f"cannot reach Redis: {exc}") from exc
    return client


# --------------------------------------------------------------------------
# Redis side: counts, guards, lock


def decode(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def scan_keys(client: redis.Redis, pattern: str = "*") -> list[str]:
    return sorted(decode(key) for key in client.scan_iter(match=pattern, count=1000))


def iter_list(client: redis.Redis, key: str, chunk: int = 1000) -> Iterator[bytes]:
    """The elements of a list, in chunks, without holding it all in memory."""
    start = 0
    while True:
        items = client.lrange(key, start, start + chunk - 1)
        yield from items
        if len(items) < chunk:
            return
        start += chunk


def parse_envelope(raw: bytes | str) -> Any:
    try:
        return kombu_loads(decode(raw))
    except ValueError:
        return None


def unacked_entries(client: redis.Redis) -> Iterator[tuple[str, bytes]]:
    """(delivery tag, raw entry) of kombu's unacked hash."""
    for tag, raw in client.hscan_iter(UNACKED_KEY, count=1000):
        yield decode(tag), raw


def unacked_route(raw: bytes | str) -> tuple[Any, str, str] | None:
    """(envelope, exchange, routing key) of an unacked entry, None if unreadable."""
    entry = parse_envelope(raw)
    if isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], str) and isinstance(entry[2], str):
        return entry[0], entry[1], entry[2]
    return None


def redis_counts(client: redis.Redis, queues: tuple[QueueSpec, ...], count_eta: bool = True) -> dict[str, Any]:
    """What Redis holds for the app: per queue ready (per priority list), unacked, ETA; journal; other keys."""
    per_queue: dict[str, dict[str, Any]] = {}
    for queue in queues:
        by_priority = {}
        eta = 0
        for priority, key in enumerate(redis_list_keys(queue.name)):
            length = client.llen(key)
            if length:
                by_priority[str(priority)] = length
                if count_eta:
                    eta += sum(1 for raw in iter_list(client, key) if has_eta(parse_envelope(raw)))
        per_queue[queue.name] = {
            "ready": sum(by_priority.values()),
            "ready_by_priority": by_priority,
            "unacked": 0,
            "eta": eta,
            "inflight": client.llen(INFLIGHT_KEY.format(queue=queue.name)),
        }
    unacked_other = 0
    for _, raw in unacked_entries(client):
        route = unacked_route(raw)
        name = queue_for_route(route[1], route[2], queues) if route else None
        if name is None:
            unacked_other += 1
            continue
        per_queue[name]["unacked"] += 1
        if count_eta and has_eta(route[0] if route else None):
            per_queue[name]["eta"] += 1
    app_keys = {key for queue in queues for key in redis_list_keys(queue.name)}
    keys = [key for key in scan_keys(client) if key not in app_keys]
    return {
        "queues": per_queue,
        "ready": sum(counts["ready"] for counts in per_queue.values()),
        "unacked": sum(counts["unacked"] for counts in per_queue.values()),
        "unacked_other": unacked_other,
        "inflight": sum(counts["inflight"] for counts in per_queue.values()),
        "unmovable": client.llen(UNMOVABLE_KEY),
        "moved_journal": client.scard(MOVED_KEY),
        "lock": decode(client.get(LOCK_KEY) or b"") or None,
        "kombu_keys": [key for key in keys if is_kombu_key(key)],
        "other_keys": [key for key in keys if not is_kombu_key(key) and not key.startswith(JOURNAL_PREFIX)],
    }


def is_kombu_key(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in KOMBU_KEY_PATTERNS)


def redis_left(counts: dict[str, Any]) -> int:
    """App messages still in Redis, wherever they are (lists, unacked, journal)."""
    return counts["ready"] + counts["unacked"] + counts["unacked_other"] + counts["inflight"] + counts["unmovable"]


def redis_consumers(client: redis.Redis) -> list[str]:
    """Connections to the broker database that look like a consuming worker.

    A kombu Redis worker waits in BRPOP on its queues and subscribes to
    Celery's broadcast channels; a producer (the API) does neither.
    """
    db = str(client.connection_pool.connection_kwargs.get("db", 0))
    blocking = {"brpop", "blpop", "blmove", "brpoplpush", "bzpopmin", "bzpopmax", "blmpop", "bzmpop"}
    per_host: dict[str, list[int]] = {}
    for entry in client.client_list():
        if entry.get("name") == CLIENT_NAME or str(entry.get("db")) != db:
            continue
        host = str(entry.get("addr", "?")).rsplit(":", 1)[0]
        waiting = int(entry.get("cmd") in blocking)
        subscribed = int(int(entry.get("sub", 0) or 0) + int(entry.get("psub", 0) or 0) > 0)
        if waiting or subscribed:
            counts = per_host.setdefault(host, [0, 0])
            counts[0] += waiting
            counts[1] += subscribed
    return [f"{host} ({waiting} in BRPOP, {subscribed} subscribed)" for host, (waiting, subscribed) in per_host.items()]


def redis_blockers(client: redis.Redis) -> list[str]:
    """Why a Redis-to-RabbitMQ move must not start now (empty: it may)."""
    blockers = []
    consumers = redis_consumers(client)
    if consumers:
        blockers.append("Redis workers still consume: " + ", ".join(consumers))
    if client.exists(UNACKED_MUTEX_KEY):
        blockers.append(f"{UNACKED_MUTEX_KEY} is held: a worker is restoring unacked messages")
    return blockers


class Lock:
    """One mover at a time: a Redis key with a token and a short expiry.

    A crashed mover's lock expires after LOCK_SECONDS; the running one
    renews it every batch.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4()}"

    def acquire(self) -> None:
        if not self.client.set(LOCK_KEY, self.token, nx=True, ex=LOCK_SECONDS):
            holder = decode(self.client.get(LOCK_KEY) or b"?")
            ttl = self.client.ttl(LOCK_KEY)
            raise MoveError(f"another mover holds {LOCK_KEY} ({holder}); if it is gone, the lock expires in {ttl} s")

    def renew(self) -> None:
        if decode(self.client.get(LOCK_KEY) or b"") != self.token:
            raise MoveError(f"lost {LOCK_KEY} to another mover")
        self.client.expire(LOCK_KEY, LOCK_SECONDS)

    def release(self) -> None:
        if decode(self.client.get(LOCK_KEY) or b"") == self.token:
            self.client.delete(LOCK_KEY)


def rabbit_counts(rabbit: Rabbit, settings: Settings) -> dict[str, Any]:
    """Ready messages and consumers of the app queues, the delay queues and the dead-letter queue."""
    queues = {}
    for queue in settings.queues:
        ready, consumers = rabbit.queue_state(queue.name)
        queues[queue.name] = {"ready": ready, "consumers": consumers}
    delayed = sum(rabbit.queue_state(name)[0] for name in DELAY_QUEUES)
    ready, consumers = rabbit.queue_state(settings.dead_letter_queue)
    return {
        "queues": queues,
        "delayed": delayed,
        "ready": sum(counts["ready"] for counts in queues.values()) + delayed,
        "consumers": sum(counts["consumers"] for counts in queues.values()),
        "dead_letter": {"name": settings.dead_letter_queue, "ready": ready, "consumers": consumers},
    }


def rabbit_blockers(counts: dict[str, Any]) -> list[str]:
    """Why a RabbitMQ-to-Redis move must not start now: a consumer holds messages we cannot get."""
    busy = [f"{name} ({state['consumers']})" for name, state in counts["queues"].items() if state["consumers"]]
    return ["RabbitMQ workers still consume: " + ", ".join(busy)] if busy else []


# --------------------------------------------------------------------------
# Moves


@dataclass
class MoveOptions:
    batch: int = DEFAULT_BATCH
    limit: int | None = None
    fail_after_publish: int | None = None

    def room(self, moved: int) -> int:
        """How many messages the next batch may take (--batch, --limit, --fail-after-publish)."""
        bounds = [self.batch]
        for bound in (self.limit, self.fail_after_publish):
            if bound is not None:
                bounds.append(bound - moved)
        return max(min(bounds), 0)

    def crash_due(self, moved: int) -> bool:
        """--fail-after-publish (tests only): whether to crash now, before the journal update."""
        return self.fail_after_publish is not None and moved >= self.fail_after_publish


@dataclass
class Tally:
    """What a move did, per queue and in all."""

    moved: int = 0
    possible_duplicates: int = 0
    delayed: int = 0
    skipped_duplicates: int = 0
    unmovable: int = 0
    per_queue: dict[str, int] = field(default_factory=dict)

    def add(self, queue: str, count: int) -> None:
        self.moved += count
        self.per_queue[queue] = self.per_queue.get(queue, 0) + count


def crash_for_test(reporter: Reporter, done: int) -> None:
    """--fail-after-publish: die like a killed process, journal and lock left as they are."""
    reporter.emit("crash", message=f"test crash after {done} message(s) published, before the journal update")
    sys.stdout.flush()
    os._exit(CRASH_EXIT_CODE)


class Move:
    """What both directions share: the brokers, the options, the tally, the
    progress reporter and the one-mover-at-a-time lock."""

    direction = ""

    def __init__(self, client: redis.Redis, rabbit: Rabbit, settings: Settings, options: MoveOptions) -> None:
        self.client = client
        self.rabbit = rabbit
        self.settings = settings
        self.options = options
        self.tally = Tally()
        self.reporter = Reporter("move", self.direction)
        self.lock = Lock(client)

    def room(self) -> int:
        return self.options.room(self.tally.moved)


class RedisToRabbit(Move):
    """Moves the app's messages from Redis db 0 to RabbitMQ.

    The journal makes an interrupted move lose nothing. A message first goes
    atomically from its place in Redis into the in-flight list of its queue
    (LMOVE from a queue list, or HDEL + ZREM + LPUSH in one MULTI for an
    unacked entry). Once RabbitMQ confirmed it, it is removed from the
    in-flight list. A run that finds messages in flight (the previous one
    stopped between taking and confirming them) publishes them again first
    and counts them as possible duplicates: they may have reached RabbitMQ
    already, and the app skips a task id that already finished.
    """

    direction = DIRECTIONS[0]

    def run(self) -> dict[str, Any]:
        blockers = redis_blockers(self.client)
        if blockers:
            raise MoveError("; ".join(blockers))
        for queue in self.settings.queues:
            self.rabbit.queue_state(queue.name)
        if not self.rabbit.exchange_exists(DELAY_ENTRY_EXCHANGE):
            raise MoveError(
                f"RabbitMQ has no exchange {DELAY_ENTRY_EXCHANGE}: Celery's delayed-delivery topology is missing"
                " (the rabbitmq role declares it)"
            )
        self.lock.acquire()
        try:
            before = redis_counts(self.client, self.settings.queues, count_eta=False)
            self.reporter.found = before["ready"] + before["unacked"] + before["inflight"]
            self.reporter.emit("start", found=self.reporter.found, inflight=before["inflight"])
            for queue in self.settings.queues:
                self.publish_inflight(queue.name, recovered=True)
            self.take_unacked()
            for queue in self.settings.queues:
                for key in redis_list_keys(queue.name):
                    self.take_list(queue.name, key)
        finally:
            self.lock.release()
        after = redis_counts(self.client, self.settings.queues, count_eta=False)
        return {
            "found": self.reporter.found,
            "moved": self.tally.moved,
            "possible_duplicates": self.tally.possible_duplicates,
            "delayed": self.tally.delayed,
            "unmovable": self.tally.unmovable,
            "remaining": redis_left(after),
            "per_queue": self.tally.per_queue,
            **self.reporter.timing(self.tally.moved),
        }

    def take_list(self, queue: str, key: str) -> None:
        """Move a queue list, oldest (rightmost) first, a batch at a time."""
        inflight = INFLIGHT_KEY.format(queue=queue)
        while (room := self.room()) > 0:
            pipe = self.client.pipeline(transaction=False)
            for _ in range(room):
                pipe.lmove(key, inflight, "RIGHT", "LEFT")
            if not any(item is not None for item in pipe.execute()):
                return
            self.publish_inflight(queue)

    def take_unacked(self) -> None:
        """Move the entries of kombu's unacked hash that belong to app queues, in delivery order."""
        tags = [decode(tag) for tag in self.client.zrange(UNACKED_INDEX_KEY, 0, -1)]
        indexed = set(tags)
        tags += sorted(decode(tag) for tag in self.client.hkeys(UNACKED_KEY) if decode(tag) not in indexed)
        while tags and (room := self.room()) > 0:
            chunk, tags = tags[:room], tags[room:]
            touched = {queue for tag in chunk if (queue := self.take_unacked_entry(tag))}
            for queue in sorted(touched):
                self.publish_inflight(queue)

    def take_unacked_entry(self, tag: str) -> str | None:
        """Atomically move one unacked entry into its queue's in-flight list; returns the queue."""

        def move(pipe: redis.client.Pipeline) -> str | None:
            raw = pipe.hget(UNACKED_KEY, tag)
            route = unacked_route(raw) if raw is not None else None
            queue = queue_for_route(route[1], route[2], self.settings.queues) if route else None
            pipe.multi()
            if raw is None:
                pipe.zrem(UNACKED_INDEX_KEY, tag)
            elif queue is not None and route is not None:
                pipe.hdel(UNACKED_KEY, tag)
                pipe.zrem(UNACKED_INDEX_KEY, tag)
                pipe.lpush(INFLIGHT_KEY.format(queue=queue), kombu_dumps(route[0]))
            return queue

        return self.client.transaction(move, UNACKED_KEY, value_from_callable=True)

    def publish_inflight(self, queue: str, recovered: bool = False) -> None:
        """Publish a queue's in-flight messages with confirms, then drop them from the journal."""
        inflight = INFLIGHT_KEY.format(queue=queue)
        raws = list(reversed(self.client.lrange(inflight, 0, -1)))  # oldest first
        if not raws:
            return
        translated, unmovable = [], []
        for raw in raws:
            try:
                translated.append((raw, envelope_to_amqp(parse_envelope(raw), queue)))
            except UnmovableMessage:
                unmovable.append(raw)
        if unmovable:
            self.park_unmovable(inflight, unmovable)
        self.rabbit.publish([message for _, message in translated])
        if self.options.crash_due(self.tally.moved + len(translated)):
            crash_for_test(self.reporter, self.tally.moved + len(translated))
        pipe = self.client.pipeline(transaction=True)
        for raw, _ in translated:
            pipe.lrem(inflight, -1, raw)
        pipe.execute()
        self.tally.add(queue, len(translated))
        self.tally.delayed += sum(1 for _, message in translated if message.exchange == DELAY_ENTRY_EXCHANGE)
        if recovered:
            self.tally.possible_duplicates += len(translated)
        self.lock.renew()
        self.reporter.progress(self.tally.moved)

    def park_unmovable(self, inflight: str, raws: list[bytes]) -> None:
        """Keep what is not a kombu message aside in Redis, for a person to look at."""
        pipe = self.client.pipeline(transaction=True)
        for raw in raws:
            pipe.lrem(inflight, -1, raw)
            pipe.rpush(UNMOVABLE_KEY, raw)
        pipe.execute()
        self.tally.unmovable += len(raws)


class RabbitToRedis(Move):
    """Moves the app's messages from RabbitMQ back to Redis db 0 (rollback).

    Each message is got unacknowledged, written into the list kombu would
    have put it in, and acknowledged only after that write. The write and the
    message's key in the journal set are one MULTI, so when a crash between
    write and ack makes RabbitMQ deliver the message again (redelivered), the
    journal tells that it is already in Redis and it is only acknowledged.
    The delay queues are emptied first, from the longest delay down (a
    message whose delay runs out meanwhile moves to a shorter level or to its
    queue, both emptied later), then the app queues. A delayed message keeps
    its ETA header: a Redis worker holds it until it is due. The dead-letter
    queue is left where it is.
    """

    direction = DIRECTIONS[1]

    def __init__(self, client: redis.Redis, rabbit: Rabbit, settings: Settings, options: MoveOptions) -> None:
        super().__init__(client, rabbit, settings, options)
        self.limited = False
        self.unroutable = 0

    def run(self) -> dict[str, Any]:
        before = rabbit_counts(self.rabbit, self.settings)
        blockers = rabbit_blockers(before)
        if blockers:
            raise MoveError("; ".join(blockers))
        self.lock.acquire()
        try:
            self.reporter.found = before["ready"]
            self.reporter.emit("start", found=before["ready"], delayed=before["delayed"])
            for name in (*DELAY_QUEUES, *(queue.name for queue in self.settings.queues)):
                self.take_queue(name)
            if not self.limited:
                self.client.delete(MOVED_KEY)
        finally:
            self.lock.release()
        after = rabbit_counts(self.rabbit, self.settings)
        return {
            "found": self.reporter.found,
            "moved": self.tally.moved,
            "possible_duplicates": self.tally.possible_duplicates,
            "skipped_duplicates": self.tally.skipped_duplicates,
            "delayed": self.tally.delayed,
            "unroutable": self.unroutable,
            "remaining": after["ready"],
            "dead_letter": after["dead_letter"]["ready"],
            "per_queue": self.tally.per_queue,
            **self.reporter.timing(self.tally.moved),
        }

    def destination(self, source: str, message: amqp.Message) -> str | None:
        """The app queue a message belongs in: its own queue, or for a delayed one the end of its routing key."""
        if source not in DELAY_QUEUES:
            return source
        key = delayed_destination(message.delivery_info.get("routing_key", ""))
        return queue_for_route("", key, self.settings.queues) if key is not None else None

    def take_queue(self, source: str) -> None:
        while True:
            room = self.room()
            if room <= 0:
                self.limited = True
                return
            batch = []
            while len(batch) < room and (message := self.rabbit.get(source)) is not None:
                batch.append(message)
            if not batch:
                return
            self.write_batch(source, batch)

    def write_batch(self, source: str, batch: list[amqp.Message]) -> None:
        """Write a batch into kombu's lists, with its journal keys, in one MULTI; then acknowledge it.

        A delayed message for no app queue (the broker would drop it when
        due) stays where it is, counted as unroutable.
        """
        keys = [
            message_key(body_bytes(message), message.properties.get("application_headers") or {}) for message in batch
        ]
        already = self.already_moved(batch, keys)
        destinations = [self.destination(source, message) for message in batch]
        pipe = self.client.pipeline(transaction=True)
        written: dict[str, int] = {}
        for i, message in enumerate(batch):
            queue = destinations[i]
            if i in already or queue is None:
                continue
            envelope = amqp_to_envelope(body_bytes(message), message.properties, queue, str(uuid.uuid4()))
            pipe.lpush(redis_list_key(queue, envelope["properties"]["priority"]), kombu_dumps(envelope))
            pipe.sadd(MOVED_KEY, keys[i])
            written[queue] = written.get(queue, 0) + 1
        pipe.expire(MOVED_KEY, MOVED_KEEP_SECONDS)
        pipe.execute()
        if self.options.crash_due(self.tally.moved + sum(written.values())):
            crash_for_test(self.reporter, self.tally.moved + sum(written.values()))
        if None not in destinations:
            self.rabbit.ack_through(batch[-1].delivery_tag)
        else:
            # The unroutable ones stay unacknowledged: RabbitMQ takes them
            # back when the mover disconnects, and verify reports them.
            for message, queue in zip(batch, destinations, strict=True):
                if queue is None:
                    self.unroutable += 1
                else:
                    self.rabbit.ack(message.delivery_tag)
        for queue, count in written.items():
            self.tally.add(queue, count)
        if source in DELAY_QUEUES:
            self.tally.delayed += sum(written.values())
        self.tally.skipped_duplicates += len(already)
        self.lock.renew()
        self.reporter.progress(self.tally.moved)

    def already_moved(self, batch: list[amqp.Message], keys: list[str]) -> set[int]:
        """Which messages of a batch are in Redis already: redelivered after a crash between write and ack."""
        redelivered = [i for i, message in enumerate(batch) if message.delivery_info.get("redelivered")]
        if not redelivered:
            return set()
        seen = self.client.smismember(MOVED_KEY, [keys[i] for i in redelivered])
        return {i for i, flag in zip(redelivered, seen, strict=True) if flag}


def body_bytes(message: amqp.Message) -> bytes:
    body = message.body
    return body if isinstance(body, bytes) else str(body).encode(message.properties.get("content_encoding") or "utf-8")


# --------------------------------------------------------------------------
# Commands


def command_plan(settings: Settings, direction: str) -> tuple[dict[str, Any], int]:
    """Counts on both brokers and what would stop a move; changes nothing."""
    client = connect_redis(settings.redis_url)
    if settings.amqp_url is None:
        # Before the first migration RabbitMQ may not exist: Redis alone.
        redis_side = redis_counts(client, settings.queues)
        to_move = redis_side["ready"] + redis_side["unacked"] + redis_side["inflight"]
        blockers = redis_blockers(client) if direction == DIRECTIONS[0] else ["RabbitMQ is not deployed"]
        return {"to_move": to_move, "blockers": blockers, "redis": redis_side, "rabbitmq": None}, 0
    rabbit = Rabbit(settings.amqp_url)
    try:
        redis_side = redis_counts(client, settings.queues)
        rabbit_side = rabbit_counts(rabbit, settings)
        if direction == DIRECTIONS[0]:
            to_move = redis_side["ready"] + redis_side["unacked"] + redis_side["inflight"]
            blockers = redis_blockers(client)
        else:
            to_move = rabbit_side["ready"]
            blockers = rabbit_blockers(rabbit_side)
        if redis_side["lock"]:
            blockers.append(f"a mover holds {LOCK_KEY}: {redis_side['lock']}")
    finally:
        rabbit.close()
    return {"to_move": to_move, "blockers": blockers, "redis": redis_side, "rabbitmq": rabbit_side}, 0


def command_move(settings: Settings, direction: str, options: MoveOptions) -> tuple[dict[str, Any], int]:
    if settings.amqp_url is None:
        raise MoveError("amqp_url is null: a move needs RabbitMQ")
    client = connect_redis(settings.redis_url)
    rabbit = Rabbit(settings.amqp_url)
    mover_class = RedisToRabbit if direction == DIRECTIONS[0] else RabbitToRedis
    try:
        summary = mover_class(client, rabbit, settings, options).run()
    finally:
        rabbit.close()
    return summary, 0


def command_verify(settings: Settings, direction: str) -> tuple[dict[str, Any], int]:
    """After a move: the source holds no app message. Exit 1 otherwise."""
    client = connect_redis(settings.redis_url)
    rabbit = Rabbit(settings.amqp_url)
    try:
        redis_side = redis_counts(client, settings.queues, count_eta=False)
        rabbit_side = rabbit_counts(rabbit, settings)
    finally:
        rabbit.close()
    problems = []
    if direction == DIRECTIONS[0]:
        if redis_left(redis_side):
            problems.append(f"{redis_left(redis_side)} message(s) left in Redis (lists, unacked or the journal)")
    else:
        if rabbit_side["ready"]:
            problems.append(f"{rabbit_side['ready']} message(s) left in the RabbitMQ app queues")
        problems += rabbit_blockers(rabbit_side)
    summary = {"ok": not problems, "problems": problems, "redis": redis_side, "rabbitmq": rabbit_side}
    return summary, 0 if not problems else 1


def command_cleanup_redis(settings: Settings) -> tuple[dict[str, Any], int]:
    """Delete kombu's broker keys and the journal from db 0, once no app message is left there.

    Refused while a Redis worker is connected: its unacknowledged messages
    live in the keys this deletes.
    """
    client = connect_redis(settings.redis_url)
    counts = redis_counts(client, settings.queues, count_eta=False)
    problems = redis_blockers(client)
    if redis_left(counts):
        problems.append(f"{redis_left(counts)} message(s) still in Redis; move them first")
    if problems:
        return {"deleted": [], "problems": problems}, 1
    lock = Lock(client)
    lock.acquire()
    doomed = sorted({key for pattern in KOMBU_KEY_PATTERNS for key in scan_keys(client, pattern)})
    doomed += [key for key in scan_keys(client, JOURNAL_PREFIX + "*") if key != LOCK_KEY]
    if doomed:
        client.delete(*doomed)
    lock.release()
    return {"deleted": doomed, "kept": scan_keys(client)}, 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celery-kit move", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="JSON file with redis_url, amqp_url, queues, dead_letter_queue")
    with_direction = argparse.ArgumentParser(add_help=False, parents=[common])
    with_direction.add_argument("--direction", required=True, choices=DIRECTIONS)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("plan", parents=[with_direction], help="count what would move; changes nothing")
    move = commands.add_parser("move", parents=[with_direction], help="move the app's messages")
    move.add_argument("--batch", type=positive, default=DEFAULT_BATCH, help="messages per confirm/journal batch")
    move.add_argument("--limit", type=positive, help="stop after this many messages (the rest stays)")
    move.add_argument(
        "--fail-after-publish",
        type=positive,
        metavar="N",
        help="TEST ONLY: exit 70 after the Nth message reached the destination, before the journal update",
    )
    commands.add_parser("verify", parents=[with_direction], help="exit 1 unless the source holds no app message")
    commands.add_parser("cleanup-redis", parents=[common], help="delete kombu's keys and the journal from Redis db 0")
    return parser


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    direction = getattr(args, "direction", None)
    reporter = Reporter(args.command, direction)
    try:
        settings = load_settings(args.config)
        commands: dict[str, Callable[[], tuple[dict[str, Any], int]]] = {
            "plan": lambda: command_plan(settings, direction),
            "move": lambda: command_move(
                settings, direction, MoveOptions(args.batch, args.limit, args.fail_after_publish)
            ),
            "verify": lambda: command_verify(settings, direction),
            "cleanup-redis": lambda: command_cleanup_redis(settings),
        }
        summary, code = commands[args.command]()
    except (BrokerError, redis.RedisError, OSError, amqp.exceptions.AMQPError) as exc:
        reporter.emit("error", message=str(exc) or type(exc).__name__)
        print(f"celery-kit move: error: {exc}", file=sys.stderr)
        return 2
    reporter.emit("summary", **summary)
    return code


if __name__ == "__main__":
    sys.exit(main())
