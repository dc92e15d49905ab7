"""The Redis broker as the mover sees it: kombu's keys, counts, consumers, a lock."""

from __future__ import annotations

import fnmatch
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from kombu.utils.json import loads as kombu_loads

from celery_kit import redisurl
from celery_kit.envelopes import DELAY_QUEUES, MoveError, QueueSpec, Settings, has_eta, queue_for_route, redis_list_keys
from celery_kit.rabbit import Rabbit

# kombu's own keys in the broker database: Channel.unacked_key and friends,
# the binding tables (keyprefix_queue and kombu 5.7's binding_deadlines and
# binding_permanent), and reply queues of Celery's remote control.
# How the mover names its Redis connection (the consumer check skips it).
CLIENT_NAME = "celery-kit-move"
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


# --------------------------------------------------------------------------
# Connections


def connect_redis(url: str) -> redis.Redis:
    """A Redis client named so the consumer check can tell it from workers."""
    try:
        client = redisurl.connect(url, socket_connect_timeout=5, socket_timeout=60, client_name=CLIENT_NAME)
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


# How Redis Sentinel names its connections to the servers it monitors.
SENTINEL_CLIENT_PREFIX = "sentinel-"


def redis_consumers(client: redis.Redis) -> list[str]:
    """Connections to the broker database that look like a consuming worker.

    A kombu Redis worker waits in BRPOP on its queues and subscribes to
    Celery's broadcast channels; a producer (the API) does neither. The
    Sentinels (several Redis hosts) subscribe too, to their hello channel;
    they name their connections sentinel-<id>-pubsub and -cmd.
    """
    db = str(client.connection_pool.connection_kwargs.get("db", 0))
    blocking = {"brpop", "blpop", "blmove", "brpoplpush", "bzpopmin", "bzpopmax", "blmpop", "bzmpop"}
    per_host: dict[str, list[int]] = {}
    for entry in client.client_list():
        name = str(entry.get("name") or "")
        if name == CLIENT_NAME or name.startswith(SENTINEL_CLIENT_PREFIX) or str(entry.get("db")) != db:
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
