"""Tasks outlive their workers: warm shutdown finishes them, a killed worker
gives them back to the broker (late acks), and a finished id never runs twice."""

import json
import shlex
import time
import uuid
from datetime import UTC, datetime

from conftest import (
    APP_ENV,
    APP_PYTHON,
    APP_QUEUES,
    APP_VENV,
    CELERY,
    Load,
    api_call,
    configured_worker_units,
    rabbitmq_queues,
    redis_cli,
    submit,
    wait_for_result,
)


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
        host.check_output("systemctl restart celery-workers.target")
    reply = wait_for_result(api_host, task_id)
    assert reply["state"] == "SUCCESS"
    assert reply["result"]["keys"] == ["seconds"]
    # Finished before the restart completed: never handed out a second time.
    assert redis_cli(redis_host, "HGET", "celery-kit:duplicates", task_id, db=2).stdout.strip() == ""


def test_a_drained_worker_process_stops_consuming_and_finishes_what_it_holds_once(api_host, redis_host, group_hosts):
    """What a replacement does before each process's stop (celery-kit drain)."""
    worker = group_hosts("workers")[0]
    node = f"default-1@{worker.check_output('hostname')}"
    ids = [submit(api_host, {"task": "process_task", "args": [{"seconds": 2}]}) for _ in range(12)]
    assert _wait_until_started(api_host, ids[0]) in ("STARTED", "SUCCESS")
    try:
        answer = worker.check_output(f"{APP_ENV} {APP_VENV}/bin/celery-kit drain default-1")
        outcome = json.loads(answer.splitlines()[-1])
        print(f"drain: {outcome}")
        assert outcome["drained"] is True, outcome
        assert set(outcome["cancelled"][node]) == set(APP_QUEUES), outcome
        consumed = json.loads(worker.check_output(f"{CELERY} inspect active_queues --timeout 5 --json -d {node}"))
        assert consumed[node] == [], consumed
        for task_id in ids:
            assert wait_for_result(api_host, task_id)["state"] == "SUCCESS"
    finally:
        worker.check_output("systemctl restart celery-worker-default@1.service")
    # Every task held by the drained process was acknowledged: none comes
    # back. (The restart closed the old process's connection: RabbitMQ would
    # deliver what it left unacknowledged again at once.)
    time.sleep(5)
    duplicates = [redis_cli(redis_host, "HGET", "celery-kit:duplicates", i, db=2).stdout.strip() for i in ids]
    assert duplicates == [""] * len(ids)


def test_task_of_a_killed_worker_is_delivered_again_and_completes(api_host, group_hosts, rabbitmq):
    # RabbitMQ gives a dead consumer's unacknowledged messages back at once;
    # the Redis broker only after its visibility timeout (the rabbitmq
    # fixture skips this test on a Redis-broker deployment).
    del rabbitmq
    task_id = submit(api_host, {"task": "process_task", "args": [{"seconds": 8}]})
    assert _wait_until_started(api_host, task_id) == "STARTED"
    for host in group_hosts("workers"):
        host.check_output("systemctl kill --signal=SIGKILL 'celery-worker-*@*.service'")
    reply = wait_for_result(api_host, task_id, timeout=90)
    assert reply["state"] == "SUCCESS"
    for host in group_hosts("workers"):
        for unit in configured_worker_units(host):
            assert host.service(unit).is_running, f"{unit} did not come back on {host.backend.hostname}"


def test_two_deliveries_of_one_task_id_at_the_same_time_run_it_once(api_host, redis_host, group_hosts):
    # What a message published twice (a move interrupted between RabbitMQ's
    # confirm and the Redis delete) looks like to the workers: two copies of
    # one id, taken by two idle worker processes at once.
    task_id = f"twice-{uuid.uuid4().hex}"
    send_twice = (
        "from celery_kit.app import app\n"
        "for _ in range(2):\n"
        f"    app.send_task('process_task', args=[{{'seconds': 4}}], task_id='{task_id}')\n"
    )
    api_host.check_output(f"{APP_PYTHON} -c {shlex.quote(send_twice)}")
    reply = wait_for_result(api_host, task_id)
    assert reply["state"] == "SUCCESS"
    # The second copy waited for the first to finish, then was skipped.
    deadline = time.monotonic() + 30
    while redis_cli(redis_host, "HGET", "celery-kit:duplicates", task_id, db=2).stdout.strip() != "1":
        assert time.monotonic() < deadline, f"the second copy of {task_id} was not skipped (did it run too?)"
        time.sleep(0.5)
    waited = [
        host.backend.hostname
        for host in group_hosts("workers")
        if host.run(f"journalctl -q --since '-2min' -u 'celery-worker-*@*' | grep -c '{task_id} is running in'").rc == 0
    ]
    assert waited, "the two copies did not overlap: no worker waited for the other"


