"""Redis: authentication required and every write in the append-only file."""

import time
import uuid

from conftest import redis_cli


def test_redis_requires_a_password(redis_host):
    result = redis_cli(redis_host, "PING", password=False)
    assert "NOAUTH" in result.stdout + result.stderr
    assert redis_cli(redis_host, "PING").stdout.strip() == "PONG"


def test_append_only_file_is_on(redis_host):
    assert redis_cli(redis_host, "CONFIG", "GET", "appendonly").stdout.split() == ["appendonly", "yes"]
    assert redis_cli(redis_host, "CONFIG", "GET", "appendfsync").stdout.split() == ["appendfsync", "everysec"]
    assert redis_cli(redis_host, "CONFIG", "GET", "maxmemory-policy").stdout.split() == [
        "maxmemory-policy",
        "noeviction",
    ]


def _aof_bytes(redis_host):
    return int(redis_host.check_output("cat /var/lib/redis/appendonlydir/*.incr.aof | wc -c"))


def test_writes_grow_the_append_only_file(redis_host):
    before = _aof_bytes(redis_host)
    key = f"test:aof:{uuid.uuid4().hex}"
    for index in range(20):
        redis_cli(redis_host, "SET", f"{key}:{index}", "x" * 100, db=2)
    time.sleep(1.5)  # appendfsync everysec
    after = _aof_bytes(redis_host)
    assert after >= before + 20 * 100
    redis_cli(redis_host, "DEL", *[f"{key}:{index}" for index in range(20)], db=2)
