"""The RabbitMQ hosts form one cluster, and every app queue is replicated on each node."""

from __future__ import annotations

import json

from conftest import (
    APP_QUEUES,
    DEAD_LETTER_QUEUE,
    cluster_status,
    curl_tls,
    management_url,
    node_name,
    rabbitmq_queues,
)


def test_every_rabbitmq_host_is_a_running_node_of_one_cluster(rabbitmq_nodes):
    expected = {node_name(host) for host in rabbitmq_nodes}
    for host in rabbitmq_nodes:
        status = cluster_status(host)
        assert set(status["disk_nodes"]) == expected, f"{host.backend.hostname} sees {status['disk_nodes']}"
        assert set(status["running_nodes"]) == expected, f"{host.backend.hostname} sees {status['running_nodes']}"
        assert status["cluster_name"] == "celery"


def test_the_cluster_has_no_alarms_and_no_partitions(rabbitmq_nodes):
    status = cluster_status(rabbitmq_nodes[0])
    assert status["alarms"] == []
    assert not status["partitions"]
    for host in rabbitmq_nodes:
        assert host.run("rabbitmq-diagnostics -q check_local_alarms").rc == 0, host.backend.hostname


def test_every_node_runs_one_release_of_rabbitmq_4(rabbitmq_nodes):
    versions = cluster_status(rabbitmq_nodes[0])["versions"]
    assert set(versions) == {node_name(host) for host in rabbitmq_nodes}
    releases = {entry["rabbitmq_version"] for entry in versions.values()}
    assert len(releases) == 1, releases
    assert releases.pop().startswith("4.0.")


def test_app_queues_are_quorum_queues_with_a_member_online_on_every_node(rabbitmq_nodes):
    nodes = {node_name(host) for host in rabbitmq_nodes}
    queues = rabbitmq_queues(rabbitmq_nodes[0])
    for name in (*APP_QUEUES, DEAD_LETTER_QUEUE):
        assert queues[name]["type"] == "quorum", name
        assert set(queues[name]["members"]) == nodes, f"{name}: {queues[name]['members']}"
        assert set(queues[name]["online"]) == nodes, f"{name}: {queues[name]['online']}"


def test_only_the_declared_users_exist_on_every_node(rabbitmq_nodes):
    for host in rabbitmq_nodes:
        users = host.check_output("rabbitmqctl -q list_users --formatter json")
        declared = ["admin", "celery", "celery-api", "celery-mover"]
        assert sorted(user["user"] for user in json.loads(users)) == declared, host.backend.hostname


def test_no_default_or_empty_account_logs_in(rabbitmq_nodes):
    for host in rabbitmq_nodes:
        for credentials in ("none:none", "guest:guest", "admin:", "admin:admin"):
            status = host.check_output(
                f"curl -s -o /dev/null -w %s {curl_tls()}-u %s %s",
                "%{http_code}",
                credentials,
                management_url(host, "/api/whoami"),
            )
            assert status == "401", f"{credentials} on {host.backend.hostname} answered {status}"
