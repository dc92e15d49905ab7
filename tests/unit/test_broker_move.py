"""The broker mover, against messages captured from the app on real brokers.

The fixtures (tests/unit/fixtures/broker_move, made by capture.py there) hold
what the app put on Redis (kombu's lists and unacked hash) and on RabbitMQ for
the same task ids. The translations are checked against them and against
kombu's own code; the moves run against an in-memory stand-in for the few
Redis commands the mover uses and a stand-in RabbitMQ, so that interrupted
and crashed moves can be replayed exactly.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
import subprocess
import sys
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis
from kombu.transport.native_delayed_delivery import calculate_routing_key
from kombu.utils.json import dumps as kombu_dumps

from celery_kit import envelopes as env
from celery_kit import mover as bm
from celery_kit import moves as mv
from celery_kit import rabbit as rb
from celery_kit import redis_broker as rb_
from celery_kit.topology import broker_priority

FIXTURES = Path(__file__).parent / "fixtures" / "broker_move"
MOVE = [sys.executable, "-m", "celery_kit.cli", "move"]
ROOT = Path(__file__).resolve().parents[2]
QUEUES = (env.QueueSpec("default"), env.QueueSpec("emails"), env.QueueSpec("priority"))
SETTINGS = env.Settings("redis://:pw@redis:6379/0", "amqp://celery:pw@rabbitmq:5672/%2Fcelery", QUEUES, "dead-letter")
# Task ids of the fixtures submitted with an API priority (the others have none).
API_PRIORITY = {"002": 9, "003": 0, "004": 5, "008": 3, "104": 8, "106": 7, "108": 6}
# Headers that differ between two submissions of the same task.
PER_SUBMISSION_HEADERS = {"origin", "eta", "expires"}


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def short_id(headers: dict[str, Any]) -> str:
    return headers["id"][-3:]


def redis_fixture_envelopes() -> dict[str, tuple[str, dict[str, Any]]]:
    """Task id -> (list key, envelope) of the Redis fixture."""
    found = {}
    for key, raws in load("redis_ready.json")["lists"].items():
        for raw in raws:
            envelope = json.loads(raw)
            found[short_id(envelope["headers"])] = (key, envelope)
    return found


def amqp_fixture_messages() -> dict[str, dict[str, Any]]:
    return {short_id(m["properties"]["application_headers"]): m for m in load("amqp_ready.json")}


def expected_rabbit_priority(task: str) -> int:
    """API priority p is p on RabbitMQ; a task sent without one is 0 on Redis, the most urgent there, so 9."""
    return API_PRIORITY.get(task, 9)


# --------------------------------------------------------------------------
# Translations, against the captured messages and kombu's code


def test_fixtures_hold_every_kind_of_message():
    redis_side, amqp_side = redis_fixture_envelopes(), amqp_fixture_messages()
    assert set(redis_side) == set(amqp_side)
    assert len(redis_side) == 10
    headers = [envelope["headers"] for _, envelope in redis_side.values()]
    assert any(h["eta"] for h in headers) and any(h["retries"] for h in headers)
    assert any(h["parent_id"] for h in headers) and any(h["expires"] for h in headers)
    unacked = load("redis_unacked.json")["unacked"]
    assert len(unacked) == 4
    assert sum(1 for raw in unacked.values() if json.loads(raw)[0]["headers"]["eta"]) == 2


@pytest.mark.parametrize("task", sorted(redis_fixture_envelopes()))
def test_redis_message_becomes_what_the_app_publishes_to_rabbitmq(task):
    key, envelope = redis_fixture_envelopes()[task]
    native = amqp_fixture_messages()[task]
    queue = native["delivery_info"]["routing_key"]
    message = env.envelope_to_amqp(envelope, queue)

    # a chained signature in the body names the sending app's reply queue, as reply_to does
    reply_to, native_reply_to = envelope["properties"]["reply_to"], native["properties"]["reply_to"]
    assert message.body.replace(reply_to.encode(), native_reply_to.encode()) == base64.b64decode(native["body_base64"])
    assert (message.exchange, message.routing_key) == (native["delivery_info"]["exchange"], queue) == ("", queue)
    props, native_props = message.properties, native["properties"]
    assert set(props) == set(native_props)
    for name in ("content_type", "content_encoding", "correlation_id", "delivery_mode", "expiration"):
        assert props.get(name) == native_props.get(name), name
    assert props["priority"] == expected_rabbit_priority(task)
    assert props["priority"] == 9 - envelope["properties"]["priority"]
    assert props["reply_to"] == envelope["properties"]["reply_to"]
    headers, native_headers = props["application_headers"], native_props["application_headers"]
    assert headers == envelope["headers"]
    assert set(headers) == set(native_headers)
    for name in set(headers) - PER_SUBMISSION_HEADERS:
        assert headers[name] == native_headers[name], name
    assert bool(headers["eta"]) == bool(native_headers["eta"])
    assert key == env.redis_list_key(queue, envelope["properties"]["priority"])


@pytest.mark.parametrize("task", sorted(amqp_fixture_messages()))
def test_rabbitmq_message_becomes_what_the_app_puts_on_redis(task):
    native_key, native = redis_fixture_envelopes()[task]
    message = amqp_fixture_messages()[task]
    queue = message["queue"]
    body = base64.b64decode(message["body_base64"])
    envelope = env.amqp_to_envelope(body, message["properties"], queue, "tag-1")

    assert set(envelope) == set(native)
    assert set(envelope["properties"]) == set(native["properties"])
    reply_to, native_reply_to = message["properties"]["reply_to"], native["properties"]["reply_to"]
    assert base64.b64decode(envelope["body"]).replace(reply_to.encode(), native_reply_to.encode()) == base64.b64decode(
        native["body"]
    )
    for name in ("content-type", "content-encoding"):
        assert envelope[name] == native[name]
    props = envelope["properties"]
    assert props["delivery_info"] == native["properties"]["delivery_info"]
    assert props["delivery_tag"] == "tag-1"
    assert props["body_encoding"] == "base64"
    assert props["priority"] == 9 - message["properties"]["priority"]
    if task in API_PRIORITY:
        assert props["priority"] == native["properties"]["priority"] == broker_priority(API_PRIORITY[task], "redis")
        assert env.redis_list_key(queue, props["priority"]) == native_key
    for name in set(envelope["headers"]) - PER_SUBMISSION_HEADERS:
        assert envelope["headers"][name] == native["headers"][name], name


def test_round_trips_keep_the_message():
    for key, envelope in redis_fixture_envelopes().values():
        queue = key.split(":")[0]
        message = env.envelope_to_amqp(envelope, queue)
        back = env.amqp_to_envelope(message.body, message.properties, queue, envelope["properties"]["delivery_tag"])
        assert back == envelope
    for native in amqp_fixture_messages().values():
        body = base64.b64decode(native["body_base64"])
        envelope = env.amqp_to_envelope(body, native["properties"], native["queue"], "t")
        again = env.envelope_to_amqp(envelope, native["queue"])
        assert again.body == body
        assert again.properties == native["properties"]


def test_kombu_reads_the_envelope_as_the_message_that_was_sent():
    native = amqp_fixture_messages()["007"]
    body = base64.b64decode(native["body_base64"])
    envelope = env.amqp_to_envelope(body, native["properties"], "default", "tag-7")
    with Connection("memory://") as connection:
        channel = connection.default_channel
        message = channel.Message(json.loads(kombu_dumps(envelope)), channel=channel)
        assert message.body == body
        assert message.decode() == json.loads(body)
        assert message.headers["id"] == native["properties"]["application_headers"]["id"]
        assert message.headers["retries"] == 2
        assert message.delivery_tag == "tag-7"
        assert message.delivery_info == {"exchange": "", "routing_key": "default"}
        assert channel._get_message_priority(envelope) == 9


def test_list_keys_are_kombus_with_the_apps_transport_options():
    channel = SimpleNamespace(priority_steps=list(range(10)), sep=":")
    channel.priority = lambda n: kombu_redis.Channel.priority(channel, n)
    for priority in range(10):
        assert env.redis_list_key("priority", priority) == kombu_redis.Channel._q_for_pri(channel, "priority", priority)
    assert env.redis_list_keys("default") == ["default", *(f"default:{n}" for n in range(1, 10))]


@pytest.mark.parametrize("api", range(10))
def test_priority_translation_matches_the_api_on_both_brokers(api):
    on_redis, on_rabbitmq = broker_priority(api, "redis"), broker_priority(api, "rabbitmq")
    assert env.other_broker_priority(on_redis) == on_rabbitmq
    assert env.other_broker_priority(on_rabbitmq) == on_redis


@pytest.mark.parametrize(("stored", "moved"), [(None, 9), ("x", 9), (-3, 9), (10, 0), (255, 0), ("4", 5)])
def test_priority_is_clamped_as_kombu_clamps_it(stored, moved):
    assert env.other_broker_priority(stored) == moved


def test_unacked_entries_route_to_their_queue():
    routes = [rb_.unacked_route(raw) for raw in load("redis_unacked.json")["unacked"].values()]
    queues = sorted(env.queue_for_route(exchange, key, QUEUES) for _, exchange, key in routes)
    assert queues == ["default", "default", "priority", "priority"]
    assert env.queue_for_route("tasks", "emails", QUEUES) == "emails"
    assert env.queue_for_route("other", "emails", QUEUES) is None
    assert rb_.unacked_route(b"not json") is None


@pytest.mark.parametrize(
    "envelope",
    [
        "a string",
        {"body": "e30="},
        {"body": "not base64!", "properties": {"body_encoding": "base64"}},
        {"body": "x", "properties": {"body_encoding": "rot13"}},
        {"body": "x", "headers": [1], "properties": {}},
    ],
)
def test_what_is_not_a_kombu_message_is_refused(envelope):
    with pytest.raises(env.UnmovableMessage):
        env.envelope_to_amqp(envelope, "default")


def test_message_key_tells_a_retry_from_a_redelivery():
    headers = {"id": "abc", "retries": 0}
    assert env.message_key(b"body", headers) == env.message_key(b"body", dict(headers))
    assert env.message_key(b"body", headers) != env.message_key(b"body", {"id": "abc", "retries": 1})
    assert env.message_key(b"body", headers).startswith("abc:")


# --------------------------------------------------------------------------
# Configuration and command line


def write_config(tmp_path: Path, **overrides: Any) -> str:
    config = {
        "redis_url": SETTINGS.redis_url,
        "amqp_url": SETTINGS.amqp_url,
        "queues": [{"name": "default", "exchange": "tasks"}, {"name": "priority", "max_priority": 10}],
        "dead_letter_queue": "dead-letter",
    }
    config.update(overrides)
    path = tmp_path / "move.json"
    path.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return str(path)


def test_configuration_is_read(tmp_path):
    settings = bm.load_settings(write_config(tmp_path))
    assert settings.queues == (env.QueueSpec("default", "tasks"), env.QueueSpec("priority", "tasks"))
    assert settings.dead_letter_queue == "dead-letter"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"amqp_url": None}, "missing keys \\['amqp_url'\\]"),
        ({"brokr": 1}, "unknown keys \\['brokr'\\]"),
        ({"queues": []}, "queues must be"),
        ({"queues": [{"exchange": "tasks"}]}, "every queue needs a name"),
        ({"dead_letter_queue": "default"}, "dead-letter queue is not an app queue"),
    ],
)
def test_bad_configuration_is_refused_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(env.MoveError, match=message):
        bm.load_settings(write_config(tmp_path, **overrides))


def test_amqp_url_is_split_like_kombu_does():
    params = rb.amqp_params("amqp://celery:p%2Fw%40rd@10.0.0.5:5673/%2Fcelery")
    assert params["host"] == "10.0.0.5:5673"
    assert (params["userid"], params["password"], params["virtual_host"]) == ("celery", "p/w@rd", "/celery")
    assert rb.amqp_params("amqp://u:p@h")["virtual_host"] == "/"
    with pytest.raises(rb.BrokerError):
        rb.amqp_params("redis://h")


def test_module_runs_as_a_command_and_reports_errors_as_json(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "app"))
    missing = str(tmp_path / "missing.json")
    run = subprocess.run(
        [*MOVE, "plan", "--config", missing, "--direction", "redis-to-rabbitmq"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    line = json.loads(run.stdout)
    assert line["event"] == "error" and "cannot read configuration" in line["message"]
    assert "celery-kit move: error:" in run.stderr
    usage = subprocess.run(
        [*MOVE, "move", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    for flag in ("--config", "--direction", "--batch", "--limit", "--fail-after-publish", "TEST ONLY"):
        assert flag in usage.stdout


# --------------------------------------------------------------------------
# Stand-ins for Redis and RabbitMQ


class FakeRedis:
    """The Redis commands the mover uses, in memory (values are bytes, as redis-py returns them)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.clients: list[dict[str, Any]] = []
        self.connection_pool = SimpleNamespace(connection_kwargs={"db": 0})

    @staticmethod
    def _b(value: Any) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    def _list(self, key: str) -> list[bytes]:
        return self.data.setdefault(key, [])

    def _clean(self, key: str) -> None:
        if key in self.data and not self.data[key]:
            del self.data[key]

    # keys
    def exists(self, key: str) -> int:
        return int(key in self.data)

    def delete(self, *keys: str) -> int:
        return sum(1 for key in keys if self.data.pop(key, None) is not None)

    def scan_iter(self, match: str = "*", count: int | None = None):
        return [key.encode() for key in list(self.data) if fnmatch.fnmatchcase(key, match)]

    def expire(self, key: str, seconds: int) -> bool:
        return key in self.data

    def ttl(self, key: str) -> int:
        return 42 if key in self.data else -2

    def set(self, key: str, value: Any, nx: bool = False, ex: int | None = None) -> bool | None:
        if nx and key in self.data:
            return None
        self.data[key] = self._b(value)
        return True

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    # lists
    def llen(self, key: str) -> int:
        return len(self.data.get(key, []))

    def lrange(self, key: str, start: int, stop: int) -> list[bytes]:
        items = self.data.get(key, [])
        return items[start : None if stop == -1 else stop + 1]

    def lpush(self, key: str, *values: Any) -> int:
        for value in values:
            self._list(key).insert(0, self._b(value))
        return self.llen(key)

    def rpush(self, key: str, *values: Any) -> int:
        self._list(key).extend(self._b(value) for value in values)
        return self.llen(key)

    def rpop(self, key: str) -> bytes | None:
        items = self.data.get(key)
        value = items.pop() if items else None
        self._clean(key)
        return value

    def lmove(self, source: str, destination: str, src: str, dest: str) -> bytes | None:
        assert (src, dest) == ("RIGHT", "LEFT")
        value = self.rpop(source)
        if value is not None:
            self.lpush(destination, value)
        return value

    def lrem(self, key: str, count: int, value: Any) -> int:
        items, value = self.data.get(key, []), self._b(value)
        assert count == -1
        for i in range(len(items) - 1, -1, -1):
            if items[i] == value:
                del items[i]
                self._clean(key)
                return 1
        return 0

    # hash and sorted set (kombu's unacked and unacked_index)
    def hget(self, key: str, field: str) -> bytes | None:
        return self.data.get(key, {}).get(field)

    def hset(self, key: str, field: str, value: Any) -> int:
        self.data.setdefault(key, {})[field] = self._b(value)
        return 1

    def hdel(self, key: str, field: str) -> int:
        removed = int(self.data.get(key, {}).pop(field, None) is not None)
        self._clean(key)
        return removed

    def hkeys(self, key: str) -> list[bytes]:
        return [field.encode() for field in self.data.get(key, {})]

    def hscan_iter(self, key: str, count: int | None = None):
        return [(field.encode(), value) for field, value in list(self.data.get(key, {}).items())]

    def zadd(self, key: str, mapping: dict[str, float]) -> int:
        self.data.setdefault(key, {}).update(mapping)
        return len(mapping)

    def zrange(self, key: str, start: int, stop: int) -> list[bytes]:
        ordered = sorted(self.data.get(key, {}).items(), key=lambda item: item[1])
        return [member.encode() for member, _ in ordered][start : None if stop == -1 else stop + 1]

    def zrem(self, key: str, member: str) -> int:
        removed = int(self.data.get(key, {}).pop(member, None) is not None)
        self._clean(key)
        return removed

    # sets
    def sadd(self, key: str, *members: str) -> int:
        self.data.setdefault(key, set()).update(members)
        return len(members)

    def scard(self, key: str) -> int:
        return len(self.data.get(key, set()))

    def smismember(self, key: str, members: list[str]) -> list[bool]:
        return [member in self.data.get(key, set()) for member in members]

    # server
    def client_list(self) -> list[dict[str, Any]]:
        return [{"name": rb_.CLIENT_NAME, "db": "0", "cmd": "client|list", "addr": "me"}, *self.clients]

    # transactions: commands queue up until execute(), then run one after another
    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self, queued=True)

    def transaction(self, func, *watches: str, value_from_callable: bool = False):
        pipe = FakePipeline(self, queued=False)
        value = func(pipe)
        pipe.execute()
        return value if value_from_callable else None


