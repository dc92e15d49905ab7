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
import json
import sys
from collections.abc import Callable
from typing import Any

import amqp
import redis

from celery_kit.envelopes import DIRECTIONS, MoveError, QueueSpec, Settings
from celery_kit.moves import DEFAULT_BATCH, MoveOptions, RabbitToRedis, RedisToRabbit, Reporter
from celery_kit.rabbit import BrokerError, Rabbit
from celery_kit.redis_broker import (
    JOURNAL_PREFIX,
    KOMBU_KEY_PATTERNS,
    LOCK_KEY,
    Lock,
    connect_redis,
    rabbit_blockers,
    rabbit_counts,
    redis_blockers,
    redis_counts,
    redis_left,
    scan_keys,
)

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
