"""Molecule scenario "migration": a Redis-broker deployment moved to a RabbitMQ
cluster of 3 nodes under load, with an interrupted move, and moved back.

The deployment (made by molecule's create and converge) runs on the Redis
broker. The tests then do what make migrate and make rollback-broker do, with
the same playbooks, while a submitter keeps posting to the API, and prove
that every accepted task id ran (each run is recorded in Redis db 2).
The tests run in file order; each builds on the one before.
"""

from __future__ import annotations

import json
import re
import time

from celery_kit.local import Deployment, deployment, put_file, sh

KIT = Deployment(deployment("migration"))
STATE = KIT.state
IDS = "/root/ids.txt"
STEADY_IDS = "/root/steady-ids.txt"
STOP = "/root/stop"
# Long enough that the countdown tasks are still due when each move ends:
# they must enter RabbitMQ's delay queues with the delay they have left
# (asserted), and the rollback's own ones must leave them again on the way
# back (asserted). In a clean-clone CI on 2 cores the forward test, a
# 3-node cluster installed, took 362 s, the rollback test (its move, then
# waiting until these were due at 900 s) 545 s. The forward move's
# countdown tasks go back too, or, on a slower machine, run on RabbitMQ
# when due: either way every one must run. The rollback test waits until
# they are due, so COUNTDOWN sets its length.
COUNTDOWN = 700
ROLLBACK_COUNTDOWN = 400
COUNTDOWN_LINES = (17, 116)  # where the 100 countdown tasks are in the ids file
RABBITMQ_NODES = 3
INTERRUPT_AFTER = 40
EMAILS = 200
container = KIT.container
playbook = KIT.playbook
load = KIT.load


def migrate(target: str, *args: str):
    return playbook("-e", f"migration_target={target}", *args, "playbooks/migrate-broker.yml")


def moved_count(output: str) -> int:
    """Messages the mover moved, from the playbook's final report."""
    match = re.search(r"Moved: (\d+)", output)
    assert match, "the migration printed no report"
    return int(match.group(1))


def delayed_count(output: str) -> int:
    """Countdown tasks the mover put into (or took out of) RabbitMQ's delay queues, from the report."""
    match = re.search(r"Countdown tasks still due, moved [^:]*: (\d+)", output)
    assert match, "the migration reported no countdown tasks"
    return int(match.group(1))


def api_broker() -> str:
    return json.loads(sh(container("api"), f"curl -s -m 5 {KIT.curl_tls} {KIT.api_url('/healthz')}"))["broker"]


def rabbitmq_app_messages() -> int:
    return sum(count for name, count in KIT.rabbitmq_messages().items() if name != "dead-letter")


def rabbitmq_delayed_messages() -> int:
    return sum(count for name, count in KIT.rabbitmq_messages().items() if name.startswith("celery_delayed_"))


def test_the_deployment_starts_on_redis():
    assert api_broker() == "redis"
    assert (STATE / "broker").read_text() == "redis"


def test_dry_run_prints_the_plan_and_changes_nothing():
    # A few tasks run first, so the plan has results and messages to count.
    KIT.start_steady_load("/root/dry-ids.txt", "/root/dry-stop", "/root/dry.json", 5, [{"task": "add", "args": [1, 1]}])
    time.sleep(3)
    KIT.stop_steady_load("/root/dry-stop", "/root/dry.json")
    result = migrate("rabbitmq", "-e", "migration_dry_run=true")
    assert result.returncode == 0
    assert "Moving the broker from redis to rabbitmq" in result.stdout
    assert "Dry run" in result.stdout
    assert api_broker() == "redis"
    assert (STATE / "broker").read_text() == "redis"
    assert not (STATE / "migration").exists()