class FakePipeline:
    def __init__(self, client: FakeRedis, queued: bool) -> None:
        self.client, self.queued, self.commands = client, queued, []

    def multi(self) -> None:
        self.queued = True

    def execute(self) -> list[Any]:
        results = [getattr(self.client, name)(*args) for name, args in self.commands]
        self.commands = []
        return results

    def __getattr__(self, name: str):
        def call(*args: Any):
            if not self.queued:
                return getattr(self.client, name)(*args)
            self.commands.append((name, args))
            return self

        return call


class FakeRabbit:
    """Queues of messages; get/ack as basic_get and basic_ack(multiple); a crash requeues what was not acked.

    The delay queues of Celery's delayed delivery exist beside the app's; a
    message published to the delay exchange lands in the longest one, keeping
    its routing key (the delay's bits, then its queue's key).
    """

    def __init__(self, queue_names: list[str]) -> None:
        queue_names = [*queue_names, *env.DELAY_QUEUES]
        self.queues: dict[str, deque] = {name: deque() for name in queue_names}
        self.consumers: dict[str, int] = dict.fromkeys(queue_names, 0)
        self.unacked: list[tuple[int, str, SimpleNamespace]] = []
        self.tag = 0
        self.publish_calls = 0

    def queue_state(self, name: str) -> tuple[int, int]:
        if name not in self.queues:
            raise env.MoveError(f"queue {name!r} does not exist on RabbitMQ")
        return len(self.queues[name]), self.consumers[name]

    def exchange_exists(self, name: str) -> bool:
        return name == env.DELAY_ENTRY_EXCHANGE

    def publish(self, messages: list[rb.AmqpMessage]) -> None:
        self.publish_calls += 1
        for message in messages:
            assert message.exchange in ("", env.DELAY_ENTRY_EXCHANGE)
            queue = env.DELAY_QUEUES[0] if message.exchange else message.routing_key
            self.queues[queue].append(
                SimpleNamespace(
                    body=message.body,
                    properties=dict(message.properties),
                    redelivered=False,
                    routing_key=message.routing_key,
                )
            )

    def get(self, queue: str) -> SimpleNamespace | None:
        if not self.queues[queue]:
            return None
        stored = self.queues[queue].popleft()
        self.tag += 1
        self.unacked.append((self.tag, queue, stored))
        info = {"redelivered": stored.redelivered, "exchange": "", "routing_key": getattr(stored, "routing_key", queue)}
        return SimpleNamespace(
            body=stored.body, properties=stored.properties, delivery_info=info, delivery_tag=self.tag
        )

    def ack_through(self, delivery_tag: int) -> None:
        self.unacked = [entry for entry in self.unacked if entry[0] > delivery_tag]

    def ack(self, delivery_tag: int) -> None:
        self.unacked = [entry for entry in self.unacked if entry[0] != delivery_tag]

    def crash(self) -> None:
        """The mover's connection died: RabbitMQ requeues what it had not acknowledged."""
        for _, queue, stored in reversed(self.unacked):
            stored.redelivered = True
            self.queues[queue].appendleft(stored)
        self.unacked = []

    def close(self) -> None:
        self.crash()

    def ids(self, queue: str) -> list[str]:
        return [short_id(m.properties["application_headers"]) for m in self.queues[queue]]


