"""The primary of a Sentinel group hands its role over to a replica before it restarts, losing no write.

Three real redis-servers and three real Sentinels run on loopback, one of
each per address (127.0.0.1, .2 and .3, as three hosts would). The role's
own script (templates/redis-hand-over.sh.j2, rendered as the role renders
it) runs on the primary while a client writes without pause through the
Sentinels, retrying what fails. Every write the client was told succeeded
must be on the new primary; the old primary must follow it.
"""

from __future__ import annotations

import subprocess
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import jinja2
import pytest
import redis
from loopback import free_port, program, redis_server_argv, serving
from redis.sentinel import Sentinel

ROLE = Path(__file__).resolve().parents[2] / "roles" / "redis"
ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
MASTER = "celery-kit"
ADMIN_PASSWORD = "admin-pass-0123456789"  # noqa: S105 (a test value)
SENTINEL_PASSWORD = "sentinel-pass-0123456789"  # noqa: S105
HOLD_MS = 2500


def render_script(address: str, port: int, sentinel_port: int) -> str:
    environment = jinja2.Environment(  # noqa: S701 (a shell script, not HTML)
        loader=jinja2.FileSystemLoader(ROLE / "templates"), undefined=jinja2.StrictUndefined, trim_blocks=True
    )
    return environment.get_template("redis-hand-over.sh.j2").render(
        ansible_managed="test",
        redis_cli_tls_args=[],
        redis_admin_user="admin",
        redis_bind_address=address,
        redis_port=port,
        redis_sentinel_port=sentinel_port,
        redis_sentinel_master_name=MASTER,
        redis_sentinel_hosts=ADDRESSES,
        redis_handover_pause_milliseconds=HOLD_MS,
        redis_sentinel_down_after_milliseconds=3000,
    )


def admin(address: str, port: int) -> redis.Redis:
    return redis.Redis(host=address, port=port, username="admin", password=ADMIN_PASSWORD, socket_timeout=5)


def sentinel_client(address: str, port: int) -> redis.Redis:
    return redis.Redis(host=address, port=port, password=SENTINEL_PASSWORD, socket_timeout=5, decode_responses=True)


