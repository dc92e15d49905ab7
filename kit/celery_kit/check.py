"""celery-kit check and celery-kit health: is the app safe to run, and does the platform run it.

The deploy runs `celery-kit check` on every worker and api host with the new
release before any process restarts: it loads the app as a worker would,
applies the kit's settings, loads every task module and reports each setting
the app overrides; an app whose configuration would make the kit's
guarantees false fails the deploy here, with the setting named.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from celery_kit import deployment as deployment_module
from celery_kit import settings as settings_module
from celery_kit.boot import APP_ENV, AppNotFound, import_app


def inspect_app(spec: str, deployment: dict) -> tuple[settings_module.Outcome, list[str]]:
    """Apply the kit's settings to the app named by spec; return the outcome and the registered tasks."""
    app = import_app(spec)
    outcome = settings_module.apply(app, deployment)
    # Load every task module (Django apps: after django.setup()), then bind.
    app.loader.import_default_modules()
    app.finalize(auto=True)
    outcome.problems.extend(settings_module.task_problems(app, deployment))
    tasks = sorted(name for name in app.tasks if not name.startswith("celery."))
    return outcome, tasks


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="celery-kit check", description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=os.environ.get(APP_ENV), help=f"package.module:attribute (default ${APP_ENV})")
    args = parser.parse_args(argv)
    if not args.app:
        parser.error(f"name the app with --app or {APP_ENV}")
    try:
        deployment = deployment_module.load()
        outcome, tasks = inspect_app(args.app, deployment)
    except (AppNotFound, ImportError, deployment_module.DeploymentError) as exc:
        print(f"celery-kit check: cannot load {args.app}: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "app": args.app,
                "tasks": tasks,
                "deployment_settings_overridden": sorted(outcome.overridden),
                "app_settings_kept": sorted(outcome.kept),
                "refused": outcome.problems,
            },
            indent=2,
        )
    )
    if outcome.problems:
        print(f"celery-kit check: {args.app} is refused:", file=sys.stderr)
        for problem in outcome.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    return 0


def health_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="celery-kit health", description="Run the kit's health task and wait.")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the result")
    args = parser.parse_args(argv)
    from celery_kit.app import app  # noqa: PLC0415 (loads the app named by CELERY_KIT_APP)

    result = app.send_task(settings_module.HEALTH_TASK, queue=deployment_module.HEALTH_QUEUE["name"])
    try:
        value = result.get(timeout=args.timeout)
    except Exception as exc:  # any failure is reported the same way
        print(json.dumps({"id": result.id, "state": result.state, "error": repr(exc)}))
        return 1
    print(json.dumps({"id": result.id, "state": result.state, "result": value}))
    return 0
