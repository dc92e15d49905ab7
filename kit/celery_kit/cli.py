"""celery-kit: the kit's one command line.

On the hosts (installed beside the app, run as the app's user):
    celery-kit check                 the app's Celery configuration against the kit's guarantees
    celery-kit health                run the kit's health task through the platform
    celery-kit move ...              move queued tasks between the brokers (make migrate)
    celery-kit dlq ...               list, replay or purge the dead-letter queue (make dlq)

On the controller (make runs them):
    celery-kit status FILE           print make status's report from the collected JSON
    celery-kit wheelhouse ...        build the wheels of the app and the kit for the hosts
    celery-kit aws ...               Terraform and Ansible for ENV=aws
    celery-kit bench-migration ...   benchmark of make migrate

Each command has --help.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _check(argv: list[str]) -> int:
    from celery_kit import check  # noqa: PLC0415 (each command imports only what it needs)

    return check.main(argv)


def _health(argv: list[str]) -> int:
    from celery_kit import check  # noqa: PLC0415

    return check.health_main(argv)


def _move(argv: list[str]) -> int:
    from celery_kit import mover  # noqa: PLC0415

    return mover.main(argv)


def _dlq(argv: list[str]) -> int:
    from celery_kit import dlq  # noqa: PLC0415

    return dlq.main(argv)


def _status(argv: list[str]) -> int:
    from celery_kit import status  # noqa: PLC0415

    return status.main(["celery-kit status", *argv])


def _wheelhouse(argv: list[str]) -> int:
    from celery_kit import wheelhouse  # noqa: PLC0415

    return wheelhouse.main(argv)


def _aws(argv: list[str]) -> int:
    from celery_kit import aws  # noqa: PLC0415

    return aws.main(argv)


def _bench_migration(argv: list[str]) -> int:
    from celery_kit import bench  # noqa: PLC0415

    return bench.main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "check": _check,
    "health": _health,
    "move": _move,
    "dlq": _dlq,
    "status": _status,
    "wheelhouse": _wheelhouse,
    "aws": _aws,
    "bench-migration": _bench_migration,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"celery-kit: unknown command {argv[0]!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
