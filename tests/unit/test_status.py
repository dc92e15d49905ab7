"""make status: the table it prints and its exit status."""

import json
import re

import pytest

from celery_kit import status

NODES = ["rabbit@r1", "rabbit@r2", "rabbit@r3"]


def _queue(name, *, ready=0, unacked=0, consumers=4, kind="quorum", online=NODES, leader="rabbit@r2"):
    members = NODES if kind == "quorum" else [leader]
    return {
        "name": name,
        "type": kind,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "consumers": consumers,
        "leader": leader,
        "members": members,
        "online": online if kind == "quorum" else "",
    }


RABBITMQ_QUEUES = [
    _queue("default", ready=3, unacked=2),
    _queue("emails"),
    _queue("dead-letter", ready=1, consumers=0),
    _queue("celeryev.1234", kind="classic", consumers=1),
    _queue("worker1@h.celery.pidbox", kind="classic", consumers=1),
    _queue("celery_delayed_0", ready=2, consumers=0),
    _queue("celery_delayed_5", ready=1, consumers=0),
]
CLUSTER = {
    "cluster_name": "celery",
    "disk_nodes": NODES,
    "running_nodes": NODES,
    "alarms": [],
    "partitions": {},
    "maintenance_status": {node: "not under maintenance" for node in NODES},
}
ACTIVE = json.dumps({"worker1@h": [{"name": "default"}, {"name": "emails"}], "worker2@h": [{"name": "default"}]})
PERSISTENCE = {"loading": 0, "aof_enabled": 1, "aof_last_write_status": "ok", "mem_fragmentation_ratio": 1.2}


