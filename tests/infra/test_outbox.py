"""The durable outbox: the whole broker down under load, and the api host restarted meanwhile.

Every RabbitMQ node is stopped while tasks stream in through the API. The
API keeps answering 202: the submissions wait in the api host's outbox
(GET /tasks/<id> says STORED). The api host is then restarted (systemctl
reboot) with the outbox full of them; it comes back holding every one, and
accepts new submissions, still with the broker down. Once the nodes are
back the relay sends them all, and every accepted task runs once. The test
prints its counts (FAULT COUNTS) and asserts the guarantee: nothing refused,
lost, dead-lettered or sent twice, and the outbox empty at the end.

The load runs on the api host, so nothing is submitted while that host
itself restarts (a client would reach another api host meanwhile).
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import (
    FAULT_BODIES,
    FAULT_RATE,
    Load,
    api_call,
    api_url,
    curl_tls,
    dead_letters,
    emails_written_twice,
    fault_report,
    node_name,
    rabbitmq_queues,
    wait_until,
)

APP_RUN = "/opt/celery-app/bin/celery-app-run"
BOOT_MARKER = "/run/outbox-test-before-restart"


def outbox_status(api_host) -> dict:
    return json.loads(api_host.check_output(f"{APP_RUN} celery-kit outbox status").strip().splitlines()[-1])


def _restart_phase(load: Load) -> None:
    """Let load.start() run again on the same ids file."""
    load.host.check_output(f"rm -f {load.stop_file} {load.output}")


def _all_quorum_members_online(node, nodes: int) -> bool:
    queues = rabbitmq_queues(node)
    return all(len(queue["online"] or []) == nodes for queue in queues.values() if queue["type"] == "quorum")


def _cluster_running(nodes) -> bool:
    """Every node runs in the cluster (False while the first one still boots and cannot answer)."""
    result = nodes[0].run("rabbitmqctl -q --formatter json cluster_status")
    if result.rc != 0:
        return False
    return set(json.loads(result.stdout)["running_nodes"]) == {node_name(node) for node in nodes}


def _api_answers(api_host) -> bool:
    result = api_host.run(f"curl -s -m 3 {curl_tls()}-o /dev/null -w '%{{http_code}}' {api_url('/healthz')}")
    return result.rc == 0 and result.stdout.strip() == "200"


@pytest.fixture
def cluster_started_afterwards(rabbitmq_nodes):
    """Whatever happens in the test, every node is started again (all at once) and running after it."""
    yield rabbitmq_nodes
    for node in rabbitmq_nodes:
        node.run("systemctl start --no-block rabbitmq-server")
    wait_until("every node running after the test", 300, lambda: _cluster_running(rabbitmq_nodes))


def test_the_whole_broker_down_and_the_api_host_restarted_refuse_and_lose_nothing(
    cluster_started_afterwards, rabbitmq_nodes, api_host, group_hosts
):
    nodes = len(rabbitmq_nodes)
    dead_before = dead_letters(rabbitmq_nodes[0])
    assert outbox_status(api_host)["depth"] == 0
    load = Load(api_host, "broker-outage")
    load.start(FAULT_RATE, FAULT_BODIES)
    try:
        time.sleep(5)
        for node in rabbitmq_nodes:
            node.check_output("systemctl stop rabbitmq-server")
        stopped = time.monotonic()
        wait_until("submissions stored in the outbox", 60, lambda: outbox_status(api_host)["depth"] > 0)
        time.sleep(15)
    finally:
        before_restart = load.stop()
    stored = outbox_status(api_host)
    last_id = api_host.check_output(f"tail -n 1 {load.ids}")
    status, reply = api_call(api_host, "GET", f"/tasks/{last_id}")
    assert (status, reply["state"]) == (200, "STORED"), reply

    # The api host restarts with its outbox full of accepted submissions.
    api_host.check_output(f"touch {BOOT_MARKER}")
    api_host.run("nohup sh -c 'sleep 1; systemctl reboot' >/dev/null 2>&1 &")
    wait_until(
        "the api host back from its restart", 180, lambda: not api_host.exists(BOOT_MARKER) and _api_answers(api_host)
    )
    after_restart = outbox_status(api_host)
    assert after_restart["depth"] == stored["depth"], "the outbox lost submissions across the restart"

    # Still no broker: the restarted host accepts and stores new submissions.
    _restart_phase(load)
    load.start(FAULT_RATE, FAULT_BODIES)
    try:
        time.sleep(10)
        # All at once: a node of a stopped cluster waits for its peers before it boots.
        for node in rabbitmq_nodes:
            node.check_output("systemctl start --no-block rabbitmq-server")
        restarted = time.monotonic()
        wait_until("every node running again", 300, lambda: _cluster_running(rabbitmq_nodes))
        wait_until(
            "every quorum queue member online", 180, lambda: _all_quorum_members_online(rabbitmq_nodes[0], nodes)
        )
        drained = wait_until("the relay emptying the outbox", 240, lambda: outbox_status(api_host)["depth"] == 0)
        drained_after = round(time.monotonic() - restarted, 1)
        time.sleep(5)
    finally:
        after_return = load.stop()

    report = load.wait_until_all_ran(timeout=300)
    steady = {
        "accepted": before_restart["accepted"] + after_return["accepted"],
        "refused": before_restart["refused"] + after_return["refused"],
        "errors": before_restart["errors"] + after_return["errors"],
    }
    counts = fault_report(
        f"every RabbitMQ node stopped for {round(restarted - stopped)} s, the api host restarted meanwhile",
        steady,
        report,
        dead_letters(rabbitmq_nodes[0]) - dead_before,
    )
    print(
        f"outbox: {stored['depth']} submissions held before the api host's restart, {after_restart['depth']} after;"
        f" emptied {drained_after} s after the nodes were started"
    )
    assert drained
    assert steady["accepted"] > stored["depth"] > 0
    assert counts["refused"] == 0, steady["errors"]
    assert counts["lost"] == 0, report["missing_sample"]
    assert counts["dead_lettered"] == 0
    assert report["states"] == {"SUCCESS": report["submitted"]}, "every accepted task must succeed"
    assert emails_written_twice(group_hosts, load) == 0
    assert outbox_status(api_host)["quarantined"] == 0


def test_a_memory_alarm_under_load_refuses_and_loses_nothing(rabbitmq_nodes, api_host, group_hosts):
    """RabbitMQ blocks every publisher while its memory alarm is on: the submissions wait in the outbox."""
    node = rabbitmq_nodes[0]
    watermark = node.check_output("rabbitmqctl -q eval 'vm_memory_monitor:get_vm_memory_high_watermark().'")
    dead_before = dead_letters(node)
    load = Load(api_host, "memory-alarm")
    load.start(FAULT_RATE, FAULT_BODIES)
    try:
        time.sleep(5)
        node.check_output("rabbitmqctl -q set_vm_memory_high_watermark absolute 1MB")
        raised = time.monotonic()
        try:
            wait_until("submissions stored in the outbox", 60, lambda: outbox_status(api_host)["depth"] > 0)
            time.sleep(20)
        finally:
            node.check_output(f"rabbitmqctl -q set_vm_memory_high_watermark {float(watermark):g}")
        cleared = time.monotonic()
        stored = outbox_status(api_host)["depth"]
        wait_until("the relay emptying the outbox", 120, lambda: outbox_status(api_host)["depth"] == 0)
        drained_after = round(time.monotonic() - cleared, 1)
        time.sleep(5)
    finally:
        steady = load.stop()

    report = load.wait_until_all_ran(timeout=240)
    counts = fault_report(
        f"RabbitMQ memory alarm for {round(cleared - raised)} s",
        steady,
        report,
        dead_letters(node) - dead_before,
    )
    print(f"outbox: {stored} submissions held when the alarm cleared, emptied {drained_after} s later")
    assert stored > 0
    assert counts["refused"] == 0, steady["errors"]
    assert counts["lost"] == 0, report["missing_sample"]
    assert counts["dead_lettered"] == 0
    assert report["states"] == {"SUCCESS": report["submitted"]}, "every accepted task must succeed"
    assert emails_written_twice(group_hosts, load) == 0
