"""Flower, the Celery dashboard, on the monitoring host: behind its password,
it lists every worker process and shows a task submitted through the API,
with its state, from the workers' task events.

The tests ask Flower's HTTP API at the private address it listens on, from
the monitoring host, with the password the deployment generated (read from
the root-only environment file the unit uses).
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import conftest
from conftest import submit, wait_for_result, wait_until, worker_names

CREDENTIALS = "/etc/celery-app/flower.env"
UNIT = "/etc/systemd/system/celery-flower.service"


def _address(host) -> str:
    unit = host.file(UNIT).content_string
    address = re.search(r"--address=(\S+)", unit).group(1)
    port = re.search(r"--port=(\d+)", unit).group(1)
    return f"{'https' if conftest.TLS_CA else 'http'}://{address}:{port}"


def _status(host, path: str, credentials: str | None) -> int:
    auth = f"-u {shlex.quote(credentials)} " if credentials else ""
    url = shlex.quote(_address(host) + path)
    out = host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' -m 10 {conftest.curl_tls()}{auth}{url}")
    return int(out)


def _api(host, path: str) -> Any:
    with host.sudo():
        credentials = host.file(CREDENTIALS).content_string.strip().split("=", 1)[1]
    return json.loads(
        host.check_output(
            f"curl -sf -m 10 {conftest.curl_tls()}-u {shlex.quote(credentials)} {shlex.quote(_address(host) + path)}"
        )
    )


def test_flower_asks_for_its_password_but_serves_metrics_without(monitoring_host):
    assert monitoring_host.service("celery-flower").is_running
    assert monitoring_host.service("celery-flower").is_enabled
    assert _status(monitoring_host, "/api/workers", None) == 401
    assert _status(monitoring_host, "/api/workers", "admin:not-the-password") == 401
    assert _status(monitoring_host, "/metrics", None) == 200
    assert monitoring_host.file(CREDENTIALS).mode == 0o600
    assert "BASIC_AUTH" not in monitoring_host.check_output("ps -eo args")


def test_flower_lists_every_worker_process(monitoring_host, group_hosts):
    expected = worker_names(group_hosts)
    assert expected

    def listed() -> set[str] | None:
        names = set(_api(monitoring_host, "/api/workers?refresh=1"))
        return names if expected <= names else None

    wait_until(f"the workers {sorted(expected)} in Flower", 90, listed)


def test_a_task_submitted_through_the_api_shows_in_flower_with_its_state(monitoring_host, api_host):
    task_id = submit(api_host, {"task": "add", "args": [20, 22]})
    assert wait_for_result(api_host, task_id)["state"] == "SUCCESS"

    def succeeded() -> dict[str, Any] | None:
        task = _api(monitoring_host, "/api/tasks?limit=1000").get(task_id)
        return task if task and task.get("state") == "SUCCESS" else None

    task = wait_until("the task in Flower as SUCCESS", 60, succeeded)
    assert task["name"] == "add"
    assert task["result"] == "42"