class Crashed(Exception):
    pass


@pytest.fixture
def crash(monkeypatch):
    def exit_now(code: int) -> None:
        raise Crashed(code)

    monkeypatch.setattr(mv.os, "_exit", exit_now)


def loaded_redis(unacked: bool = True) -> FakeRedis:
    """Redis db 0 as captured: the ready lists and, optionally, the entries a killed worker left."""
    client = FakeRedis()
    for key, raws in load("redis_ready.json")["lists"].items():
        client.data[key] = [raw.encode() for raw in raws]
    if unacked:
        dump = load("redis_unacked.json")
        for tag, raw in dump["unacked"].items():
            client.hset(rb_.UNACKED_KEY, tag, raw)
        client.zadd(rb_.UNACKED_INDEX_KEY, dict(dump["unacked_index"]))
    for key in ("_kombu.binding.tasks", "_kombu.binding.celeryev", "_kombu.binding_permanent.tasks"):
        client.sadd(key, "member")
    return client


def rabbit_from_fixture() -> FakeRabbit:
    rabbit = FakeRabbit(["default", "emails", "priority", "dead-letter"])
    for message in load("amqp_ready.json"):
        properties = message["properties"]
        rabbit.queues[message["queue"]].append(
            SimpleNamespace(body=base64.b64decode(message["body_base64"]), properties=properties, redelivered=False)
        )
    return rabbit


