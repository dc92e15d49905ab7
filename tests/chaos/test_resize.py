"""Molecule scenario "chaos" (make chaos): the RabbitMQ cluster grows from 1
node to 3 and to 5, then shrinks back to 3, under load.

Each change is made by the kit's own playbooks, as make deploy
RABBITMQ_HOSTS=n makes it: local-hosts.yml creates the new hosts (or drains
a leaving node, moves its queue members away and forgets it, one node at a
time) and site.yml joins new nodes one at a time, grows every quorum queue
onto them and points the workers and the API at the new list of nodes.
Meanwhile tasks stream in through the API. Per change the test counts what a
user would notice (accepted, refused, lost, dead-lettered, run twice) and
asserts the guarantee: nothing refused, lost, dead-lettered or run twice.
The tests run in file order; each starts from the cluster the one before left.
"""

from __future__ import annotations

import json
import time

from celery_kit.local import ROOT, Deployment, deployment, sh

KIT = Deployment(deployment("chaos"))
RESULTS = ROOT / ".cache" / f"chaos-{KIT.name}.json"
RATE = 10
BODIES = [
    {"task": "add", "args": [2, 3]},
    {"task": "process_task", "args": [{"seconds": 0.5}]},
    {"task": "send_welcome_email", "args": ["resize@example.com"]},
    {"task": "add", "args": [3, 4], "countdown": 5},
    {"task": "process_task", "args": [{"seconds": 0.5}], "queue": "priority", "priority": 7},
]


def _cluster() -> dict:
    return json.loads(sh(KIT.container("rabbitmq"), "rabbitmqctl -q --formatter json cluster_status"))


def _quorum_queues() -> list[dict]:
    out = sh(
        KIT.container("rabbitmq"), "rabbitmqctl -q --formatter json list_queues -p /celery name type members online"
    )
    return [queue for queue in json.loads(out) if queue["type"] == "quorum"]


def _dead_letters() -> int:
    return KIT.rabbitmq_messages().get("dead-letter", 0)


def _record(counts: dict) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[counts["change"]] = counts
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print("FAULT COUNTS " + json.dumps(counts))


def _resize_under_load(nodes: int) -> dict:
    before = len(KIT.containers("rabbitmq"))
    name = f"{before}-to-{nodes}"
    ids, stop, output = f"/root/{name}.ids", f"/root/{name}.stop", f"/root/{name}.json"
    dead_before = _dead_letters()
    KIT.start_steady_load(ids, stop, output, RATE, BODIES)
    time.sleep(5)
    started = time.monotonic()
    hosts = KIT.playbook("-e", f"local_rabbitmq_hosts={nodes}", "playbooks/local-hosts.yml")
    assert hosts.returncode == 0
    site = KIT.playbook("-e", f"local_rabbitmq_hosts={nodes}", "playbooks/site.yml")
    assert site.returncode == 0
    seconds = round(time.monotonic() - started)
    time.sleep(5)
    steady = KIT.stop_steady_load(stop, output)
    report = KIT.wait_until_all_ran(ids, timeout=300)
    sent = KIT.welcome_emails_sent()
    submitted = set(sh(KIT.container("api"), f"cat {ids}").split())
    counts = {
        "change": f"{before} -> {nodes} nodes",
        "seconds": seconds,
        "accepted": steady["accepted"],
        "refused": steady["refused"],
        "lost": report["missing"],
        "dead_lettered": _dead_letters() - dead_before,
        "redelivered_and_skipped": report["duplicate_executions_skipped"],
        "emails_sent_twice": sum(count - 1 for task_id, count in sent.items() if task_id in submitted and count > 1),
    }
    _record(counts)
    assert steady["accepted"] > 0
    assert counts["refused"] == 0, steady["errors"]
    assert counts["lost"] == 0, report["missing_sample"]
    assert counts["dead_lettered"] == 0
    assert counts["emails_sent_twice"] == 0
    assert report["states"] == {"SUCCESS": report["submitted"]}
    return counts


def _assert_cluster_of(nodes: int) -> None:
    expected = {f"rabbit@{name}" for name in KIT.containers("rabbitmq")}
    assert len(expected) == nodes
    status = _cluster()
    assert set(status["disk_nodes"]) == expected
    assert set(status["running_nodes"]) == expected
    for queue in _quorum_queues():
        assert set(queue["members"]) == expected, f"{queue['name']}: {queue['members']}"
        assert set(queue["online"]) == expected, f"{queue['name']}: {queue['online']}"
    for name in KIT.containers("rabbitmq"):
        users = json.loads(sh(name, "rabbitmqctl -q --formatter json list_users"))
        assert sorted(user["user"] for user in users) == ["admin", "celery", "celery-api", "celery-mover"], name


def test_the_deployment_starts_with_one_node():
    RESULTS.unlink(missing_ok=True)
    _assert_cluster_of(1)


def test_growing_from_1_to_3_nodes_under_load_costs_nothing():
    _resize_under_load(3)
    _assert_cluster_of(3)


def test_growing_from_3_to_5_nodes_under_load_costs_nothing():
    _resize_under_load(5)
    _assert_cluster_of(5)


def test_shrinking_from_5_to_3_nodes_under_load_costs_nothing():
    _resize_under_load(3)
    _assert_cluster_of(3)
    assert KIT.containers("rabbitmq") == [KIT.container("rabbitmq", n) for n in (1, 2, 3)]