def wait_until(what: str, timeout: float, probe) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """The ports (the same on every address): Redis's and Sentinel's; the primary is 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("hand-over")
    port, sentinel_port = free_port(), free_port()
    with ExitStack() as stack:
        for address in ADDRESSES:
            replication = [] if address == ADDRESSES[0] else ["--replicaof", ADDRESSES[0], str(port)]
            # A replica writes the primary's snapshot to its directory: one each.
            data = tmp / f"data-{address}"
            data.mkdir()
            argv = redis_server_argv(
                port,
                *("--user", "default", "off"),
                *("--user", "admin", "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all"),
                "--masteruser",
                "admin",
                "--masterauth",
                ADMIN_PASSWORD,
                "--replica-announce-ip",
                address,
                *("--dir", str(data)),
                *replication,
            )
            argv[argv.index("--bind") + 1] = address
            stack.enter_context(serving(argv, port, tmp / f"redis-{address}.log", host=address))
        for address in ADDRESSES:
            config = tmp / f"sentinel-{address}.conf"
            config.write_text(
                f"port {sentinel_port}\nbind {address}\ndir {tmp}\nrequirepass {SENTINEL_PASSWORD}\n"
                f"sentinel sentinel-pass {SENTINEL_PASSWORD}\nsentinel announce-ip {address}\n"
                f"sentinel monitor {MASTER} {ADDRESSES[0]} {port} 2\n"
                f"sentinel auth-user {MASTER} admin\nsentinel auth-pass {MASTER} {ADMIN_PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER} 3000\nsentinel failover-timeout {MASTER} 15000\n"
            )
            argv = [program("redis-server", "apt-get install redis-server"), str(config), "--sentinel"]
            stack.enter_context(serving(argv, sentinel_port, tmp / f"sentinel-{address}.log", host=address))

        def every_sentinel_knows_the_group() -> bool:
            for address in ADDRESSES:
                state = dict(sentinel_client(address, sentinel_port).sentinel_master(MASTER))
                if int(state["num-slaves"]) != 2 or int(state["num-other-sentinels"]) != 2:
                    return False
            return True

        def replicas_online() -> bool:
            replication = admin(ADDRESSES[0], port).info("replication")
            return [replication.get(f"slave{n}", {}).get("state") for n in (0, 1)] == ["online", "online"]

        # A replica's first full sync waits for repl-diskless-sync-delay (5 s).
        wait_until("both replicas in sync with the primary", 40, replicas_online)
        wait_until("the Sentinels know the replicas and each other", 40, every_sentinel_knows_the_group)
        yield port, sentinel_port


def hand_over(address: str, port: int, sentinel_port: int) -> subprocess.CompletedProcess:
    script = render_script(address, port, sentinel_port)
    return subprocess.run(
        ["sh", "-c", script],
        input=f"{ADMIN_PASSWORD}\n{SENTINEL_PASSWORD}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def named_primary(sentinel_port: int) -> str:
    return sentinel_client(ADDRESSES[1], sentinel_port).sentinel_get_master_addr_by_name(MASTER)[0]


def test_a_replica_has_nothing_to_hand_over(group):
    port, sentinel_port = group
    result = hand_over(ADDRESSES[1], port, sentinel_port)
    assert result.returncode == 0, result.stderr
    assert "replica already" in result.stdout
    assert named_primary(sentinel_port) == ADDRESSES[0]


def test_the_primary_hands_over_under_writes_and_no_acknowledged_write_is_lost(group):
    port, sentinel_port = group
    sentinels = Sentinel(
        [(address, sentinel_port) for address in ADDRESSES],
        sentinel_kwargs={"password": SENTINEL_PASSWORD, "socket_timeout": 2},
    )
    client = sentinels.master_for(MASTER, username="admin", password=ADMIN_PASSWORD, socket_timeout=5)
    acknowledged: list[int] = []
    failed = 0
    stop = threading.Event()

    def write() -> None:
        nonlocal failed
        number = 0
        while not stop.is_set():
            try:
                client.rpush("writes", number)
            except redis.RedisError:
                failed += 1  # not acknowledged: sent again
                time.sleep(0.05)
                continue
            acknowledged.append(number)
            number += 1
            time.sleep(0.001)  # about a thousand writes a second, not a flood

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(1)
        # As the role does (hand-over.yml): asked again while the script
        # refuses (a replica still catching up after 1 s, say).
        attempts = 0
        while attempts < 5:
            attempts += 1
            result = hand_over(ADDRESSES[0], port, sentinel_port)
            if result.returncode == 0:
                break
            print(f"HAND-OVER attempt {attempts} refused: {result.stderr.strip()}")
            time.sleep(3)
        time.sleep(1)
    finally:
        stop.set()
        writer.join(timeout=30)

    print(
        f"HAND-OVER {result.stdout.strip()} (attempt {attempts}) | {len(acknowledged)} writes acknowledged,"
        f" {failed} tries failed"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    new_primary = named_primary(sentinel_port)
    assert new_primary in ADDRESSES[1:]
    assert f"handed over to {new_primary}" in result.stdout
    held = int(result.stdout.rsplit("held for ", 1)[1].split()[0])
    assert held <= HOLD_MS, f"the writes were held {held} ms, longer than the hold's bound"

    old = admin(ADDRESSES[0], port).info("replication")
    assert (old["role"], old["master_host"]) == ("slave", new_primary)
    stored = [int(value) for value in admin(new_primary, port).lrange("writes", 0, -1)]
    assert len(acknowledged) > 100, "the writer wrote through the hand-over"
    assert set(acknowledged) <= set(stored), "acknowledged writes are missing on the new primary"
    assert acknowledged[-1] in stored
