"""The two moves of celery-kit move: Redis to RabbitMQ and back, each message once.

Each move takes a batch from the source, publishes it to the destination
with confirms, and only then deletes it from the source, with a journal in
Redis so that a move interrupted at any point (the process killed between a
confirm and a delete) publishes a message at most twice, never loses one;
the at-most-once guard skips the second copy.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import amqp
import redis
from kombu.utils.json import dumps as kombu_dumps

from celery_kit.envelopes import (
    DELAY_ENTRY_EXCHANGE,
    DELAY_QUEUES,
    DIRECTIONS,
    MoveError,
    Settings,
    UnmovableMessage,
    amqp_to_envelope,
    delayed_destination,
    envelope_to_amqp,
    message_key,
    queue_for_route,
    redis_list_key,
    redis_list_keys,
)
from celery_kit.rabbit import Rabbit
from celery_kit.redis_broker import (
    INFLIGHT_KEY,
    MOVED_KEEP_SECONDS,
    MOVED_KEY,
    UNACKED_INDEX_KEY,
    UNACKED_KEY,
    UNMOVABLE_KEY,
    Lock,
    decode,
    parse_envelope,
    rabbit_blockers,
    rabbit_counts,
    redis_blockers,
    redis_counts,
    redis_left,
    unacked_route,
)

DEFAULT_BATCH = 500
PROGRESS_EVERY_MESSAGES = 5000
PROGRESS_EVERY_SECONDS = 5.0
CRASH_EXIT_CODE = 70
# Back to Redis: a delayed message on its way from one delay level to the
# next (dead-lettered at-least-once, in flight until the next level has
# confirmed it) is in no queue while a pass reads them, and shows up a
# moment later. The queues are read again, a pause apart, until a pass finds
# nothing: a count of zero taken right after a pass can miss a message that
# is still in flight, a whole pass a pause later does not.
SWEEPS = 10
SWEEP_PAUSE_SECONDS = 2.0


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
            for sweep in range(SWEEPS):
                if sweep:
                    time.sleep(SWEEP_PAUSE_SECONDS)
                got = sum(self.take_queue(name) for name in (*DELAY_QUEUES, *(q.name for q in self.settings.queues)))
                if self.limited or (sweep and not got):
                    break
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

    def take_queue(self, source: str) -> int:
        """Move what one queue holds; how many messages it got."""
        got = 0
        while True:
            room = self.room()
            if room <= 0:
                self.limited = True
                return got
            batch = []
            while len(batch) < room and (message := self.rabbit.get(source)) is not None:
                batch.append(message)
            if not batch:
                return got
            got += len(batch)
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