def forward(client: FakeRedis, rabbit: FakeRabbit, **options: Any) -> dict[str, Any]:
    return mv.RedisToRabbit(client, rabbit, SETTINGS, mv.MoveOptions(**options)).run()


def backward(client: FakeRedis, rabbit: FakeRabbit, **options: Any) -> dict[str, Any]:
    return mv.RabbitToRedis(client, rabbit, SETTINGS, mv.MoveOptions(**options)).run()


def journal_keys(client: FakeRedis) -> list[str]:
    return [key for key in client.data if key.startswith(rb_.JOURNAL_PREFIX)]


# --------------------------------------------------------------------------
# Redis to RabbitMQ


def test_move_to_rabbitmq_moves_lists_and_unacked_entries_in_serving_order():
    client, rabbit = loaded_redis(), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    summary = forward(client, rabbit)
    assert summary["found"] == summary["moved"] == 14
    assert (summary["remaining"], summary["possible_duplicates"], summary["unmovable"]) == (0, 0, 0)
    assert summary["per_queue"] == {"default": 8, "emails": 1, "priority": 5}
    # held by the killed worker first (delivery order), then sub-queue 0 before 1..9, each oldest first
    assert rabbit.ids("default") == ["105", "107", "001", "005", "007", "009", "011", "008"]
    assert rabbit.ids("priority") == ["106", "108", "002", "004", "003"]
    priorities = {
        short_id(m.properties["application_headers"]): m.properties["priority"] for m in rabbit.queues["priority"]
    }
    assert priorities == {"106": 7, "108": 6, "002": 9, "004": 5, "003": 0}
    assert all(m.properties["delivery_mode"] == 2 for q in rabbit.queues.values() for m in q)
    assert sorted(client.data) == ["_kombu.binding.celeryev", "_kombu.binding.tasks", "_kombu.binding_permanent.tasks"]


def test_batches_are_confirmed_together():
    client, rabbit = loaded_redis(unacked=False), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    forward(client, rabbit, batch=2)
    # default: 1 (default:6) + 5 in batches of 2; emails 1; priority 3 lists of 1
    assert rabbit.publish_calls == 1 + 3 + 1 + 3


def test_limit_stops_a_move_and_the_next_run_finishes_it():
    client, rabbit = loaded_redis(), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    first = forward(client, rabbit, limit=5, batch=2)
    assert (first["moved"], first["remaining"]) == (5, 9)
    assert journal_keys(client) == []
    second = forward(client, rabbit)
    assert (second["found"], second["moved"], second["remaining"], second["possible_duplicates"]) == (9, 9, 0, 0)
    moved = [task for queue in ("default", "emails", "priority") for task in rabbit.ids(queue)]
    assert len(moved) == len(set(moved)) == 14


