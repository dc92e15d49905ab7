"""Molecule scenario "migration": a Redis-broker deployment moved to RabbitMQ
under load, with an interrupted move, and moved back.

The deployment (made by molecule's create and converge) runs on the Redis
broker. The tests then do what make migrate and make rollback-broker do, with
the same playbooks, while a submitter keeps posting to the API, and prove
that every accepted task id ran (each run is recorded in Redis db 2).
The tests run in file order; each builds on the one before.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = os.environ.get("KIT_LOCAL_DEPLOYMENT", "migration")
STATE = ROOT / ".state" / DEPLOYMENT
APP = "TASKAPP_CONFIG=/etc/taskapp/config.json PYTHONPATH=/opt/taskapp/app /opt/taskapp/venv/bin/python"
LOAD = "/root/load.py"
IDS = "/root/ids.txt"
STEADY_IDS = "/root/steady-ids.txt"
STOP = "/root/stop"
COUNTDOWN = 360
ROLLBACK_COUNTDOWN = 240
INTERRUPT_AFTER = 40
EMAILS = 200
# The ansible-playbook next to this interpreter (the kit's .venv), else PATH's.
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
if not Path(ANSIBLE_PLAYBOOK).exists():
    ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook") or "ansible-playbook"


def container(group: str, index: int = 1) -> str:
    return f"ck-{DEPLOYMENT}-{group}-{index}"


def sh(name: str, command: str, check: bool = True, timeout: float = 600) -> str:
    result = subprocess.run(
        ["docker", "exec", name, "bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{name}: {command} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def playbook(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """Run a playbook against this deployment, as make would; print its tail."""
    command = [ANSIBLE_PLAYBOOK, "-i", "inventories/local", "-e", "local_publish_ports=false", *args]
    env = dict(os.environ, KIT_LOCAL_DEPLOYMENT=DEPLOYMENT, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    print(f"$ {' '.join(args)}  (exit {result.returncode}, {time.monotonic() - started:.0f}s)")
    print("\n".join(result.stdout.splitlines()[-60:]))
    return result


def migrate(target: str, *args: str) -> subprocess.CompletedProcess:
    return playbook("-e", f"migration_target={target}", *args, "playbooks/migrate-broker.yml")


def moved_count(output: str) -> int:
    """Messages the mover moved, from the playbook's final report."""
    match = re.search(r"Moved: (\d+)", output)
    assert match, "the migration printed no report"
    return int(match.group(1))


def api_broker() -> str:
    return json.loads(sh(container("api"), "curl -s -m 5 http://127.0.0.1:8000/healthz"))["broker"]


