"""Faults that cost nothing: a RabbitMQ node stopped under load, Redis restarted
and gone for 30 s under load.

Each test submits a steady stream of tasks through the API while the fault
happens, then counts what a user would notice: submissions accepted and
refused, accepted tasks that never ran (lost), tasks that landed in the
dead-letter queue, and welcome emails written twice. Each prints its counts
(a line starting with FAULT COUNTS) and asserts the guarantee: nothing
refused, lost, dead-lettered or sent twice.
"""

from __future__ import annotations

import time

import pytest
from conftest import (
    APP_QUEUES,
    FAULT_BODIES,
    FAULT_RATE,
    Load,
    cluster_status,
    dead_letters,
    emails_written_twice,
    fault_report,
    node_name,
    rabbitmq_queues,
    worker_processes,
)


def _wait(what: str, timeout: float, ready) -> float:
    """Seconds until ready() holds; fails after timeout."""
    started = time.monotonic()
    while not ready():
        assert time.monotonic() - started < timeout, f"{what} did not happen within {timeout} s"
        time.sleep(1)
    return round(time.monotonic() - started, 1)


def _consuming_everywhere(survivor, processes: int) -> bool:
    queues = rabbitmq_queues(survivor)
    return all(queues[name]["consumers"] == processes for name in APP_QUEUES)


def _all_members_online(survivor, nodes: int) -> bool:
    queues = rabbitmq_queues(survivor)
    quorum = [queue for queue in queues.values() if queue["type"] == "quorum"]
    return all(len(queue["online"] or []) == nodes for queue in quorum)


def test_stopping_a_rabbitmq_node_under_load_refuses_and_loses_nothing(
    rabbitmq_nodes, api_host, group_hosts, redis_host
):
    if len(rabbitmq_nodes) < 3:
        pytest.skip(f"a cluster of {len(rabbitmq_nodes)} node(s) cannot lose one (RABBITMQ_HOSTS=3 makes a cluster)")
    nodes = len(rabbitmq_nodes)
    processes = worker_processes(group_hosts)
    # The node that leads the default queue: its loss moves a leader.
    leaders = {queue["name"]: queue["leader"] for queue in rabbitmq_queues(rabbitmq_nodes[0]).values()}
    victim = next(host for host in rabbitmq_nodes if node_name(host) == leaders["default"])
    survivor = next(host for host in rabbitmq_nodes if host is not victim)
    dead_before = dead_letters(survivor)

    load = Load(api_host, "node-stop")
    load.start(FAULT_RATE, FAULT_BODIES)
    time.sleep(10)
    victim.check_output("systemctl stop rabbitmq-server")
    stopped = time.monotonic()
    consumers_back = _wait(
        "every worker consuming every queue again", 90, lambda: _consuming_everywhere(survivor, processes)
    )
    time.sleep(20)
    victim.check_output("systemctl start rabbitmq-server")
    restarted = time.monotonic()
    _wait(
        "the node rejoining",
        120,
        lambda: node_name(victim) in cluster_status(survivor)["running_nodes"],
    )
    _wait("every quorum queue member online", 180, lambda: _all_members_online(survivor, nodes))
    members_back = round(time.monotonic() - restarted, 1)
    time.sleep(10)
    steady = load.stop()

    report = load.wait_until_all_ran(timeout=240)
    counts = fault_report(
        f"RabbitMQ node {node_name(victim)} stopped for {round(restarted - stopped)} s",
        steady,
        report,
        dead_letters(survivor) - dead_before,
    )
    print(
        f"consumers on every queue again after {consumers_back} s;"
        f" every quorum queue member online {members_back} s after the restart"
    )
    assert steady["accepted"] > 0
    assert counts["refused"] == 0, steady["errors"]
    assert counts["lost"] == 0, report["missing_sample"]
    assert counts["dead_lettered"] == 0
    assert report["states"] == {"SUCCESS": report["submitted"]}
    assert emails_written_twice(group_hosts, load) == 0
    assert set(cluster_status(survivor)["running_nodes"]) == {node_name(host) for host in rabbitmq_nodes}


def test_redis_restart_and_outage_under_load_lose_and_dead_letter_nothing(rabbitmq, api_host, redis_host, group_hosts):
    # A Redis-broker deployment is skipped by the rabbitmq fixture: there the
    # broker itself restarts, and appendfsync everysec may lose up to a
    # second of accepted tasks.
    dead_before = dead_letters(rabbitmq)
    load = Load(api_host, "redis-outage")
    load.start(FAULT_RATE, FAULT_BODIES)
    time.sleep(8)
    redis_host.check_output("systemctl restart redis-server")
    time.sleep(10)
    redis_host.check_output("systemctl stop redis-server")
    time.sleep(30)
    redis_host.check_output("systemctl start redis-server")
    time.sleep(10)
    steady = load.stop()

    report = load.wait_until_all_ran(timeout=240)
    counts = fault_report(
        "Redis restarted, then stopped for 30 s",
        steady,
        report,
        dead_letters(rabbitmq) - dead_before,
    )
    assert steady["accepted"] > 0
    assert counts["refused"] == 0, steady["errors"]
    assert counts["lost"] == 0, report["missing_sample"]
    assert counts["dead_lettered"] == 0
    assert report["states"] == {"SUCCESS": report["submitted"]}, "every accepted task must succeed"
    assert emails_written_twice(group_hosts, load) == 0