def test_crash_after_publish_republishes_the_unconfirmed_and_loses_nothing(crash):
    client, rabbit = loaded_redis(unacked=False), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    with pytest.raises(Crashed):
        forward(client, rabbit, batch=3, fail_after_publish=3)
    # RabbitMQ has the three, and Redis still holds them in flight: nothing is lost
    assert rabbit.ids("default") == ["001", "005", "007"]
    assert client.llen(rb_.INFLIGHT_KEY.format(queue="default")) == 3
    counts = rb_.redis_counts(client, QUEUES)
    assert counts["inflight"] == 3 and rb_.redis_left(counts) == 10
    summary = forward(client, rabbit)
    assert (summary["found"], summary["moved"], summary["possible_duplicates"], summary["remaining"]) == (10, 10, 3, 0)
    assert rabbit.ids("default") == ["001", "005", "007", "001", "005", "007", "009", "011", "008"]
    assert journal_keys(client) == []


def test_crash_while_moving_unacked_entries_keeps_them_in_flight(crash):
    client, rabbit = loaded_redis(), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    with pytest.raises(Crashed):
        forward(client, rabbit, batch=3, fail_after_publish=3)
    # the first three held entries: default's two confirmed and dropped, priority's one confirmed, not dropped
    assert rabbit.ids("default") == ["105", "107"] and rabbit.ids("priority") == ["106"]
    assert client.llen(rb_.INFLIGHT_KEY.format(queue="priority")) == 1
    assert len(client.data[rb_.UNACKED_KEY]) == 1
    summary = forward(client, rabbit)
    assert (summary["found"], summary["moved"], summary["possible_duplicates"], summary["remaining"]) == (12, 12, 1, 0)
    assert rabbit.ids("priority")[:3] == ["106", "106", "108"]


def test_an_element_that_is_no_kombu_message_is_kept_aside():
    client, rabbit = loaded_redis(unacked=False), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    client.lpush("emails", b"not json at all")
    summary = forward(client, rabbit)
    assert (summary["moved"], summary["unmovable"], summary["remaining"]) == (10, 1, 1)
    assert client.data[rb_.UNMOVABLE_KEY] == [b"not json at all"]


def test_an_unacked_entry_of_another_queue_stays():
    client, rabbit = loaded_redis(unacked=False), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    client.hset(rb_.UNACKED_KEY, "t1", json.dumps([{"properties": {}}, "", "celery"]))
    summary = forward(client, rabbit)
    assert summary["remaining"] == 1
    assert rb_.redis_counts(client, QUEUES)["unacked_other"] == 1


@pytest.mark.parametrize(
    ("client_entry", "reason"),
    [
        ({"name": "", "db": "0", "cmd": "brpop", "addr": "10.0.0.7:4000"}, "Redis workers still consume"),
        ({"name": "", "db": "0", "cmd": "ping", "sub": "0", "psub": "1", "addr": "w"}, "Redis workers still consume"),
    ],
)
def test_move_to_rabbitmq_refuses_while_a_redis_worker_consumes(client_entry, reason):
    client, rabbit = loaded_redis(), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    client.clients.append(client_entry)
    with pytest.raises(env.MoveError, match=reason):
        forward(client, rabbit)
    assert rabbit.ids("default") == [] and client.llen("default") == 5


def test_consuming_connections_are_counted_per_host():
    client = FakeRedis()
    client.clients += [
        {"name": "", "db": "0", "cmd": "brpop", "addr": "10.0.0.7:1"},
        {"name": "", "db": "0", "cmd": "brpop", "addr": "10.0.0.7:2"},
        {"name": "", "db": "0", "cmd": "psubscribe", "psub": "1", "addr": "10.0.0.7:3"},
        {"name": "", "db": "0", "cmd": "brpop", "addr": "10.0.0.8:1"},
    ]
    assert rb_.redis_consumers(client) == ["10.0.0.7 (2 in BRPOP, 1 subscribed)", "10.0.0.8 (1 in BRPOP, 0 subscribed)"]


def test_the_sentinels_subscribed_to_their_hello_channel_do_not_block_the_move():
    client = FakeRedis()
    client.clients += [
        {"name": "sentinel-d2e9a633-pubsub", "db": "0", "cmd": "subscribe", "sub": "1", "addr": "10.0.0.20:1"},
        {"name": "sentinel-d2e9a633-cmd", "db": "0", "cmd": "ping", "addr": "10.0.0.20:2"},
    ]
    assert rb_.redis_consumers(client) == []


def test_a_producer_or_another_database_does_not_block_the_move():
    client = loaded_redis()
    client.clients += [
        {"name": "", "db": "0", "cmd": "lpush", "addr": "api"},
        {"name": "", "db": "1", "cmd": "brpop", "addr": "results"},
    ]
    assert rb_.redis_blockers(client) == []


def test_move_to_rabbitmq_refuses_while_kombu_restores_unacked_messages():
    client = loaded_redis()
    client.set(rb_.UNACKED_MUTEX_KEY, "token")
    with pytest.raises(env.MoveError, match="unacked_mutex is held"):
        forward(client, FakeRabbit(["default", "emails", "priority", "dead-letter"]))


def test_one_mover_at_a_time():
    client = loaded_redis()
    client.set(rb_.LOCK_KEY, "other-host:12:x")
    with pytest.raises(env.MoveError, match="another mover holds"):
        forward(client, FakeRabbit(["default", "emails", "priority", "dead-letter"]))
    assert client.llen("default") == 5


def test_move_to_rabbitmq_needs_the_queues_declared():
    with pytest.raises(env.MoveError, match="does not exist"):
        forward(loaded_redis(), FakeRabbit(["default", "emails", "dead-letter"]))


# --------------------------------------------------------------------------
# RabbitMQ to Redis


def kombu_serving_order(client: FakeRedis, queue: str) -> list[str]:
    """Pop a queue as kombu's Redis _get does: sub-queue 0 first, from the right."""
    order = []
    for key in env.redis_list_keys(queue):
        while (raw := client.rpop(key)) is not None:
            order.append(short_id(json.loads(raw)["headers"]))
    return order


