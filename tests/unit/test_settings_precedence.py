"""Who wins when a team's app and the kit set the same Celery setting.

Deployment settings: the deployment's value, always. Guarantees: the kit's;
another value in the app is refused, naming the setting. Defaults: the
app's own value where it sets one, the kit's otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from celery import Celery
from sample import deployment_settings

from celery_kit import boot, settings

ROOT = Path(__file__).resolve().parents[2]


def _app(**conf) -> Celery:
    app = Celery("team")
    app.conf.update(conf)
    return app


def test_an_app_that_sets_nothing_gets_every_guarantee_and_the_kit_defaults():
    app = _app()
    outcome = boot.configure(app, deployment_settings(task_time_limit=120))
    assert outcome.problems == []
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.task_acks_on_failure_or_timeout is False
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["confirm_publish"] is True
    assert app.conf.task_time_limit == 120
    assert app.conf.task_soft_time_limit == 110


def test_the_apps_own_time_limit_and_result_expiry_are_kept():
    app = _app(task_time_limit=60, task_soft_time_limit=50, result_expires=600)
    outcome = boot.configure(app, deployment_settings(task_time_limit=300))
    assert (app.conf.task_time_limit, app.conf.task_soft_time_limit, app.conf.result_expires) == (60, 50, 600)
    assert {"task_time_limit", "task_soft_time_limit", "result_expires"} <= set(outcome.kept)


def test_the_deployment_owns_the_broker_and_result_store_whatever_the_app_says():
    app = _app(broker_url="redis://developer-laptop:6379/0", result_backend="redis://developer-laptop:6379/1")
    outcome = boot.configure(app, deployment_settings(broker_url="amqp://node-1//", result_backend="redis://r/1"))
    assert app.conf.broker_url == "amqp://node-1//"
    assert app.conf.result_backend == "redis://r/1"
    assert {"broker_url", "result_backend"} <= set(outcome.overridden)


def test_the_apps_transport_options_are_kept_beside_confirms():
    app = _app(broker_transport_options={"max_retries": 3})
    boot.configure(app, deployment_settings())
    assert app.conf.broker_transport_options == {"max_retries": 3, "confirm_publish": True}


def test_an_app_that_agrees_with_a_guarantee_is_accepted():
    app = _app(task_acks_late=True, worker_prefetch_multiplier=1, task_reject_on_worker_lost=True)
    assert boot.configure(app, deployment_settings()).problems == []


@pytest.mark.parametrize(
    ("conf", "named"),
    [
        ({"worker_prefetch_multiplier": 8}, "worker_prefetch_multiplier=8"),
        ({"task_always_eager": True}, "task_always_eager=True"),
        ({"broker_transport_options": {"confirm_publish": False}}, "confirm_publish=False"),
        ({"task_time_limit": 900}, "task_time_limit=900 exceeds the deployment's task time limit (300 s"),
        ({"task_routes": {"reports.*": {"queue": "reports"}}}, "queue 'reports', which this deployment does not"),
    ],
)
def test_an_app_setting_that_breaks_a_guarantee_is_refused_by_name(conf, named):
    app = _app(**conf)
    with pytest.raises(settings.UnsafeSettings) as refused:
        boot.configure(app, deployment_settings(task_time_limit=300))
    assert named in str(refused.value)


def test_an_environment_that_would_override_the_broker_is_refused():
    # Celery reads CELERY_BROKER_URL over the app's configuration, the kit's included.
    outcome = settings.apply(_app(), deployment_settings(), environ={"CELERY_BROKER_URL": "redis://elsewhere"})
    assert outcome.problems == [
        "environment variable CELERY_BROKER_URL is set: Celery would use it over the deployment's"
    ]


def test_a_task_that_acknowledges_early_is_refused_by_name():
    app = _app()
    boot.configure(app, deployment_settings())

    @app.task(name="team.charge", acks_late=False)
    def charge() -> None:
        """Acknowledged before it runs: a worker dying mid-task would lose it."""

    @app.task(name="team.fine")
    def fine() -> None:
        """Takes the kit's settings."""

    app.finalize(auto=True)
    problems = settings.task_problems(app, deployment_settings())
    assert problems == [
        "task team.charge sets acks_late=False: a message is acknowledged before its task ran, so a worker"
        " that dies mid-task loses it (set on the task, or the task was bound before the kit configured the app)"
    ]
    assert app.tasks["team.fine"].acks_late is True


def test_the_kits_health_task_runs_on_its_own_queue_beside_the_apps_routes():
    app = _app(task_routes={"team.*": {"queue": "default"}})
    boot.configure(app, deployment_settings())
    assert app.amqp.router.route({}, settings.HEALTH_TASK)["queue"].name == "health"
    assert app.amqp.router.route({}, "team.report")["queue"].name == "default"


def test_celery_kit_check_fails_naming_the_setting(tmp_path):
    # What the deploy runs on every host before any process restarts.
    (tmp_path / "teamapp.py").write_text(
        textwrap.dedent(
            """
            from celery import Celery
            app = Celery("teamapp")
            app.conf.worker_prefetch_multiplier = 16

            @app.task(name="teamapp.send", acks_late=False)
            def send():
                return 1
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'kit'}", "CELERY_KIT_APP": "teamapp:app"}
    env.pop("CELERY_KIT_DEPLOYMENT", None)
    run = subprocess.run(
        [sys.executable, "-m", "celery_kit.cli", "check"], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 1, run.stderr
    assert "worker_prefetch_multiplier=16" in run.stderr
    assert "task teamapp.send sets acks_late=False" in run.stderr


def test_celery_kit_check_accepts_the_sample(tmp_path):
    (tmp_path / "deployment.json").write_text(json.dumps(deployment_settings()))
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'examples' / 'taskapp'}{os.pathsep}{ROOT / 'kit'}",
        "CELERY_KIT_DEPLOYMENT": str(tmp_path / "deployment.json"),
    }
    run = subprocess.run(
        [sys.executable, "-m", "celery_kit.cli", "check", "--app", "taskapp.app:app"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert '"send_welcome_email"' in run.stdout
