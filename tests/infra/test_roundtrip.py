"""A task goes through the API, runs on a worker, its result comes back."""

import pytest
from conftest import api_call, redis_cli, submit, wait_for_result


def test_add_round_trip_through_api_worker_and_redis(api_host, redis_host):
    task_id = submit(api_host, {"task": "add", "args": [19, 23]})
    reply = wait_for_result(api_host, task_id)
    assert reply == {"id": task_id, "state": "SUCCESS", "result": 42}
    # The result lives in Redis db 1, the result backend.
    assert redis_cli(redis_host, "EXISTS", f"celery-task-meta-{task_id}", db=1).stdout.strip() == "1"
    # ... and the task id is recorded as done in db 2, the idempotency keys.
    assert redis_cli(redis_host, "EXISTS", f"celery-kit:done:{task_id}", db=2).stdout.strip() == "1"


def test_welcome_email_lands_in_a_mail_sink(api_host, group_hosts):
    task_id = submit(api_host, {"task": "send_welcome_email", "kwargs": {"email": "new.user@example.com"}})
    assert wait_for_result(api_host, task_id)["state"] == "SUCCESS"
    sinks = "".join(
        host.run("cat /var/lib/celery-app/mail-sink.log 2>/dev/null").stdout for host in group_hosts("workers")
    )
    assert task_id in sinks


def test_countdown_and_priority_tasks_run(api_host):
    delayed = submit(api_host, {"task": "add", "args": [1, 1], "countdown": 2})
    urgent = submit(api_host, {"task": "process_task", "args": [{"a": 1}], "queue": "priority", "priority": 9})
    assert wait_for_result(api_host, delayed)["result"] == 2
    assert wait_for_result(api_host, urgent)["result"]["keys"] == ["a"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"task": "nope"}, "task must be one of"),
        ({"task": "add", "args": [1, "two"]}, "y must be a number"),
        ({"task": "add", "args": [1]}, "wrong arguments"),
        ({"task": "add", "args": [1, 2], "priority": 11}, "priority"),
        ({"task": "add", "args": [1, 2], "queue": "elsewhere"}, "queue must be one of"),
        ({"task": "send_welcome_email", "args": ["not-an-address"]}, "email"),
    ],
)
def test_bad_submissions_get_a_clear_400(api_host, body, message):
    status, reply = api_call(api_host, "POST", "/tasks", body)
    assert status == 400
    assert message in reply["error"]


def test_health_endpoint_answers(api_host, broker):
    assert api_call(api_host, "GET", "/healthz") == (200, {"status": "ok", "broker": broker})
