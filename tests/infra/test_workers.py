"""Every worker host runs its configured worker processes, each consuming."""

import json

from conftest import APP_QUEUES, CELERY, configured_worker_units, rabbitmq_queues, worker_names


def test_each_worker_host_runs_its_processes(group_hosts):
    for host in group_hosts("workers"):
        units = configured_worker_units(host)
        assert units, f"{host.backend.hostname} has no worker process configured"
        for unit in units:
            assert host.service(unit).is_running, f"{unit} on {host.backend.hostname}"
            assert host.service(unit).is_enabled, f"{unit} on {host.backend.hostname}"


def test_every_worker_process_answers_ping(group_hosts):
    host = group_hosts("workers")[0]
    replies = json.loads(host.check_output(f"{CELERY} inspect ping --timeout 5 --json"))
    answered = set(replies) if isinstance(replies, dict) else {name for reply in replies for name in reply}
    assert answered == worker_names(group_hosts)


def test_every_worker_process_consumes_every_queue(group_hosts):
    processes = sum(len(configured_worker_units(host)) for host in group_hosts("workers"))
    replies = json.loads(group_hosts("workers")[0].check_output(f"{CELERY} inspect active_queues --timeout 5 --json"))
    for name in APP_QUEUES:
        consuming = [node for node, queues in replies.items() if name in {queue["name"] for queue in queues}]
        assert len(consuming) == processes, f"queue {name} is consumed by {sorted(consuming)}"


def test_rabbitmq_sees_one_consumer_per_worker_process_on_every_queue(group_hosts, rabbitmq):
    processes = sum(len(configured_worker_units(host)) for host in group_hosts("workers"))
    queues = rabbitmq_queues(rabbitmq)
    for name in APP_QUEUES:
        assert queues[name]["consumers"] == processes, f"queue {name}"
