"""Losing the Redis primary under load (several Redis hosts, Sentinel).

A steady stream of tasks goes through the API while the primary's host is
lost: its container is killed (no clean shutdown: Redis and its Sentinel
vanish with it, as with a host that crashed). The other
two Sentinels agree it is down and promote a replica; workers, the API and
the at-most-once guard ask the Sentinels for the new primary. The test
counts what a user would notice (FAULT COUNTS: accepted, refused, lost,
dead-lettered, run twice), checks that a result stored before the loss is
still readable, prints the failover time, then brings the old primary back
and checks that it rejoins as a replica, and that a converge afterwards
changes nothing and keeps the new primary.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from conftest import (
    FAULT_BODIES,
    FAULT_RATE,
    Load,
    changed_per_host,
    converge_redis_hosts,
    dead_letters,
    emails_written_twice,
    fault_report,
    host_addresses,
    redis_cli,
    sentinel_cli,
    sentinel_primary_address,
    submit,
    wait_for_result,
    wait_until,
)

# Sentinel's down-after-milliseconds is 3 s (roles/redis/defaults/main.yml):
# a failover must be done well within this.
FAILOVER_LIMIT_SECONDS = 30


@pytest.fixture
def redis_group(group_hosts):
    hosts = group_hosts("redis")
    if len(hosts) < 3:
        pytest.skip("this deployment has one Redis host: no Sentinel, no failover (REDIS_HOSTS=3)")
    return hosts


def _info(host, section: str) -> dict[str, str]:
    text = redis_cli(host, "INFO", section).stdout
    return dict(line.split(":", 1) for line in text.replace("\r", "").splitlines() if ":" in line)


def _replicas_in_sync(primary, replicas) -> bool:
    offset = int(_info(primary, "replication")["master_repl_offset"])
    for replica in replicas:
        info = _info(replica, "replication")
        if info.get("master_link_status") != "up" or int(info.get("slave_repl_offset", -1)) < offset:
            return False
    return True


def _container(host) -> str | None:
    return host.backend.name if host.backend.NAME == "docker" else None


def _lose(host) -> None:
    """The host is lost at once: its container killed (no clean shutdown), else its Redis and Sentinel stopped."""
    if container := _container(host):
        subprocess.run(["docker", "kill", container], check=True, capture_output=True)
    else:
        host.check_output("systemctl stop redis-sentinel redis-server")


def _bring_back(host) -> None:
    if container := _container(host):
        subprocess.run(["docker", "start", container], check=True, capture_output=True)
        wait_until("the host back", 120, lambda: host.run("systemctl is-active redis-server").rc == 0)
    else:
        host.check_output("systemctl start redis-server redis-sentinel")


def test_losing_the_redis_primary_under_load_promotes_a_replica_and_loses_nothing(
    redis_group, api_host, group_hosts, broker, pytestconfig
):
    old_address = sentinel_primary_address(redis_group)
    old_primary = next(host for host in redis_group if old_address in host_addresses(host))
    replicas = [host for host in redis_group if host is not old_primary]
    rabbitmq = group_hosts("rabbitmq")[0] if broker == "rabbitmq" else None
    dead_before = dead_letters(rabbitmq) if rabbitmq else 0

    # A result stored (and replicated) before the loss.
    kept_id = submit(api_host, {"task": "add", "args": [20, 22]})
    assert wait_for_result(api_host, kept_id)["result"] == 42
    wait_until("the replicas in sync with the primary", 60, lambda: _replicas_in_sync(old_primary, replicas))

    load = Load(api_host, "redis-failover")
    load.start(FAULT_RATE, FAULT_BODIES)
    try:
        time.sleep(8)
        _lose(old_primary)
        lost = time.monotonic()
        try:
            while (address := sentinel_primary_address(replicas)) in (old_address, None):
                assert time.monotonic() - lost < FAILOVER_LIMIT_SECONDS, "no replica was promoted"
                time.sleep(0.2)
            failover_seconds = round(time.monotonic() - lost, 1)
            new_primary = next(host for host in replicas if address in host_addresses(host))
            wait_until(
                "the promoted replica takes writes",
                30,
                lambda: _info(new_primary, "replication").get("role") == "master",
            )
            time.sleep(15)
        finally:
            # The old primary's host comes back: Sentinel makes it a replica.
            _bring_back(old_primary)
    finally:
        steady = load.stop()

    report = load.wait_until_all_ran(timeout=240)
    dead_lettered = dead_letters(rabbitmq) - dead_before if rabbitmq else report["states"].get("FAILURE", 0)
    counts = fault_report(
        f"Redis primary {old_primary.backend.hostname} lost (its host killed)",
        steady,
        report,
        dead_lettered,
    )
    print(f"FAILOVER new primary {new_primary.backend.hostname} after {failover_seconds} s")
    assert steady["accepted"] > 0
    assert counts["lost"] == 0, report["missing_sample"]
    assert counts["dead_lettered"] == 0
    assert counts["run_twice"] == 0
    assert report["states"] == {"SUCCESS": report["submitted"]}, "every accepted task must succeed"
    assert emails_written_twice(group_hosts, load) == 0
    if broker == "rabbitmq":
        # The API publishes to RabbitMQ: a Redis failover refuses nothing.
        assert counts["refused"] == 0, steady["errors"]
    kept = wait_for_result(api_host, kept_id)
    assert (kept["state"], kept["result"]) == ("SUCCESS", 42), "a result stored before the loss must stay readable"

    _check_the_old_primary_rejoins(old_primary, address)
    # A converge after the failover changes nothing and keeps the new primary.
    changes = changed_per_host(converge_redis_hosts(pytestconfig, timeout=900))
    redis_changes = {host: count for host, count in changes.items() if host != "localhost"}
    assert redis_changes and all(count == 0 for count in redis_changes.values()), changes
    assert sentinel_primary_address(redis_group) == address


def _check_the_old_primary_rejoins(old_primary, address: str) -> None:
    def rejoined() -> bool:
        info = _info(old_primary, "replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    wait_until("the old primary back as a replica of the new one", 120, rejoined)
    assert _info(old_primary, "replication")["master_host"] == address
    assert sentinel_cli(old_primary, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "celery-kit").stdout.split()[0] == address