def _row(text, name):
    """The cells of the table row of a queue after its name, numbers as numbers."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return [int(cell) if cell.isdigit() else cell for cell in line[len(name) :].split()]
    raise AssertionError(f"no row for {name} in:\n{text}")


def _status(**overrides):
    base = {
        "environment": "local",
        "broker": "rabbitmq",
        "rabbitmq_cluster": CLUSTER,
        "rabbitmq_queues": RABBITMQ_QUEUES,
        "active_queues": ACTIVE,
        "redis_persistence": PERSISTENCE,
        "redis_broker_keys": [],
    }
    return dict(base, **overrides)


def test_rabbitmq_table_shows_app_and_dead_letter_queues_with_type_leader_and_members():
    text, code = status.report(_status())
    assert code == 0, text
    assert _row(text, "default") == ["quorum", 3, 2, 4, "r2", "3/3"]
    assert _row(text, "dead-letter") == ["quorum", 1, 0, 0, "r2", "3/3"]
    assert "celeryev" not in text and "pidbox" not in text
    assert "Workers online: 2" in text
    assert "aof_enabled: 1" in text


def test_the_delay_queues_are_one_row_counting_the_waiting_countdown_tasks():
    text, _ = status.report(_status())
    assert _row(text, "(countdown tasks: 2 delay queues)") == ["quorum", 3, 0, "-", "-", "all"]
    assert "celery_delayed_0" not in text


def test_the_cluster_lists_its_nodes_alarms_and_partitions():
    text, _ = status.report(_status())
    assert "RabbitMQ cluster celery: 3 of 3 nodes running" in text
    assert "  rabbit@r3  running" in text
    assert "Alarms: none" in text and "Partitions: none" in text


def test_a_node_down_shows_and_fails():
    cluster = dict(CLUSTER, running_nodes=NODES[:2])
    queues = [dict(q, online=NODES[:2]) if q["type"] == "quorum" else q for q in RABBITMQ_QUEUES]
    text, code = status.report(_status(rabbitmq_cluster=cluster, rabbitmq_queues=queues))
    assert code == 1
    assert "2 of 3 nodes running" in text
    assert "rabbit@r3  DOWN" in text
    assert _row(text, "default")[-1] == "2/3"
    assert "ERROR: node down: rabbit@r3" in text


def test_an_alarm_fails():
    cluster = dict(CLUSTER, alarms=[{"node": "rabbit@r1", "resource": "memory"}])
    text, code = status.report(_status(rabbitmq_cluster=cluster))
    assert code == 1
    assert "ERROR: alarm:" in text and "memory" in text


def test_no_node_answering_fails():
    text, code = status.report(_status(rabbitmq_cluster=None, rabbitmq_queues=None))
    assert code == 1
    assert "ERROR: no RabbitMQ node answered" in text


def test_queue_without_consumer_fails():
    queues = [dict(q, consumers=0) if q["name"] == "emails" else q for q in RABBITMQ_QUEUES]
    text, code = status.report(_status(rabbitmq_queues=queues))
    assert code == 1
    assert "ERROR: no consumer on: emails" in text


def test_redis_broker_counts_priority_sub_queues_and_reserved_messages():
    keys = ["list default 2", "list default:9 3", "list emails 1", "hash unacked 5", "zset unacked_index 5"]
    text, code = status.report(
        _status(broker="redis", rabbitmq_cluster=None, rabbitmq_queues=None, redis_broker_keys=keys)
    )
    assert code == 0
    assert _row(text, "default") == [5, 0, 2]
    assert _row(text, "emails") == [1, 0, 1]
    assert _row(text, "(reserved by workers: kombu unacked)") == [0, 5, 0]


def test_aof_off_is_flagged():
    text, _ = status.report(_status(redis_persistence={"aof_enabled": 0}))
    assert "WARNING: the append-only file is off" in text


def test_unreadable_status_file_exits_2(tmp_path):
    assert status.main([str(tmp_path / "missing.json")]) == 2


def _outbox(**figures):
    return json.dumps({"enabled": True, "path": "/var/lib/celery-app/outbox/outbox.sqlite3", **figures})


def test_the_outbox_of_each_api_host_shows_depth_and_oldest_entry():
    outbox_status = _status(
        outboxes={
            "api-1": _outbox(depth=0, oldest_age_seconds=None, quarantined=0),
            "api-2": _outbox(depth=12, oldest_age_seconds=3.2, quarantined=0),
        }
    )
    text, code = status.report(outbox_status)
    assert code == 0
    assert re.search(r"api-1\s+0\s+-\s+0", text)
    assert re.search(r"api-2\s+12\s+3 s\s+0", text)


@pytest.mark.parametrize(
    ("figures", "problem"),
    [
        (_outbox(depth=40, oldest_age_seconds=300.0, quarantined=0), "waiting for 300 s"),
        (_outbox(depth=0, oldest_age_seconds=None, quarantined=2), "2 entries unreadable"),
        (json.dumps({"enabled": True, "error": "cannot read the outbox: file is not a database"}), "not a database"),
        ("", "no answer"),
    ],
)
def test_an_outbox_that_needs_a_look_fails(figures, problem):
    text, code = status.report(_status(outboxes={"api-1": figures}))
    assert code == 1
    assert problem in text


REDIS_NODES = [
    {"host": "redis-1", "role": "slave", "master_link_status": "up", "slave_repl_offset": 900,
     "master_last_io_seconds_ago": 1},
    {"host": "redis-2", "role": "master", "connected_slaves": 2, "master_repl_offset": 1000},
    {"host": "redis-3", "role": "slave", "master_link_status": "up", "slave_repl_offset": 1000,
     "master_last_io_seconds_ago": 0},
]  # fmt: skip


def test_several_redis_hosts_show_the_primary_and_each_replicas_lag():
    text, code = status.report(_status(redis_nodes=REDIS_NODES))
    assert code == 0, text
    assert "Redis replication (Sentinel):" in text
    assert _row(text, "redis-2") == ["primary", "-", 2, "-", "-"]
    assert _row(text, "redis-1") == ["replica", "up", "-", 100, 1]
    assert _row(text, "redis-3") == ["replica", "up", "-", 0, 0]
    assert "Redis persistence (primary):" in text


def test_a_replica_cut_from_its_primary_fails():
    nodes = [dict(REDIS_NODES[0], master_link_status="down"), *REDIS_NODES[1:]]
    text, code = status.report(_status(redis_nodes=nodes))
    assert code == 1
    assert "ERROR: Redis replica redis-1 is not connected to its primary (link down)" in text


def test_two_primaries_fail():
    nodes = [REDIS_NODES[1], dict(REDIS_NODES[1], host="redis-3")]
    text, code = status.report(_status(redis_nodes=nodes))
    assert code == 1
    assert "Redis has 2 primaries, not 1: redis-2, redis-3" in text


def test_one_redis_host_shows_no_replication():
    text, code = status.report(_status())
    assert code == 0
    assert "Redis replication" not in text
    assert "Redis persistence:" in text
