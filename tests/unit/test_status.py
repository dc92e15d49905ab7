"""make status: the table it prints and its exit status."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import status

RABBITMQ_QUEUES = [
    {"name": "default", "type": "classic", "messages_ready": 3, "messages_unacknowledged": 2, "consumers": 4},
    {"name": "emails", "type": "classic", "messages_ready": 0, "messages_unacknowledged": 0, "consumers": 4},
    {"name": "dead-letter", "type": "quorum", "messages_ready": 1, "messages_unacknowledged": 0, "consumers": 0},
    {"name": "celeryev.1234", "type": "classic", "messages_ready": 0, "messages_unacknowledged": 0, "consumers": 1},
    {
        "name": "worker1@h.celery.pidbox",
        "type": "classic",
        "messages_ready": 0,
        "messages_unacknowledged": 0,
        "consumers": 1,
    },
]
ACTIVE = json.dumps({"worker1@h": [{"name": "default"}, {"name": "emails"}], "worker2@h": [{"name": "default"}]})
PERSISTENCE = {"loading": 0, "aof_enabled": 1, "aof_last_write_status": "ok", "mem_fragmentation_ratio": 1.2}


def _row(text, name):
    """The numeric columns of the table row of a queue."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return [int(cell) for cell in line[len(name) :].split()]
    raise AssertionError(f"no row for {name} in:\n{text}")


def _status(**overrides):
    base = {
        "environment": "local",
        "broker": "rabbitmq",
        "rabbitmq_queues": RABBITMQ_QUEUES,
        "active_queues": ACTIVE,
        "redis_persistence": PERSISTENCE,
        "redis_broker_keys": [],
    }
    return dict(base, **overrides)


def test_rabbitmq_table_shows_app_and_dead_letter_queues_only():
    text, code = status.report(_status())
    assert code == 0
    assert _row(text, "default") == [3, 2, 4]
    assert _row(text, "dead-letter") == [1, 0, 0]
    assert "dead-letter" in text
    assert "celeryev" not in text and "pidbox" not in text
    assert "Workers online: 2" in text
    assert "aof_enabled: 1" in text


def test_queue_without_consumer_fails():
    queues = [dict(q, consumers=0) if q["name"] == "emails" else q for q in RABBITMQ_QUEUES]
    text, code = status.report(_status(rabbitmq_queues=queues))
    assert code == 1
    assert "ERROR: no consumer on: emails" in text


def test_redis_broker_counts_priority_sub_queues_and_reserved_messages():
    keys = ["list default 2", "list default:9 3", "list emails 1", "hash unacked 5", "zset unacked_index 5"]
    text, code = status.report(_status(broker="redis", rabbitmq_queues=None, redis_broker_keys=keys))
    assert code == 0
    assert _row(text, "default") == [5, 0, 2]
    assert _row(text, "emails") == [1, 0, 1]
    assert _row(text, "(reserved by workers: kombu unacked)") == [0, 5, 0]


def test_aof_off_is_flagged():
    text, _ = status.report(_status(redis_persistence={"aof_enabled": 0}))
    assert "WARNING: the append-only file is off" in text


def test_unreadable_status_file_exits_2(tmp_path):
    assert status.main(["status.py", str(tmp_path / "missing.json")]) == 2