def test_move_to_redis_writes_kombus_lists_in_fifo_order():
    client, rabbit = FakeRedis(), rabbit_from_fixture()
    summary = backward(client, rabbit)
    assert summary["found"] == summary["moved"] == 10
    assert (summary["remaining"], summary["skipped_duplicates"], summary["dead_letter"]) == (0, 0, 0)
    assert sorted(client.data) == ["default:6", "default:9", "emails:9", "priority", "priority:4", "priority:9"]
    assert kombu_serving_order(client, "default") == ["008", "001", "005", "007", "009", "011"]
    assert kombu_serving_order(client, "priority") == ["002", "004", "003"]
    assert journal_keys(client) == []


def test_move_to_redis_leaves_the_dead_letter_queue():
    client, rabbit = FakeRedis(), rabbit_from_fixture()
    rabbit.queues["dead-letter"].append(SimpleNamespace(body=b"x", properties={}, redelivered=False))
    summary = backward(client, rabbit)
    assert summary["dead_letter"] == 1 and len(rabbit.queues["dead-letter"]) == 1


def test_crash_between_redis_write_and_ack_moves_each_message_once(crash):
    client, rabbit = FakeRedis(), rabbit_from_fixture()
    with pytest.raises(Crashed):
        backward(client, rabbit, batch=4, fail_after_publish=4)
    rabbit.crash()
    assert sum(client.llen(key) for key in list(client.data) if not key.startswith(rb_.JOURNAL_PREFIX)) == 4
    assert len(rabbit.queues["default"]) == 6  # written to Redis but not acknowledged: delivered again
    summary = backward(client, rabbit)
    assert (summary["found"], summary["moved"], summary["skipped_duplicates"], summary["remaining"]) == (10, 6, 4, 0)
    assert kombu_serving_order(client, "default") == ["008", "001", "005", "007", "009", "011"]
    assert journal_keys(client) == []


def test_limit_on_the_way_back_keeps_the_journal_for_the_next_run():
    client, rabbit = FakeRedis(), rabbit_from_fixture()
    first = backward(client, rabbit, limit=3)
    assert (first["moved"], first["remaining"]) == (3, 7)
    assert client.scard(rb_.MOVED_KEY) == 3
    second = backward(client, rabbit)
    assert (second["moved"], second["remaining"]) == (7, 0)
    assert journal_keys(client) == []


def test_move_to_redis_refuses_while_rabbitmq_workers_consume():
    client, rabbit = FakeRedis(), rabbit_from_fixture()
    rabbit.consumers["priority"] = 2
    with pytest.raises(env.MoveError, match="RabbitMQ workers still consume: priority \\(2\\)"):
        backward(client, rabbit)
    assert client.data == {}


# --------------------------------------------------------------------------
# plan, verify, cleanup-redis through the command line


@pytest.fixture
def brokers(monkeypatch, tmp_path):
    """The CLI with the stand-ins; returns (run, client, rabbit)."""
    client, rabbit = loaded_redis(), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    monkeypatch.setattr(bm, "connect_redis", lambda url: client)
    monkeypatch.setattr(bm, "Rabbit", lambda url: rabbit)
    config = write_config(
        tmp_path, queues=[{"name": "default"}, {"name": "emails"}, {"name": "priority", "max_priority": 10}]
    )

    def run(capsys, *args: str) -> tuple[int, list[dict[str, Any]]]:
        command, *rest = args
        code = bm.main([command, "--config", config, *rest])
        return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    return run, client, rabbit


def test_plan_counts_everything_and_changes_nothing(brokers, capsys):
    run, client, _ = brokers
    before = json.dumps({key: sorted(map(str, value)) for key, value in client.data.items()})
    code, lines = run(capsys, "plan", "--direction", "redis-to-rabbitmq")
    assert code == 0 and len(lines) == 1
    summary = lines[0]
    assert (summary["event"], summary["command"], summary["direction"]) == ("summary", "plan", "redis-to-rabbitmq")
    assert summary["to_move"] == 14 and summary["blockers"] == []
    queues = summary["redis"]["queues"]
    assert queues["default"] == {
        "ready": 6,
        "ready_by_priority": {"0": 5, "6": 1},
        "unacked": 2,
        "eta": 2,
        "inflight": 0,
    }
    assert queues["priority"]["ready_by_priority"] == {"0": 1, "4": 1, "9": 1}
    assert queues["priority"]["unacked"] == 2 and queues["priority"]["eta"] == 1
    assert summary["redis"]["kombu_keys"] == [
        "_kombu.binding.celeryev",
        "_kombu.binding.tasks",
        "_kombu.binding_permanent.tasks",
        "unacked",
        "unacked_index",
    ]
    assert summary["rabbitmq"]["dead_letter"] == {"name": "dead-letter", "ready": 0, "consumers": 0}
    assert json.dumps({key: sorted(map(str, value)) for key, value in client.data.items()}) == before


def test_plan_names_what_blocks_a_move(brokers, capsys):
    run, client, rabbit = brokers
    client.clients.append({"name": "", "db": "0", "cmd": "brpop", "addr": "10.0.0.7:4000"})
    rabbit.consumers["default"] = 1
    _, (forward_plan,) = run(capsys, "plan", "--direction", "redis-to-rabbitmq")
    _, (backward_plan,) = run(capsys, "plan", "--direction", "rabbitmq-to-redis")
    assert forward_plan["blockers"] == ["Redis workers still consume: 10.0.0.7 (1 in BRPOP, 0 subscribed)"]
    assert backward_plan["blockers"] == ["RabbitMQ workers still consume: default (1)"]


