"""Tasks outlive their workers: warm shutdown finishes them, a killed worker
gives them back to the broker (late acks), and a finished id never runs twice."""

import time

from conftest import api_call, configured_worker_units, redis_cli, submit, wait_for_result


def _wait_until_started(api_host, task_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, reply = api_call(api_host, "GET", f"/tasks/{task_id}")
        if reply["state"] != "PENDING":
            return reply["state"]
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never started")


def test_restart_is_a_warm_shutdown_that_lets_running_tasks_finish(api_host, redis_host, group_hosts):
    task_id = submit(api_host, {"task": "process_task", "args": [{"seconds": 6}]})
    assert _wait_until_started(api_host, task_id) == "STARTED"
    for host in group_hosts("workers"):
        host.check_output("systemctl restart taskapp-workers.target")
    reply = wait_for_result(api_host, task_id)
    assert reply["state"] == "SUCCESS"
    assert reply["result"]["keys"] == ["seconds"]
    # Finished before the restart completed: never handed out a second time.
    assert redis_cli(redis_host, "HGET", "taskapp:duplicates", task_id, db=2).stdout.strip() == ""


def test_task_of_a_killed_worker_is_delivered_again_and_completes(api_host, group_hosts, rabbitmq):
    # RabbitMQ gives a dead consumer's unacknowledged messages back at once;
    # the Redis broker only after its visibility timeout (the rabbitmq
    # fixture skips this test on a Redis-broker deployment).
    del rabbitmq
    task_id = submit(api_host, {"task": "process_task", "args": [{"seconds": 8}]})
    assert _wait_until_started(api_host, task_id) == "STARTED"
    for host in group_hosts("workers"):
        host.check_output("systemctl kill --signal=SIGKILL 'taskapp-worker@*.service'")
    reply = wait_for_result(api_host, task_id, timeout=90)
    assert reply["state"] == "SUCCESS"
    for host in group_hosts("workers"):
        for unit in configured_worker_units(host):
            assert host.service(unit).is_running, f"{unit} did not come back on {host.backend.hostname}"
