"""Redis's users (roles/redis: redis_users, users.acl.j2) on a real redis-server.

The role's own template and default rules are rendered into an ACL file,
a redis-server is started with it on a free loopback port (Debian's
redis-server; .ci/run installs it), and each user does what its client
does on a deployment:

- app: the Redis broker (kombu: publish, consume, acknowledge, requeue),
  the result backend (Celery: store and read a result), the at-most-once
  guard's leases and the API gate's limiter (Lua scripts) all work, and
  FLUSHALL, CONFIG, SHUTDOWN, REPLICAOF, KEYS, ACL, CLIENT LIST and KILL
  are refused;
- mover: what the app may, and CLIENT LIST (the move's consumer check);
- exporter: INFO and the settings, no data;
- replica, sentinel: no data, no flush;
- no user name (the default user): nothing at all.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import jinja2
import loopback
import pytest
import redis
import yaml
from celery import Celery
from kombu import Connection
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_kit import apigate, guard

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "redis"
USERS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())["redis_users"]
PASSWORDS = {name: f"{name}-password-0123456789" for name in USERS}
REFUSED_TO_THE_APP = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "maxmemory"),
    ("CONFIG", "SET", "appendonly", "no"),
    ("SHUTDOWN", "NOSAVE"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("KEYS", "*"),
    ("CLIENT", "LIST"),
    ("ACL", "LIST"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("INFO",),
    ("BGSAVE",),
]


def render_users(default_open: bool = False, legacy_password: str = "", previous: dict | None = None) -> str:
    """users.acl as the role writes it (Ansible trims blocks; its hash and bool filters stood in for)."""
    environment = jinja2.Environment(  # noqa: S701 (a config file, not HTML; Ansible does not escape either)
        loader=jinja2.FileSystemLoader(ROLE / "templates"), undefined=jinja2.StrictUndefined, trim_blocks=True
    )
    environment.filters["hash"] = lambda value, algorithm: hashlib.new(algorithm, value.encode()).hexdigest()
    environment.filters["bool"] = bool
    return environment.get_template("users.acl.j2").render(
        ansible_managed="test",
        redis_users=USERS,
        redis_user_passwords=PASSWORDS,
        redis_default_user_open=default_open,
        redis_legacy_password=legacy_password,
        redis_user_previous_passwords=previous or {},
    )


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    directory = tmp_path_factory.mktemp("redis")
    acl = directory / "users.acl"
    acl.write_text(render_users())
    port = loopback.free_port()
    with loopback.serving(loopback.redis_server_argv(port, "--aclfile", str(acl)), port, directory / "redis.log"):
        yield port


def url(port: int, user: str, db: int) -> str:
    return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{port}/{db}"


def client(port: int, user: str, db: int = 0) -> redis.Redis:
    return redis.Redis.from_url(url(port, user, db))


def test_every_user_has_rules_and_nobody_logs_in_as_the_default_user():
    text = render_users()
    # Nobody logs in as default (no password, not nopass); it keeps its rights for the AOF replay.
    assert "user default on resetpass ~* &* +@all" in text
    for name, password in PASSWORDS.items():
        assert f"user {name} on #{hashlib.sha256(password.encode()).hexdigest()} " in text
        assert password not in text, "a password in clear in users.acl"


def test_during_an_upgrade_the_default_user_keeps_the_old_password():
    text = render_users(default_open=True, legacy_password="old-single-password")  # noqa: S106 (a test value)
    assert f"user default on #{hashlib.sha256(b'old-single-password').hexdigest()} " in text


def test_during_a_rotation_a_user_logs_in_with_its_old_or_its_new_password_then_with_the_new_only(tmp_path):
    old = {"app": "app-old-password-0123456789", "admin": "admin-old-password-0123456789"}
    acl = tmp_path / "users.acl"
    acl.write_text(render_users(previous=old))
    assert old["app"] not in acl.read_text()
    port = loopback.free_port()
    once = Retry(NoBackoff(), 0)
    with loopback.serving(loopback.redis_server_argv(port, "--aclfile", str(acl)), port, tmp_path / "redis.log"):
        for password in (old["app"], PASSWORDS["app"]):
            assert redis.Redis(port=port, username="app", password=password, retry=once).ping()
        # The rotation ends: the file without the old hashes, loaded by the
        # admin with its new password (the role's handler).
        acl.write_text(render_users())
        admin = redis.Redis(port=port, username="admin", password=PASSWORDS["admin"], retry=once)
        assert admin.execute_command("ACL", "LOAD") in (b"OK", "OK", True)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, username="app", password=old["app"], retry=once).ping()
        assert redis.Redis(port=port, username="app", password=PASSWORDS["app"], retry=once).ping()


def test_without_a_user_name_nothing_runs(port):
    once = Retry(NoBackoff(), 0)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, retry=once).get("anything")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password=PASSWORDS["admin"], retry=once).ping()


def test_the_app_runs_the_redis_broker(port):
    with Connection(url(port, "app", 0)) as connection:
        queue = connection.SimpleQueue("acl-test")
        queue.put({"n": 1})
        queue.put({"n": 2})
        first = queue.get(timeout=5)
        first.requeue()
        received = []
        for _ in range(2):
            message = queue.get(timeout=5)
            received.append(message.payload["n"])
            message.ack()
        queue.close()
    assert sorted(received) == [1, 2]


def test_the_app_stores_and_reads_results(port):
    app = Celery("acl-test", broker="memory://", backend=url(port, "app", 1))
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, 42, "SUCCESS")
    assert app.AsyncResult(task_id).get(timeout=5) == 42
    app.backend.forget(task_id)


def test_the_app_holds_the_guards_leases(port):
    task_id = uuid.uuid4().hex
    lease = guard.Lease(client(port, "app", 2), guard.RUNNING_KEY.format(task_id), guard.DONE_KEY.format(task_id))
    assert lease.claim()[0] == 2
    lease.finish("done", 60)
    again = guard.Lease(client(port, "app", 2), guard.RUNNING_KEY.format(task_id), guard.DONE_KEY.format(task_id))
    assert again.claim()[0] == 1


def test_the_app_counts_the_gates_limits_in_redis(port):
    limiter = apigate.Limiter(url(port, "app", 2), processes=1)
    caller = apigate.Caller(name="acl-test", limits=apigate.Limits.parse({}, "test"))
    limiter.take(caller, "submissions", rate=10, burst=10, cost=1, daily=100)
    assert limiter._redis_back_at == 0.0, "the gate fell back to counting in the process: Redis refused its script"


@pytest.mark.parametrize("command", REFUSED_TO_THE_APP, ids=" ".join)
def test_the_app_may_not_run_server_commands(port, command):
    with pytest.raises(redis.exceptions.NoPermissionError):
        client(port, "app").execute_command(*command)


def test_the_mover_sees_the_clients_but_may_not_flush(port):
    mover = client(port, "mover")
    assert any(entry.get("user") == "mover" for entry in mover.client_list())
    mover.set("acl-test:mover", "1")
    assert list(mover.scan_iter(match="acl-test:*"))
    for command in [("FLUSHALL",), ("CONFIG", "GET", "maxmemory"), ("SHUTDOWN", "NOSAVE")]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            mover.execute_command(*command)


def test_the_exporter_reads_the_servers_state_not_its_data(port):
    exporter = client(port, "exporter")
    assert "redis_version" in exporter.info()
    assert exporter.config_get("maxmemory")
    for command in [("GET", "acl-test:mover"), ("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1")]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter.execute_command(*command)


@pytest.mark.parametrize("user", ["replica", "sentinel"])
def test_the_replication_and_sentinel_users_touch_no_data(port, user):
    for command in [("GET", "acl-test:mover"), ("SET", "x", "1"), ("FLUSHALL",), ("KEYS", "*")]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client(port, user).execute_command(*command)
