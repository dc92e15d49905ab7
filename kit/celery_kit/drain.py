"""celery-kit drain: a worker process finishes what it holds before it stops.

Celery's warm shutdown stops the worker's event loop while its last tasks
still run: a task that finishes then is never acknowledged (with acks_late,
celery/celery#3802), and RabbitMQ hands its message out again once the old
process's connection is gone, about half a minute later (missed heartbeats).
The kit's guard skips that second delivery, but it is still a task delivered
twice. So before the kit restarts or stops a worker process
(roles/celery_worker/tasks/replace.yml) it drains the process:

1. the process stops consuming each of its queues (cancel_consumer); the
   host's other processes go on consuming them;
2. it runs what it already received, and acknowledges it, its event loop
   still running;
3. once it reports no active and no reserved task, the drain returns and
   systemd's warm stop finds nothing in flight.

A process that does not answer, or still holds tasks after --timeout, is
reported and left to the warm stop as before, and so is every process when
the broker cannot be reached: the drain never fails a deploy. Prints one JSON line; exit 0, or 2 on bad arguments.

    celery-kit drain default-1 default-2 [--timeout 60]

A name without "@" gets this host's name (the units' --hostname is
<pool>-<n>@%H).
"""

from __future__ import annotations

import argparse
import json
import socket
import time

# Seconds a control request waits for the process's answer.
REPLY_TIMEOUT = 1.0
# Polls without an answer before a process counts as not answering.
UNANSWERED_POLLS = 3


def node_names(names: list[str], host: str | None = None) -> list[str]:
    """Celery node names: a bare name gets this host's name."""
    host = host or socket.gethostname()
    return [name if "@" in name else f"{name}@{host}" for name in names]


def holding(active: dict | None, reserved: dict | None, nodes: list[str]) -> dict[str, int | None]:
    """Per node, the tasks it runs or holds; None for a node that did not answer."""
    active, reserved = active or {}, reserved or {}
    counts: dict[str, int | None] = {}
    for node in nodes:
        if node not in active and node not in reserved:
            counts[node] = None
        else:
            counts[node] = len(active.get(node) or []) + len(reserved.get(node) or [])
    return counts


def drain(app, nodes: list[str], timeout: float, interval: float = 0.5) -> dict:
    """Stop the nodes consuming, then wait until they hold no task; the outcome."""
    started = time.monotonic()
    outcome: dict = {"nodes": nodes, "cancelled": {}, "drained": False}
    try:
        queues = app.control.inspect(destination=nodes, timeout=REPLY_TIMEOUT).active_queues() or {}
        # A process that does not answer here (stopped, stuck, or on another
        # broker than the current settings name: make migrate) is not waited for.
        answering = [node for node in nodes if node in queues]
        outcome["not_answering"] = [node for node in nodes if node not in queues]
        for node in answering:
            for queue in queues[node] or []:
                app.control.cancel_consumer(queue["name"], destination=[node], reply=True, timeout=REPLY_TIMEOUT)
                outcome["cancelled"].setdefault(node, []).append(queue["name"])
        inspect = app.control.inspect(destination=answering, timeout=REPLY_TIMEOUT)
        unanswered = 0
        while answering:
            counts = holding(inspect.active(), inspect.reserved(), answering)
            busy = {node: count for node, count in counts.items() if count}
            silent = [node for node, count in counts.items() if count is None]
            outcome.setdefault("held_at_first", busy)
            unanswered = unanswered + 1 if silent else 0
            if not busy and not silent:
                break
            if unanswered >= UNANSWERED_POLLS or time.monotonic() - started >= timeout:
                outcome.update(still_holding=busy, not_answering=outcome["not_answering"] + silent)
                break
            time.sleep(interval)
        outcome["drained"] = not outcome.get("still_holding") and not outcome["not_answering"]
    except Exception as error:  # the broker unreachable: the warm stop follows as before
        outcome["error"] = f"{type(error).__name__}: {error}"
    outcome["seconds"] = round(time.monotonic() - started, 1)
    return outcome


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="celery-kit drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="worker node names (<pool>-<n>, or <pool>-<n>@<host>)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the tasks held (60)")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    from celery_kit.app import app  # noqa: PLC0415 (loads the app named by CELERY_KIT_APP)

    print(json.dumps(drain(app, node_names(args.names), args.timeout)), flush=True)
    return 0
