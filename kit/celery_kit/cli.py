"""celery-kit: the kit's one command line.

On the hosts (installed beside the app, run as the app's user):
    celery-kit check                 the app's Celery configuration against the kit's guarantees
    celery-kit health                run the kit's health task through the platform
    celery-kit drain NAME...         a worker process finishes what it holds before it stops
    celery-kit move ...              move queued tasks between the brokers (make migrate)
    celery-kit dlq ...               list, replay or purge the dead-letter queue (make dlq)
    celery-kit outbox relay          send the outbox's stored submissions to the broker (api hosts' service)
    celery-kit outbox status         the outbox's depth and oldest entry, as JSON (make status)

On the controller (make runs them):
    celery-kit status FILE           print make status's report from the collected JSON
    celery-kit wheelhouse ...        build the wheels of the app and the kit for the hosts
    celery-kit aws ...               Terraform and Ansible for ENV=aws
    celery-kit bench-migration ...   benchmark of make migrate
    celery-kit bench-report FILE     print make bench's table and draw its chart
    celery-kit chaos-report FILE     print make chaos's fault table and draw its timelines

Each command has --help.
"""

from __future__ import annotations

import importlib
import sys

# Each command: the module that implements it and its entry point, imported
# only when that command runs (the hosts lack the controller's libraries).
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("check", "main"),
    "health": ("check", "health_main"),
    "drain": ("drain", "main"),
    "move": ("mover", "main"),
    "dlq": ("dlq", "main"),
    "outbox": ("outbox", "main"),
    "status": ("status", "main"),
    "wheelhouse": ("wheelhouse", "main"),
    "aws": ("aws", "main"),
    "bench-migration": ("bench", "main"),
    "bench-report": ("benchreport", "main"),
    "chaos-report": ("chaosreport", "main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"celery-kit: unknown command {argv[0]!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, function = COMMANDS[argv[0]]
    return getattr(importlib.import_module(f"celery_kit.{module}"), function)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