def test_move_verify_cleanup_through_the_command_line(brokers, capsys):
    run, client, _ = brokers
    code, lines = run(capsys, "verify", "--direction", "redis-to-rabbitmq")
    assert code == 1 and lines[-1]["ok"] is False
    code, lines = run(capsys, "cleanup-redis")
    assert code == 1 and lines[-1]["deleted"] == [] and "move them first" in lines[-1]["problems"][0]

    code, lines = run(capsys, "move", "--direction", "redis-to-rabbitmq", "--batch", "4")
    assert code == 0
    assert [line["event"] for line in lines] == ["start", "summary"]
    summary = lines[-1]
    assert {"found", "moved", "possible_duplicates", "remaining", "rate", "elapsed", "per_queue"} <= set(summary)
    assert (summary["moved"], summary["remaining"]) == (14, 0)

    code, lines = run(capsys, "verify", "--direction", "redis-to-rabbitmq")
    assert code == 0 and lines[-1]["ok"] is True
    client.clients.append({"name": "", "db": "0", "cmd": "brpop", "addr": "10.0.0.7:4000"})
    code, lines = run(capsys, "cleanup-redis")
    assert code == 1 and lines[-1]["problems"] == ["Redis workers still consume: 10.0.0.7 (1 in BRPOP, 0 subscribed)"]
    client.clients.clear()
    client.set("taskapp:done:abc", "1")  # not a broker key: stays
    client.rpush("9f3d.reply.celery.pidbox", "late reply")
    code, lines = run(capsys, "cleanup-redis")
    assert code == 0
    assert lines[-1]["deleted"] == [
        "9f3d.reply.celery.pidbox",
        "_kombu.binding.celeryev",
        "_kombu.binding.tasks",
        "_kombu.binding_permanent.tasks",
    ]
    assert lines[-1]["kept"] == ["taskapp:done:abc"]

    code, lines = run(capsys, "verify", "--direction", "rabbitmq-to-redis")
    assert code == 1 and "14 message(s) left in the RabbitMQ app queues" in lines[-1]["problems"]
    code, lines = run(capsys, "move", "--direction", "rabbitmq-to-redis")
    assert code == 0 and lines[-1]["moved"] == 14
    code, lines = run(capsys, "verify", "--direction", "rabbitmq-to-redis")
    assert code == 0


def test_errors_are_one_json_line_and_exit_2(brokers, capsys):
    run, client, _ = brokers
    client.set(rb_.LOCK_KEY, "elsewhere:1:x")
    code, lines = run(capsys, "move", "--direction", "redis-to-rabbitmq")
    assert code == 2
    assert len(lines) == 1
    assert {key: lines[0][key] for key in ("event", "command", "direction")} == {
        "event": "error",
        "command": "move",
        "direction": "redis-to-rabbitmq",
    }
    assert lines[0]["message"] == (
        "another mover holds celery-kit:migration:lock (elsewhere:1:x); if it is gone, the lock expires in 42 s"
    )


def test_progress_lines_come_every_so_many_messages(monkeypatch, capsys):
    monkeypatch.setattr(mv, "PROGRESS_EVERY_MESSAGES", 4)
    client, rabbit = loaded_redis(), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    forward(client, rabbit, batch=2)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [line for line in lines if line["event"] == "progress"]
    assert [line["moved"] for line in progress] == [4, 8, 12]
    assert all({"found", "moved", "rate", "elapsed"} <= set(line) for line in progress)


# --------------------------------------------------------------------------
# Publisher confirms (py-amqp stand-in: acks arrive when events are drained)


class FakeAmqpChannel:
    def __init__(self, answer) -> None:
        self.events: dict[str, set] = {"basic_ack": set(), "basic_nack": set(), "basic_return": set()}
        self.published: list[tuple[Any, str, str, bool]] = []
        self.confirm_selects = 0
        self.answer = answer

    def confirm_select(self) -> None:
        self.confirm_selects += 1

    def basic_publish(self, message, exchange: str, routing_key: str, mandatory: bool) -> None:
        self.published.append((message, exchange, routing_key, mandatory))

    def fire(self, event: str, *args: Any) -> None:
        for callback in self.events[event]:
            callback(*args)


class FakeAmqpConnection:
    def __init__(self, channel: FakeAmqpChannel) -> None:
        self.channel = channel

    def drain_events(self, timeout: float) -> None:
        if not self.channel.answer(self.channel):
            raise TimeoutError


def fake_rabbit(answer) -> tuple[rb.Rabbit, FakeAmqpChannel]:
    rabbit = object.__new__(rb.Rabbit)
    channel = FakeAmqpChannel(answer)
    rabbit.channel, rabbit.connection = channel, FakeAmqpConnection(channel)
    rabbit._confirming, rabbit._sent, rabbit._unconfirmed, rabbit._failures = False, 0, set(), []
    return rabbit, channel


def some_messages(count: int) -> list[rb.AmqpMessage]:
    envelope = redis_fixture_envelopes()["004"][1]
    return [env.envelope_to_amqp(envelope, "priority")] * count


def test_a_batch_is_published_mandatory_and_waits_for_every_confirm():
    def ack_all_at_once(channel):
        channel.fire("basic_ack", len(channel.published), True)
        return True

    rabbit, channel = fake_rabbit(ack_all_at_once)
    rabbit.publish(some_messages(3))
    rabbit.publish(some_messages(2))
    assert channel.confirm_selects == 1
    assert [(exchange, key, mandatory) for _, exchange, key, mandatory in channel.published] == [
        ("", "priority", True)
    ] * 5
    message = channel.published[0][0]
    assert message.properties["priority"] == 5 and message.properties["delivery_mode"] == 2
    assert message.properties["application_headers"]["id"].endswith("004")


def test_single_acks_in_any_order_settle_a_batch():
    order = iter([2, 1, 3])

    def ack_one(channel):
        channel.fire("basic_ack", next(order), False)
        return True

    rabbit, _ = fake_rabbit(ack_one)
    rabbit.publish(some_messages(3))
    assert rabbit._unconfirmed == set()


@pytest.mark.parametrize(
    ("event", "message"),
    [("basic_nack", "refused \\(nack\\) 2 message"), ("basic_return", "could not route a message to 'priority'")],
)
def test_a_nack_or_an_unroutable_message_fails_the_batch(event, message):
    def refuse(channel):
        if event == "basic_return":
            channel.fire("basic_return", Exception("NO_ROUTE"), "", "priority", None)
        else:
            channel.fire("basic_nack", 2, True)
        channel.fire("basic_ack", 2, True)
        return True

    rabbit, _ = fake_rabbit(refuse)
    with pytest.raises(rb.BrokerError, match=message):
        rabbit.publish(some_messages(2))


