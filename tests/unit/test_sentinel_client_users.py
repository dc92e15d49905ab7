"""Sentinel's client users: the app finds the primary through the Sentinels as itself, and may do nothing else there.

A real redis-server and a real Sentinel run on loopback. The Sentinel knows
the app's user with the role's own rules (roles/redis/vars/main.yml,
redis_sentinel_client_rules), written as the role writes them: in its
first file, or given at runtime with ACL SETUSER (both must give the same
user, or every converge would report a change). The app's URL is the one
the kit writes (plugins/filter/kit_urls.py: sentinel_user=, no Sentinel
password).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
import redis
import yaml
from loopback import free_port, program, redis_server_argv, serving

from celery_kit import redisurl

ROOT = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location("kit_urls", ROOT / "plugins/filter/kit_urls.py")
kit_urls = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(kit_urls)
MASTER = "celery-kit"
APP_PASSWORD = "app-password-0123456789"  # noqa: S105 (a test value)
SENTINEL_PASSWORD = "sentinel-password-0123456789"  # noqa: S105
ROLE_VARS = yaml.safe_load((ROOT / "roles/redis/vars/main.yml").read_text())
RULES = " ".join(ROLE_VARS["redis_sentinel_client_rules"].split())
APP_ACL = f"reset on #{hashlib.sha256(APP_PASSWORD.encode()).hexdigest()} {RULES}"
REFUSED = [
    ("SENTINEL", "FAILOVER", MASTER),
    ("SENTINEL", "SET", MASTER, "quorum", "2"),
    ("SENTINEL", "REMOVE", MASTER),
    ("SENTINEL", "MONITOR", "rogue", "127.0.0.1", "1", "1"),
    ("SENTINEL", "RESET", "*"),
    ("SENTINEL", "FLUSHCONFIG"),
    ("SENTINEL", "CONFIG", "SET", "resolve-hostnames", "yes"),
    ("ACL", "SETUSER", "app", "+@all"),
    ("SHUTDOWN",),
    ("PUBLISH", "__sentinel__:hello", "forged"),
]


def sentinel_config(directory: Path, port: int, server_port: int, with_user: bool) -> Path:
    config = directory / f"sentinel-{port}.conf"
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        f"dir {directory}",
        f"requirepass {SENTINEL_PASSWORD}",
        f"sentinel sentinel-pass {SENTINEL_PASSWORD}",
        f"sentinel monitor {MASTER} 127.0.0.1 {server_port} 1",
    ]
    if with_user:
        lines.append(f"user app {APP_ACL}")
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory):
    """Ports of the Redis server and of two Sentinels; the first has the app's user in its file, the second not."""
    tmp = tmp_path_factory.mktemp("sentinel-users")
    server_port, by_file, by_command = free_port(), free_port(), free_port()
    server = redis_server_argv(
        server_port, *("--user", "default", "off"), *("--user", "app", "on", f">{APP_PASSWORD}", "~*", "&*", "+@all")
    )
    sentinel = program("redis-server", "apt-get install redis-server")
    with (
        serving(server, server_port, tmp / "redis.log"),
        serving(
            [sentinel, str(sentinel_config(tmp, by_file, server_port, True)), "--sentinel"], by_file, tmp / "s1.log"
        ),
        serving(
            [sentinel, str(sentinel_config(tmp, by_command, server_port, False)), "--sentinel"],
            by_command,
            tmp / "s2.log",
        ),
    ):
        yield server_port, by_file, by_command


def as_default(port: int) -> redis.Redis:
    return redis.Redis(port=port, password=SENTINEL_PASSWORD, decode_responses=True)


def app_url(sentinel_port: int) -> str:
    urls = kit_urls.kit_redis_urls(APP_PASSWORD, "127.0.0.1", 0, ["127.0.0.1"], sentinel_port, MASTER, "", user="app")
    return urls[1]


def test_the_kits_url_logs_in_to_the_sentinels_as_the_app_and_holds_no_sentinel_password():
    target = redisurl.parse(app_url(26379))
    assert (target.sentinel_user, target.sentinel_password) == ("app", None)
    kwargs = redisurl.sentinel_kwargs(target)
    assert (kwargs["username"], kwargs["password"]) == ("app", APP_PASSWORD)
    assert SENTINEL_PASSWORD not in app_url(26379)


def test_a_url_with_both_logins_to_the_sentinels_is_refused():
    url = app_url(26379) + "&sentinel_password=x"
    with pytest.raises(redisurl.RedisUrlError, match="sentinel_user or sentinel_password"):
        redisurl.parse(url)


def test_the_app_finds_the_primary_through_the_sentinels_and_writes_there(sentinels):
    _, by_file, _ = sentinels
    client = redisurl.connect(app_url(by_file), socket_timeout=5)
    client.set("sentinel-users-test", "1")
    assert client.get("sentinel-users-test") == b"1"
    # It asked nothing the Sentinel refused (its ACL log names no command of the app's).
    assert as_default(by_file).execute_command("ACL", "LOG") == []


@pytest.mark.parametrize("command", REFUSED, ids=lambda command: " ".join(command[:2]))
def test_the_app_may_not_change_a_sentinel(sentinels, command):
    _, by_file, _ = sentinels
    target = redisurl.parse(app_url(by_file))
    sentinel = redis.Redis(host="127.0.0.1", port=by_file, **redisurl.sentinel_kwargs(target))
    with pytest.raises(redis.exceptions.NoPermissionError):
        sentinel.execute_command(*command)
    assert as_default(by_file).sentinel_master(MASTER)["quorum"] == 1


def rules_of(port: int) -> list[str]:
    """ACL GETUSER app, as the role compares it (sentinel-users.yml): its words, sorted.

    Each Sentinel process lists a user's commands in an order of its own.
    """
    described = as_default(port).execute_command("ACL", "GETUSER", "app")
    return sorted(str(described).replace("'", " ").replace(",", " ").split())


def test_the_first_file_and_acl_setuser_give_the_same_user(sentinels):
    _, by_file, by_command = sentinels
    assert as_default(by_command).execute_command("ACL", "GETUSER", "app") is None
    assert as_default(by_command).execute_command("ACL", "SETUSER", "app", *APP_ACL.split()) == "OK"
    assert rules_of(by_command) == rules_of(by_file)
    # Given again, the same line changes nothing (a converge reports no change).
    as_default(by_command).execute_command("ACL", "SETUSER", "app", *APP_ACL.split())
    assert rules_of(by_command) == rules_of(by_file)
