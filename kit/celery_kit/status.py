#!/usr/bin/env python3
"""Print what playbooks/status.yml collected, as readable tables.

Exit status: 0 when all is well; 1 when something needs a look: an
application queue without a consumer (tasks would pile up), a RabbitMQ node
down, a Redis replica not connected to its primary (or not exactly one
primary), an alarm (memory or disk: publishers are blocked) or a network
partition; 2 when the status file cannot be read.
Usage: celery-kit status STATUS_JSON
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

DEAD_LETTER_QUEUE = "dead-letter"
# Seconds the oldest outbox entry may wait before make status says so.
OUTBOX_AGE_LIMIT = 60
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


def is_delayed(name: str) -> bool:
    """A level of Celery's delayed delivery on RabbitMQ (countdown tasks wait there)."""
    return re.fullmatch(r"celery_delayed_\d+", name) is not None


def short_node(node: str | None) -> str:
    """rabbit@host -> host."""
    return (node or "-").split("@", 1)[-1]


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


def members_online(queue: dict[str, Any]) -> str:
    """'online/members' of a quorum queue; '-' for other types."""
    if queue.get("type") != "quorum":
        return "-"
    members = queue.get("members") or []
    online = queue.get("online") or []
    return f"{len(online)}/{len(members)}"


def rabbitmq_rows(queues: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """App queues and the dead-letter queue, one row each; the delay levels as one row."""
    rows = [
        (
            q["name"],
            q.get("type", "-"),
            q["messages_ready"],
            q["messages_unacknowledged"],
            q["consumers"],
            short_node(q.get("leader")),
            members_online(q),
        )
        for q in queues
        if not is_internal(q["name"]) and not is_delayed(q["name"])
    ]
    delayed = [q for q in queues if is_delayed(q["name"])]
    rows.sort()
    if delayed:
        offline = sum(len(q.get("members") or []) - len(q.get("online") or []) for q in delayed)
        rows.append(
            (
                f"(countdown tasks: {len(delayed)} delay queues)",
                "quorum",
                sum(q["messages_ready"] for q in delayed),
                sum(q["messages_unacknowledged"] for q in delayed),
                "-",
                "-",
                f"{offline} offline" if offline else "all",
            )
        )
    return rows


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


def cluster_lines(cluster: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """The cluster's nodes, alarms and partitions; and the problems among them."""
    if cluster is None:
        return [], ["no RabbitMQ node answered"]
    members = sorted(set(cluster.get("disk_nodes") or []) | set(cluster.get("ram_nodes") or []))
    running = set(cluster.get("running_nodes") or [])
    maintenance = cluster.get("maintenance_status") or {}
    alarms = cluster.get("alarms") or []
    partitions = cluster.get("partitions") or {}
    down = [node for node in members if node not in running]
    name = cluster.get("cluster_name", "?")
    lines = [f"RabbitMQ cluster {name}: {len(members) - len(down)} of {len(members)} nodes running"]
    for node in members:
        state = "running" if node in running else "DOWN"
        if maintenance.get(node, "not under maintenance") != "not under maintenance":
            state += f" ({maintenance[node]})"
        lines.append(f"  {node}  {state}")
    lines.append(f"Alarms: {', '.join(json.dumps(alarm) for alarm in alarms) if alarms else 'none'}")
    lines.append(f"Partitions: {json.dumps(partitions) if partitions else 'none'}")
    problems = [f"node down: {node}" for node in down]
    problems += [f"alarm: {json.dumps(alarm)}" for alarm in alarms]
    problems += ["network partition: " + json.dumps(partitions)] if partitions else []
    return lines, problems


def parse_persistence(info: dict[str, Any]) -> dict[str, str]:
    """The persistence fields worth a look, from Redis INFO persistence."""
    return {key: str(info[key]) for key in PERSISTENCE_FIELDS if key in info}


def outbox_rows(outboxes: dict[str, str]) -> tuple[list[tuple[Any, ...]], list[str]]:
    """Per api host: the outbox's depth, oldest entry's age and quarantined entries; and its problems."""
    rows: list[tuple[Any, ...]] = []
    problems: list[str] = []
    for host, text in sorted(outboxes.items()):
        try:
            figures = json.loads(text.strip().splitlines()[-1]) if text.strip() else {}
        except ValueError:
            figures = {}
        if not figures:
            rows.append((host, "-", "-", "-"))
            problems.append(f"outbox of {host}: no answer")
            continue
        if not figures.get("enabled", True):
            rows.append((host, "off", "-", "-"))
            continue
        if "error" in figures:
            rows.append((host, "-", "-", "-"))
            problems.append(f"outbox of {host}: {figures['error']}")
            continue
        age = figures.get("oldest_age_seconds")
        rows.append(
            (host, figures.get("depth", 0), "-" if age is None else f"{age:.0f} s", figures.get("quarantined", 0))
        )
        if age is not None and age > OUTBOX_AGE_LIMIT:
            problems.append(f"outbox of {host}: submissions waiting for {age:.0f} s (the broker does not take them)")
        if figures.get("quarantined"):
            problems.append(
                f"outbox of {host}: {figures['quarantined']} entries unreadable, kept in its quarantine table"
            )
    return rows, problems


def redis_node_lines(nodes: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """With several Redis hosts: the primary, each replica with its link and lag, and what is wrong.

    A replica's lag is how many bytes of the primary's replication stream it
    has not applied yet (the primary's offset minus its own), and the
    seconds since it last heard from the primary.
    """
    if not nodes:
        return [], []
    primaries = [node for node in nodes if node.get("role") == "master"]
    primary_offset = int(primaries[0].get("master_repl_offset", 0)) if len(primaries) == 1 else None
    rows: list[tuple[Any, ...]] = []
    problems: list[str] = []
    for node in nodes:
        role = node.get("role")
        if role == "master":
            rows.append((node["host"], "primary", "-", node.get("connected_slaves", "-"), "-", "-"))
        elif role == "slave":
            link = str(node.get("master_link_status", "?"))
            offset = int(node.get("slave_repl_offset", 0))
            behind = primary_offset - offset if primary_offset is not None else "-"
            rows.append((node["host"], "replica", link, "-", behind, node.get("master_last_io_seconds_ago", "-")))
            if link != "up":
                problems.append(f"Redis replica {node['host']} is not connected to its primary (link {link})")
        else:
            rows.append((node["host"], "unreachable", "-", "-", "-", "-"))
            problems.append(f"Redis host {node['host']} did not answer")
    if len(primaries) != 1:
        problems.append(f"Redis has {len(primaries)} primaries, not 1: {', '.join(n['host'] for n in primaries)}")
    headers = ("Redis host", "Role", "Link", "Replicas", "Bytes behind", "Last I/O s")
    return ["Redis replication (Sentinel):", table(headers, rows)], problems


def table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """A plain-text table: columns of numbers right-aligned, the others left-aligned."""
    numeric = [all(isinstance(row[i], int) or row[i] == "-" for row in rows) and i > 0 for i in range(len(headers))]
    cells = [tuple(str(c) for c in headers)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(status: dict[str, Any]) -> tuple[str, int]:
    """The printed report and the exit status."""
    active = parse_active_queues(status.get("active_queues") or "")
    consumers = consumer_counts(active)
    out = [f"Environment {status.get('environment')}, broker {status.get('broker')}", ""]
    problems: list[str] = []
    if status.get("broker") == "rabbitmq":
        lines, problems = cluster_lines(status.get("rabbitmq_cluster"))
        out += [*lines, ""]
        queues = status.get("rabbitmq_queues") or []
        rows = rabbitmq_rows(queues)
        out.append(table(("Queue", "Type", "Ready", "Unacked", "Consumers", "Leader", "Members online"), rows))
        idle = [row[0] for row in rows if row[4] == 0 and row[0] != DEAD_LETTER_QUEUE]
    else:
        rows = redis_rows(status.get("redis_broker_keys") or [], consumers)
        out.append(table(("Queue", "Ready", "Unacked", "Consumers"), rows))
        idle = [name for name, _, _, count in rows if count == 0 and not name.startswith("(")]
    out += ["", f"Workers online: {len(active)}"]
    out += [f"  {node}: {', '.join(queues)}" for node, queues in sorted(active.items())]
    lines, redis_problems = redis_node_lines(status.get("redis_nodes") or [])
    out += ["", *lines] if lines else []
    problems += redis_problems
    persistence = parse_persistence(status.get("redis_persistence") or {})
    out += ["", "Redis persistence" + (" (primary):" if lines else ":")]
    out += [f"  {key}: {value}" for key, value in persistence.items()]
    if persistence.get("aof_enabled") != "1":
        out.append("  WARNING: the append-only file is off")
    if status.get("outboxes"):
        rows, outbox_problems = outbox_rows(status["outboxes"])
        out += ["", "Outbox (submissions the broker did not take yet, per api host):"]
        out.append(table(("Host", "Waiting", "Oldest", "Quarantined"), rows))
        problems += outbox_problems
    if idle:
        problems.append(f"no consumer on: {', '.join(idle)}")
    if problems:
        out += [""] + [f"ERROR: {problem}" for problem in problems]
        return "\n".join(out), 1
    return "\n".join(out), 0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        with open(argv[0], encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {argv[0]}: {exc}", file=sys.stderr)
        return 2
    text, code = report(status)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