def test_missing_confirms_time_out(monkeypatch):
    monkeypatch.setattr(rb, "CONFIRM_TIMEOUT_SECONDS", 0.05)
    rabbit, _ = fake_rabbit(lambda channel: False)
    with pytest.raises(rb.BrokerError, match="did not confirm 2 message"):
        rabbit.publish(some_messages(2))


# --------------------------------------------------------------------------
# Countdown tasks and RabbitMQ's delayed delivery


def eta_envelope(seconds_from_now: float, queue: str = "default") -> dict[str, Any]:
    """A captured ETA message of the Redis fixture, due seconds_from_now from now."""
    _, envelope = redis_fixture_envelopes()["005"]
    envelope = json.loads(json.dumps(envelope))
    envelope["headers"]["eta"] = (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat()
    envelope["properties"]["delivery_info"]["routing_key"] = queue
    return envelope


def test_a_redis_eta_task_still_due_enters_the_brokers_delay_queues_with_the_delay_it_has_left():
    now = datetime.now(UTC)
    envelope = eta_envelope(0)
    envelope["headers"]["eta"] = (now + timedelta(seconds=89.2)).isoformat()
    message = env.envelope_to_amqp(envelope, "emails", now=now)
    # What Celery publishes for a 90 s countdown: kombu's delay exchange and
    # the delay's 28 bits before the queue's key; the ETA header stays.
    assert message.exchange == "celery_delayed_27"
    assert message.routing_key == calculate_routing_key(90, "emails")
    assert message.properties["application_headers"]["eta"] == envelope["headers"]["eta"]


@pytest.mark.parametrize("seconds", [-30, 0, 0.4])
def test_a_redis_eta_task_that_is_due_goes_to_its_queue(seconds):
    now = datetime.now(UTC)
    envelope = eta_envelope(0)
    envelope["headers"]["eta"] = (now + timedelta(seconds=seconds)).isoformat()
    message = env.envelope_to_amqp(envelope, "default", now=now)
    expected = ("celery_delayed_27", calculate_routing_key(1, "default")) if seconds > 0 else ("", "default")
    assert (message.exchange, message.routing_key) == expected


def test_move_to_rabbitmq_puts_due_later_tasks_in_the_delay_queues():
    client = FakeRedis()
    client.data["default"] = [json.dumps(eta_envelope(600)).encode(), json.dumps(eta_envelope(-5)).encode()]
    rabbit = rabbit_from_fixture()
    before = len(rabbit.queues["default"])
    summary = forward(client, rabbit)
    assert summary["moved"] == 2
    (delayed,) = rabbit.queues[env.DELAY_QUEUES[0]]
    assert env.delayed_destination(delayed.routing_key) == "default"
    assert len(rabbit.queues["default"]) == before + 1


def test_move_to_redis_takes_the_waiting_countdown_tasks_out_of_the_delay_queues():
    client, rabbit = FakeRedis(), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    for queue in ("emails", "default"):
        envelope = eta_envelope(300, queue)
        rabbit.publish([env.envelope_to_amqp(envelope, queue)])
    summary = backward(client, rabbit)
    assert summary["moved"] == 2 and summary["remaining"] == 0 and summary["unroutable"] == 0
    assert all(not rabbit.queues[name] for name in env.DELAY_QUEUES)
    for queue in ("emails", "default"):
        (raw,) = [raw for key, raws in client.data.items() if key.split(":")[0] == queue for raw in raws]
        assert json.loads(raw)["headers"]["eta"], "the ETA stays: the Redis worker holds the task until it is due"
        assert json.loads(raw)["properties"]["delivery_info"]["routing_key"] == queue


def test_a_delayed_message_for_no_app_queue_stays_in_the_broker():
    client, rabbit = FakeRedis(), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    rabbit.publish([env.envelope_to_amqp(eta_envelope(300, "elsewhere"), "elsewhere")])
    summary = backward(client, rabbit)
    assert summary["unroutable"] == 1 and summary["moved"] == 0
    rabbit.close()
    assert len(rabbit.queues[env.DELAY_QUEUES[0]]) == 1


def test_move_to_redis_reads_the_queues_again_for_a_delayed_message_that_was_between_two_levels(monkeypatch):
    # While the mover reads the queues, a delayed message is on its way from
    # one delay level to the next (dead-lettered, not yet confirmed there):
    # it appears in a level already read. A second pass takes it.
    monkeypatch.setattr(mv, "SWEEP_PAUSE_SECONDS", 0)
    client, rabbit = FakeRedis(), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    rabbit.publish([env.envelope_to_amqp(eta_envelope(300, "emails"), "emails")])
    in_flight = env.envelope_to_amqp(eta_envelope(200, "default"), "default")
    original_get = rabbit.get
    arrived = []

    def get(queue: str):
        message = original_get(queue)
        if message is None and queue == SETTINGS.queues[-1].name and not arrived:
            arrived.append(queue)
            rabbit.publish([in_flight])  # lands in a delay queue read before
        return message

    monkeypatch.setattr(rabbit, "get", get)
    summary = backward(client, rabbit)
    assert arrived, "the message arrived during the first pass"
    assert summary["moved"] == 2 and summary["remaining"] == 0
    assert all(not rabbit.queues[name] for name in env.DELAY_QUEUES)


def test_move_to_redis_reads_the_queues_once_more_a_pause_after_a_pass_that_left_them_empty(monkeypatch):
    # The delayed message is still in flight between two levels when the
    # first pass ends (every queue reads empty then) and lands during the
    # pause: only a pass after the pause finds it.
    client, rabbit = FakeRedis(), FakeRabbit(["default", "emails", "priority", "dead-letter"])
    rabbit.publish([env.envelope_to_amqp(eta_envelope(300, "emails"), "emails")])
    in_flight = env.envelope_to_amqp(eta_envelope(200, "default"), "default")
    pauses = []

    def pause(seconds: float) -> None:
        if not pauses:
            rabbit.publish([in_flight])
        pauses.append(seconds)

    monkeypatch.setattr(mv.time, "sleep", pause)
    summary = backward(client, rabbit)
    assert pauses and pauses[0] == mv.SWEEP_PAUSE_SECONDS
    assert summary["moved"] == 2 and summary["remaining"] == 0
    assert all(not rabbit.queues[name] for name in env.DELAY_QUEUES)