def put_file(name: str, path: str, text: str) -> None:
    """Write a file into a container (docker cp: no argument-length limit)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as local:
        local.write(text)
        local.flush()
        os.chmod(local.name, 0o644)
        subprocess.run(["docker", "cp", local.name, f"{name}:{path}"], check=True)


def load(name: str, *args: str) -> dict:
    return json.loads(sh(name, f"{APP} {LOAD} {' '.join(args)}").strip().splitlines()[-1])


def wait_until_all_ran(ids_file: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        # On the api host: the ids are there, and its configuration names Redis db 2 too.
        report = load(container("api"), "check", ids_file)
        if report["missing"] == 0 or time.monotonic() > deadline:
            return report
        time.sleep(5)


def containers_named(part: str) -> list[str]:
    """Containers, running or not, whose name contains part."""
    return subprocess.run(
        ["docker", "ps", "--all", "--format", "{{.Names}}", "--filter", f"name={part}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def welcome_emails_sent() -> Counter:
    """Task ids in the mail sinks of every worker host, with how often each wrote one."""
    names = containers_named(f"ck-{DEPLOYMENT}-workers-")
    assert names, "no worker host found"
    lines = "".join(sh(name, "cat /var/lib/taskapp/mail-sink.log 2>/dev/null || true") for name in names)
    return Counter(json.loads(line)["task_id"] for line in lines.splitlines() if line.strip())


def rabbitmq_app_messages() -> int:
    out = sh(container("rabbitmq"), "rabbitmqctl -q --formatter json list_queues -p /celery name messages")
    return sum(queue["messages"] for queue in json.loads(out) if queue["name"] != "dead-letter")


@pytest.fixture(scope="module", autouse=True)
def load_script():
    for group in ("api",):
        script = str(Path(__file__).resolve().parents[1] / "load.py")
        subprocess.run(["docker", "cp", script, f"{container(group)}:{LOAD}"], check=True)


def test_the_deployment_starts_on_redis():
    assert api_broker() == "redis"
    assert (STATE / "broker").read_text() == "redis"


def test_dry_run_prints_the_plan_and_changes_nothing():
    # A few tasks run first, so the plan has results and messages to count.
    sh(container("api"), f"{APP} {LOAD} steady /root/dry-ids.txt /root/dry-stop 5 & sleep 3; touch /root/dry-stop")
    result = migrate("rabbitmq", "-e", "migration_dry_run=true")
    assert result.returncode == 0
    assert "Moving the broker from redis to rabbitmq" in result.stdout
    assert "Dry run" in result.stdout
    assert api_broker() == "redis"
    assert (STATE / "broker").read_text() == "redis"
    assert not (STATE / "migration").exists()


def test_migration_under_load_with_an_interrupted_move_loses_no_task():
    # make migrate, part 1: the RabbitMQ host of a Redis-broker deployment.
    rabbitmq_host = playbook(
        "-e", '{"local_groups": ["rabbitmq"]}', "-e", "local_rabbitmq_hosts=1", "playbooks/local-hosts.yml"
    )
    assert rabbitmq_host.returncode == 0

    # A backlog: long tasks that keep every worker slot busy, quick ones
    # behind them, emails, urgent ones, and countdown tasks due after the switch.
    spec = (
        [{"task": "process_task", "args": [{"seconds": 20}]} for _ in range(16)]
        + [{"task": "add", "args": [i, 1], "countdown": COUNTDOWN} for i in range(100)]
        + [{"task": "process_task", "args": [{"seconds": 0.2, "n": i}]} for i in range(1500)]
        + [{"task": "send_welcome_email", "args": [f"user{i}@example.com"]} for i in range(EMAILS)]
        + [{"task": "process_task", "args": [{"seconds": 0.1}], "queue": "priority", "priority": 9} for _ in range(200)]
    )
    put_file(container("api"), "/root/spec.json", json.dumps(spec))
    submitted = load(container("api"), "submit", "/root/spec.json", IDS)
    assert submitted["failures"] == {}, submitted

    # A worker process dies holding reserved and countdown tasks: they stay
    # in kombu's unacked hash, which celery migrate would leave behind.
    time.sleep(3)
    sh(container("workers", 2), "systemctl kill --signal=KILL taskapp-worker@1.service")

    # Submissions keep coming during the whole migration.
    steady_command = f"{APP} {LOAD} steady {STEADY_IDS} {STOP} 10 > /root/steady.json"
    sh(container("api"), f"rm -f {STOP}; nohup sh -c '{steady_command}' >/dev/null 2>&1 &")

    # The move dies after publishing some messages, before deleting them.
    failing_mover = json.dumps({"migration_mover_test_arguments": ["--fail-after-publish", str(INTERRUPT_AFTER)]})
    interrupted = migrate("rabbitmq", "-e", failing_mover)
    assert interrupted.returncode != 0, "the move was told to fail and did not"
    assert '"event": "crash"' in interrupted.stdout
    assert (STATE / "migration").read_text() == "rabbitmq"

    # Run again: it goes on from where it stopped.
    # Small batches: the move goes through several, with progress.
    finished = migrate("rabbitmq", "-e", "migration_batch_size=25")
    assert finished.returncode == 0
    # The countdown tasks (held by workers, then handed back) and the dead
    # worker's reservations were moved by the mover, not consumed on Redis.
    assert moved_count(finished.stdout) >= 100 - INTERRUPT_AFTER
    assert "batch 3: moved" in finished.stdout
    assert "possible duplicates" in finished.stdout.lower()

    sh(container("api"), f"touch {STOP}; sleep 3; cat /root/steady.json")
    steady = json.loads(sh(container("api"), "cat /root/steady.json"))
    print("submitter during the migration:", steady)
    assert steady["accepted"] > 0
    assert steady["failures"] == {}, f"submissions failed during the switch: {steady['failures']}"

    assert api_broker() == "rabbitmq"
    assert (STATE / "broker").read_text() == "rabbitmq"
    assert not (STATE / "migration").exists()
    auth = "REDISCLI_AUTH=$(awk '$1 == \"requirepass\" {print $2}' /etc/redis/redis.conf)"
    dbsize = sh(container("redis"), f"{auth} redis-cli -n 0 DBSIZE")
    assert dbsize.strip() == "0", "broker keys are left in Redis db 0"

    sh(container("api"), f"cat {STEADY_IDS} >> {IDS}")
    report = wait_until_all_ran(IDS, timeout=COUNTDOWN + 420)
    print("executions:", report)
    assert report["unique"] == report["submitted"]
    assert report["missing"] == 0, f"{report['missing']} accepted tasks never ran, e.g. {report['missing_sample']}"

    # What a user would notice first: nobody got their welcome email twice.
    sent = welcome_emails_sent()
    assert len(sent) == EMAILS
    sent_twice = [task_id for task_id, count in sent.items() if count > 1]
    assert not sent_twice, f"{len(sent_twice)} welcome emails were sent twice, e.g. {sent_twice[:5]}"


def test_rollback_moves_back_to_redis_losing_no_task():
    # Countdown tasks due after the switch: RabbitMQ workers hold them until
    # their warm shutdown hands them back, then the mover takes them to Redis.
    spec = [{"task": "add", "args": [i, 2], "countdown": ROLLBACK_COUNTDOWN} for i in range(50)] + [
        {"task": "process_task", "args": [{"seconds": 0.2}]} for _ in range(300)
    ]
    put_file(container("api"), "/root/spec2.json", json.dumps(spec))
    sh(container("api"), f"rm -f {IDS}.2")
    assert load(container("api"), "submit", "/root/spec2.json", f"{IDS}.2")["failures"] == {}

    result = migrate("redis", "-e", "migration_batch_size=20")
    assert result.returncode == 0
    assert moved_count(result.stdout) >= 50
    assert "batch 3: moved" in result.stdout
    assert api_broker() == "redis"
    assert (STATE / "broker").read_text() == "redis"
    assert rabbitmq_app_messages() == 0

    report = wait_until_all_ran(f"{IDS}.2", timeout=ROLLBACK_COUNTDOWN + 300)
    print("executions after the rollback:", report)
    assert report["missing"] == 0, f"{report['missing']} tasks never ran, e.g. {report['missing_sample']}"


def test_a_later_deploy_on_redis_keeps_the_rabbitmq_host_until_told_to_remove_it():
    # Its dead-letter queue may hold failed tasks: only RABBITMQ_HOSTS=0 removes it.
    hosts = playbook("playbooks/local-hosts.yml")
    assert hosts.returncode == 0
    running = sh(container("rabbitmq"), "systemctl is-active rabbitmq-server", check=False).strip()
    assert running == "active", f"the RabbitMQ host is gone or stopped after a deploy on Redis ({running!r})"

    removed = playbook("-e", "local_rabbitmq_hosts=0", "playbooks/local-hosts.yml")
    assert removed.returncode == 0
    left = containers_named(container("rabbitmq"))
    assert left == [], f"RABBITMQ_HOSTS=0 left {left}"