def test_a_countdown_task_waits_in_the_broker_not_in_a_worker(api_host, rabbitmq, group_hosts, redis_host):
    submitted = time.time()
    task_id = submit(api_host, {"task": "add", "args": [6, 7], "countdown": 12})
    # Queue counts of quorum queues lag by a few seconds.
    deadline = time.monotonic() + 8
    while True:
        queues = rabbitmq_queues(rabbitmq)
        delayed = sum(queue["messages"] for name, queue in queues.items() if name.startswith("celery_delayed_"))
        if delayed >= 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert delayed >= 1, "the countdown task is not in the broker's delay queues"
    # No worker holds it: not among the tasks a worker keeps for later (ETA)
    # nor among those it reserved.
    for question in ("scheduled", "reserved"):
        held = group_hosts("workers")[0].check_output(f"{CELERY} inspect {question} --timeout 5 --json")
        assert task_id not in held, f"a worker holds the countdown task in memory ({question})"

    reply = wait_for_result(api_host, task_id, timeout=60)
    assert reply["result"] == 13
    meta = json.loads(redis_cli(redis_host, "GET", f"celery-task-meta-{task_id}", db=1).stdout)
    finished = datetime.fromisoformat(meta["date_done"]).replace(tzinfo=UTC).timestamp()
    assert finished >= submitted + 11, "the countdown task ran before it was due"


def test_urgent_tasks_overtake_a_backlog_on_the_priority_queue(api_host, group_hosts):
    # 80 normal tasks wait on the priority queue, then 6 urgent ones arrive:
    # every urgent one must finish before half of the backlog has.
    load = Load(api_host, "priority")
    task = {"task": "process_task", "args": [{"seconds": 0.5}], "queue": "priority"}
    normal = [dict(task, priority=0)] * 80
    urgent = [dict(task, priority=9)] * 6
    load.submit(normal + urgent)
    report = load.wait_until_all_ran(timeout=180)
    assert report["missing"] == 0
    order = load.run("order", load.ids)["finished"]
    ids = api_host.check_output(f"cat {load.ids}").split()
    urgent_ids, normal_ids = set(ids[80:]), ids[:80]
    normal_done = [task_id for task_id in order if task_id in set(normal_ids)]
    last_urgent = max(order.index(task_id) for task_id in urgent_ids)
    half_of_backlog = order.index(normal_done[39])
    print(f"the last urgent task finished {last_urgent + 1}th of {len(order)}")
    assert last_urgent < half_of_backlog


def test_the_health_check_does_not_wait_behind_a_backlog(api_host, group_hosts):
    # What make deploy ends with, during a busy hour: 400 half-second tasks
    # wait on the default queue (25 s for 8 worker slots), and the health
    # task still comes back within seconds, because it has a queue of its own.
    load = Load(api_host, "backlog")
    load.submit([{"task": "process_task", "args": [{"seconds": 0.5}]}] * 400)
    started = time.monotonic()
    task_id = submit(api_host, {"task": "celery_kit.health"})
    reply = wait_for_result(api_host, task_id, timeout=60)
    seconds = time.monotonic() - started
    unfinished = load.run("order", load.ids)["unfinished"]
    print(f"health check done in {seconds:.1f} s with {unfinished} of 400 backlog tasks still to run")
    assert reply["state"] == "SUCCESS"
    assert reply["result"]["worker"]
    assert seconds < 10
    assert unfinished > 100, "the backlog was gone before the health check came back"
    assert load.wait_until_all_ran(timeout=180)["missing"] == 0
