"""Turning AOF on for a Redis that already holds data loses nothing.

The test puts the Redis host in the state of a server deployed without AOF
(AOF off at runtime and in redis.conf) that then receives writes, runs the
redis role again through site.yml, and checks every write survived the
role's restart. A role that just rewrote redis.conf and restarted would load
the stale append-only file left from before and lose those writes.
"""

from pathlib import Path

from conftest import converge_redis_hosts, redis_cli

ROOT = Path(__file__).resolve().parents[2]
KEYS = 200


def _run_id(redis_host):
    info = redis_cli(redis_host, "INFO", "server").stdout
    return next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("run_id:"))


def test_enabling_aof_on_a_redis_holding_data_keeps_every_key(redis_host, pytestconfig):
    assert redis_cli(redis_host, "CONFIG", "SET", "appendonly", "no").stdout.strip() == "OK"
    redis_host.check_output("sed -i 's/^appendonly yes$/appendonly no/' /etc/redis/redis.conf")
    for index in range(KEYS):
        redis_cli(redis_host, "SET", f"test:aof-switch:{index}", str(index), db=3)
    run_id_before = _run_id(redis_host)

    converge_redis_hosts(pytestconfig, timeout=600)

    assert _run_id(redis_host) != run_id_before, "the role should have restarted Redis with the new config"
    assert redis_cli(redis_host, "CONFIG", "GET", "appendonly").stdout.split() == ["appendonly", "yes"]
    assert redis_cli(redis_host, "DBSIZE", db=3).stdout.strip() == str(KEYS)
    assert redis_cli(redis_host, "GET", f"test:aof-switch:{KEYS - 1}", db=3).stdout.strip() == str(KEYS - 1)
    redis_cli(redis_host, "FLUSHDB", db=3)
