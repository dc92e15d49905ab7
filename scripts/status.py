#!/usr/bin/env python3
"""Print what playbooks/status.yml collected, as readable tables.

Exit status: 0 when every application queue has a consumer, 1 when one has
none (tasks would pile up), 2 when the status file cannot be read.
Usage: scripts/status.py STATUS_JSON
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

DEAD_LETTER_QUEUE = "dead-letter"
PERSISTENCE_FIELDS = (
    "aof_enabled",
    "aof_rewrite_in_progress",
    "aof_last_bgrewrite_status",
    "aof_last_write_status",
    "rdb_last_bgsave_status",
    "rdb_changes_since_last_save",
    "loading",
)


def is_internal(name: str) -> bool:
    """Celery's own queues (events, remote control replies), not the app's."""
    return name.startswith("celeryev.") or name.endswith(".pidbox") or name.startswith("_kombu.")


def parse_active_queues(text: str) -> dict[str, list[str]]:
    """Worker name -> queue names, from `celery inspect active_queues --json`."""
    if not text.strip():
        return {}
    try:
        replies = json.loads(text.strip().splitlines()[-1])
    except ValueError:
        return {}
    if isinstance(replies, list):  # one {node: reply} object per worker
        replies = {node: reply for item in replies for node, reply in item.items()}
    return {node: sorted(queue["name"] for queue in reply) for node, reply in replies.items()}


def consumer_counts(active: dict[str, list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for queues in active.values():
        for queue in queues:
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def rabbitmq_rows(queues: list[dict[str, Any]]) -> list[tuple[str, int, int, int]]:
    rows = [
        (q["name"], q["messages_ready"], q["messages_unacknowledged"], q["consumers"])
        for q in queues
        if not is_internal(q["name"])
    ]
    return sorted(rows)


def redis_rows(lines: list[str], consumers: dict[str, int]) -> list[tuple[str, int, int, int]]:
    """Rows for the Redis broker: lists are queues (name or name:priority)."""
    ready: dict[str, int] = {}
    unacked = 0
    for line in lines:
        kind, key, count = line.split()
        if kind == "list" and not is_internal(key):
            base = re.sub(r":\d$", "", key)
            ready[base] = ready.get(base, 0) + int(count)
        elif kind == "hash" and key == "unacked":
            unacked = int(count)
    names = sorted(set(ready) | set(consumers))
    rows = [(name, ready.get(name, 0), 0, consumers.get(name, 0)) for name in names]
    if unacked:
        rows.append(("(reserved by workers: kombu unacked)", 0, unacked, 0))
    return rows


def parse_persistence(info: dict[str, Any]) -> dict[str, str]:
    """The persistence fields worth a look, from Redis INFO persistence."""
    return {key: str(info[key]) for key in PERSISTENCE_FIELDS if key in info}


def table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    cells = [tuple(str(c) for c in headers)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(status: dict[str, Any]) -> tuple[str, int]:
    """The printed report and the exit status."""
    active = parse_active_queues(status.get("active_queues") or "")
    consumers = consumer_counts(active)
    if status.get("broker") == "rabbitmq" and status.get("rabbitmq_queues") is not None:
        rows = rabbitmq_rows(status["rabbitmq_queues"])
    else:
        rows = redis_rows(status.get("redis_broker_keys") or [], consumers)
    out = [f"Environment {status.get('environment')}, broker {status.get('broker')}", ""]
    out.append(table(("Queue", "Ready", "Unacked", "Consumers"), rows))
    idle = [name for name, _, _, count in rows if count == 0 and name != DEAD_LETTER_QUEUE and not name.startswith("(")]
    out += ["", f"Workers online: {len(active)}"]
    out += [f"  {node}: {', '.join(queues)}" for node, queues in sorted(active.items())]
    persistence = parse_persistence(status.get("redis_persistence") or {})
    out += ["", "Redis persistence:"]
    out += [f"  {key}: {value}" for key, value in persistence.items()]
    if persistence.get("aof_enabled") != "1":
        out.append("  WARNING: the append-only file is off")
    if idle:
        out += ["", f"ERROR: no consumer on: {', '.join(idle)}"]
        return "\n".join(out), 1
    return "\n".join(out), 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {argv[1]}: {exc}", file=sys.stderr)
        return 2
    text, code = report(status)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
