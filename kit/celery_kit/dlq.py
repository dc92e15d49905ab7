"""celery-kit dlq: what the dead-letter queue holds, and putting it back.

    celery-kit dlq list    --config FILE [--json]
    celery-kit dlq replay  --config FILE (--task NAME | --id ID | --all)
    celery-kit dlq purge   --config FILE (--task NAME | --id ID | --all)

FILE (JSON, "-" or /dev/stdin for standard input, which keeps the passwords
off command lines): amqp_url, result_url (Redis db of the results, to show
the exception a task died of), dead_letter_queue, queues (the app's).

Works on any Celery (protocol 2) message: the task name and id are read
from its headers, where it died from RabbitMQ's x-death header.

replay sends each chosen message back to the queue it died in, with its
body, headers (less RabbitMQ's death records) and properties, through the
default exchange, with publisher confirms: a message leaves the dead-letter
queue (acknowledged) only after RabbitMQ confirmed its copy. A replayed task
runs again with the same id; if it opted into the at-most-once guard and
had in fact finished, it is skipped. purge acknowledges the chosen messages
away. Messages not chosen stay, in their order.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import amqp
import redis

from celery_kit import redisurl
from celery_kit.rabbit import AmqpMessage, BrokerError, Rabbit

# RabbitMQ's own headers about a message's deaths and deliveries; a replayed
# message starts without them (its deaths are history, its delivery count new).
DEATH_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason")
DEATH_HEADERS += ("x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count")
CARRIED_PROPERTIES = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "priority",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)
MAX_EXCEPTION_CHARS = 300
# Celery's native delayed delivery queues (celery_delayed_0 .. 27).
DELAY_QUEUE_PREFIX = "celery_delayed_"


class DlqError(BrokerError):
    """The configuration is wrong, or a message cannot be replayed."""


def load_config(path: str) -> dict[str, Any]:
    try:
        if path == "-":
            raw = json.load(sys.stdin)
        else:
            with open(path, encoding="utf-8") as handle:
                raw = json.load(handle)
    except (OSError, ValueError) as exc:
        raise DlqError(f"cannot read configuration {path}: {exc}") from exc
    missing = sorted({"amqp_url", "dead_letter_queue", "queues"} - set(raw))
    if missing:
        raise DlqError(f"configuration {path}: missing keys {missing}")
    return raw


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _time(value: Any) -> str | None:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.isoformat()
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC).isoformat()
    return None


def describe(message: amqp.Message) -> dict[str, Any]:
    """What a dead-lettered Celery message is and where it died.

    x-death holds one entry per (queue, reason), newest first. A countdown or
    a retry delay passes through Celery's delay queues (celery_delayed_*),
    each hop an "expired" death of RabbitMQ's own: those are the delay
    mechanism, not the task's deaths, and are left out.
    """
    headers = dict(message.properties.get("application_headers") or {})
    deaths = [
        dict(death)
        for death in headers.get("x-death") or []
        if not str(_text(death.get("queue")) or "").startswith(DELAY_QUEUE_PREFIX)
    ]
    last = deaths[0] if deaths else {}
    times = [stamp for stamp in (_time(death.get("time")) for death in deaths) if stamp]
    return {
        "task": _text(headers.get("task")),
        "id": _text(headers.get("id")),
        "queue": _text(last.get("queue")),
        "reason": _text(last.get("reason")),
        "deaths": sum(int(death.get("count", 1)) for death in deaths),
        "first_death": min(times) if times else None,
    }


def exception_of(results: redis.Redis | None, task_id: str | None) -> str | None:
    """The exception the task last failed with, from its result (None when unknown)."""
    if results is None or not task_id:
        return None
    try:
        meta = results.get(f"celery-task-meta-{task_id}")
    except redis.RedisError:
        return None
    if not meta:
        return None
    result = json.loads(meta)
    if result.get("status") != "FAILURE" or not isinstance(result.get("result"), dict):
        return None
    failure = result["result"]
    text = f"{failure.get('exc_type', 'Exception')}: {failure.get('exc_message')}"
    return text[:MAX_EXCEPTION_CHARS]


def chosen(entry: dict[str, Any], args: argparse.Namespace) -> bool:
    if getattr(args, "all", False):
        return True
    return (args.task is not None and entry["task"] == args.task) or (args.id is not None and entry["id"] == args.id)


def replay_copy(message: amqp.Message, queue: str) -> AmqpMessage:
    """The message as it was before it died, for the queue it died in (default exchange)."""
    original = message.properties.get("application_headers") or {}
    headers = {key: value for key, value in original.items() if key not in DEATH_HEADERS}
    properties = {key: message.properties[key] for key in CARRIED_PROPERTIES if key in message.properties}
    properties.update(application_headers=headers, delivery_mode=2)
    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
    return AmqpMessage(body=body, properties=properties, exchange="", routing_key=queue)


def walk(rabbit: Rabbit, queue: str, limit: int) -> list[tuple[amqp.Message, dict[str, Any]]]:
    """Every message of the queue (up to limit), each fetched and left unacknowledged."""
    messages = []
    while len(messages) < limit:
        message = rabbit.get(queue)
        if message is None:
            break
        messages.append((message, describe(message)))
    return messages


def command_list(rabbit: Rabbit, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    results = redisurl.connect(config["result_url"], socket_timeout=5) if config.get("result_url") else None
    entries = []
    for _, entry in walk(rabbit, config["dead_letter_queue"], args.limit):
        entries.append({**entry, "exception": exception_of(results, entry["id"])})
    return {"dead_letter_queue": config["dead_letter_queue"], "messages": entries}


def command_replay(rabbit: Rabbit, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    queues = {queue["name"] for queue in config["queues"]}
    replayed, skipped = [], []
    for message, entry in walk(rabbit, config["dead_letter_queue"], args.limit):
        if not chosen(entry, args):
            continue
        if entry["queue"] not in queues:
            skipped.append({**entry, "why": f"queue {entry['queue']!r} is not one of the app's queues"})
            continue
        # Published and confirmed first; only then acknowledged away.
        rabbit.publish([replay_copy(message, entry["queue"])])
        rabbit.ack(message.delivery_tag)
        replayed.append(entry)
    return {"replayed": replayed, "skipped": skipped}


def command_purge(rabbit: Rabbit, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    purged = []
    for message, entry in walk(rabbit, config["dead_letter_queue"], args.limit):
        if chosen(entry, args):
            rabbit.ack(message.delivery_tag)
            purged.append(entry)
    return {"purged": purged}


def table(entries: list[dict[str, Any]]) -> str:
    columns = ("task", "id", "queue", "reason", "deaths", "first_death", "exception")
    rows = [
        [str(entry.get(column) if entry.get(column) is not None else "-") for column in columns] for entry in entries
    ]
    widths = [max(len(column), *(len(row[index]) for row in rows)) for index, column in enumerate(columns)]
    lines = ["  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="celery-kit dlq", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help='JSON settings file ("-": standard input)')
    common.add_argument("--limit", type=int, default=100_000, help="read at most this many messages")
    selecting = argparse.ArgumentParser(add_help=False, parents=[common])
    choice = selecting.add_mutually_exclusive_group(required=True)
    choice.add_argument("--task", help="messages of this task name")
    choice.add_argument("--id", help="the message of this task id")
    choice.add_argument("--all", action="store_true", help="every message")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[common], help="what the dead-letter queue holds")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    commands.add_parser("replay", parents=[selecting], help="send chosen messages back to their queue")
    commands.add_parser("purge", parents=[selecting], help="delete chosen messages")
    return parser


COMMANDS = {"list": command_list, "replay": command_replay, "purge": command_purge}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        rabbit = Rabbit(config["amqp_url"])
        try:
            outcome = COMMANDS[args.command](rabbit, config, args)
        finally:
            # What was fetched and not acknowledged goes back, in its order.
            rabbit.close()
    except (BrokerError, redis.RedisError, OSError, amqp.exceptions.AMQPError) as exc:
        print(f"celery-kit dlq: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "list" and not args.json:
        count = len(outcome["messages"])
        print(f"{outcome['dead_letter_queue']}: {count} message(s)")
        if count:
            print(table(outcome["messages"]))
        return 0
    print(json.dumps(outcome, indent=2, default=str))
    return 0