def test_migration_under_load_with_an_interrupted_move_loses_no_task():
    # make migrate RABBITMQ_HOSTS=3, part 1: the RabbitMQ hosts of a
    # Redis-broker deployment (the playbook then forms the cluster).
    rabbitmq_hosts = playbook(
        "-e",
        '{"local_groups": ["rabbitmq"]}',
        "-e",
        f"local_rabbitmq_hosts={RABBITMQ_NODES}",
        "playbooks/local-hosts.yml",
    )
    assert rabbitmq_hosts.returncode == 0

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
    submitted = load("submit", "/root/spec.json", IDS)
    assert submitted["failures"] == {}, submitted

    # A worker process dies holding reserved and countdown tasks: they stay
    # in kombu's unacked hash, which celery migrate would leave behind.
    time.sleep(3)
    sh(container("workers", 2), "systemctl kill --signal=KILL celery-worker-default@1.service")

    # Submissions keep coming during the whole migration.
    KIT.start_steady_load(STEADY_IDS, STOP, "/root/steady.json", 10, [{"task": "add", "args": [1, 1]}])

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
    # All 100 countdown tasks are still due: they went into the cluster's
    # delay queues with the delay they had left, not into a worker's memory.
    assert delayed_count(finished.stdout) == 100
    assert rabbitmq_delayed_messages() >= 1
    assert "batch 3: moved" in finished.stdout
    assert "possible duplicates" in finished.stdout.lower()

    steady = KIT.stop_steady_load(STOP, "/root/steady.json")
    print("submitter during the migration:", steady)
    assert steady["accepted"] > 0
    assert steady["failures"] == {}, f"submissions failed during the switch: {steady['failures']}"

    assert api_broker() == "rabbitmq"
    assert (STATE / "broker").read_text() == "rabbitmq"
    assert not (STATE / "migration").exists()
    auth = "REDISCLI_AUTH=$(cat /etc/redis/admin-password)"
    dbsize = sh(container("redis"), f"{auth} redis-cli {KIT.redis_cli_tls} --user admin --no-auth-warning -n 0 DBSIZE")
    assert dbsize.strip() == "0", "broker keys are left in Redis db 0"

    # Every task but the countdown ones (still waiting in the delay queues,
    # checked after the rollback) ran.
    first, last = COUNTDOWN_LINES
    sh(container("api"), f"sed '{first},{last}d' {IDS} > {IDS}.now; cat {STEADY_IDS} >> {IDS}.now")
    report = KIT.wait_until_all_ran(f"{IDS}.now", timeout=420)
    print("executions:", report)
    assert report["unique"] == report["submitted"]
    assert report["missing"] == 0, f"{report['missing']} accepted tasks never ran, e.g. {report['missing_sample']}"

    # What a user would notice first: nobody got their welcome email twice.
    sent = KIT.welcome_emails_sent()
    assert len(sent) == EMAILS
    sent_twice = [task_id for task_id, count in sent.items() if count > 1]
    assert not sent_twice, f"{len(sent_twice)} welcome emails were sent twice, e.g. {sent_twice[:5]}"


def test_rollback_moves_back_to_redis_losing_no_task():
    # Countdown tasks due after the switch wait in RabbitMQ's delay queues
    # (and so do the 100 of the forward move); the mover takes them out of
    # there into Redis, their ETA kept, and Redis workers run them when due.
    spec = [{"task": "add", "args": [i, 2], "countdown": ROLLBACK_COUNTDOWN} for i in range(50)] + [
        {"task": "process_task", "args": [{"seconds": 0.2}]} for _ in range(300)
    ]
    put_file(container("api"), "/root/spec2.json", json.dumps(spec))
    sh(container("api"), f"rm -f {IDS}.2")
    assert load("submit", "/root/spec2.json", f"{IDS}.2")["failures"] == {}

    result = migrate("redis", "-e", "migration_batch_size=20")
    assert result.returncode == 0
    assert moved_count(result.stdout) >= 50
    assert delayed_count(result.stdout) >= 50, "the countdown tasks were not taken out of the delay queues"
    assert "batch 3: moved" in result.stdout
    assert api_broker() == "redis"
    assert (STATE / "broker").read_text() == "redis"
    assert rabbitmq_app_messages() == 0

    # Everything of both moves ran, the countdown tasks when due.
    for ids in (f"{IDS}.2", IDS):
        report = KIT.wait_until_all_ran(ids, timeout=COUNTDOWN + 300)
        print(f"executions of {ids} after the rollback:", report)
        assert report["missing"] == 0, f"{report['missing']} tasks never ran, e.g. {report['missing_sample']}"


def test_a_later_deploy_on_redis_keeps_the_rabbitmq_host_until_told_to_remove_it():
    # Its dead-letter queue may hold failed tasks: only RABBITMQ_HOSTS=0 removes it.
    hosts = playbook("playbooks/local-hosts.yml")
    assert hosts.returncode == 0
    running = sh(container("rabbitmq"), "systemctl is-active rabbitmq-server", check=False).strip()
    assert running == "active", f"the RabbitMQ host is gone or stopped after a deploy on Redis ({running!r})"

    removed = playbook("-e", "local_rabbitmq_hosts=0", "playbooks/local-hosts.yml")
    assert removed.returncode == 0
    left = KIT.containers("rabbitmq")
    assert left == [], f"RABBITMQ_HOSTS=0 left {left}"
