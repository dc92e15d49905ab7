"""Molecule scenario "apps": a team's own Celery app on the platform, not the sample.

The deployment (molecule's create and converge, as make deploy
APP=examples/django-signup BROKER=redis) runs the Django example: module
signup, queues email and analytics, a worker pool for each. The tests sign
users up through HTTP, move the deployment to RabbitMQ with queued welcome
emails, and replay a dead-lettered welcome email once its cause is fixed,
with the same playbooks make runs (which read the app the deploy recorded).
The tests run in file order; each builds on the one before.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from celery_kit.local import Deployment, deployment, sh

KIT = Deployment(deployment("apps"))
MAIL_DIR = "/var/lib/celery-app/mail"
ANALYTICS = "/var/lib/celery-app/analytics.jsonl"
DEPLOYMENT_FILE = "/etc/celery-app/deployment.json"
QUEUED_DURING_MIGRATION = 20
container = KIT.container


def signup(username: str) -> tuple[int, dict]:
    body = json.dumps({"username": username, "email": f"{username}@signup.example", "password": "long-enough-1"})
    out = sh(
        container("api"),
        f"curl -s -m 20 {KIT.curl_tls} -o /tmp/reply -w '%{{http_code}}' -H 'Content-Type: application/json' "
        f"--data '{body}' {KIT.api_url('/signup')}; echo; cat /tmp/reply",
    )
    status, _, reply = out.partition("\n")
    return int(status), json.loads(reply or "{}")


def emails_to(username: str) -> int:
    """Welcome emails written for the user on the worker hosts (Django's file backend)."""
    pattern = f"^To: {username}@signup.example$"
    return sum(
        int(sh(name, f"cat {MAIL_DIR}/*.log 2>/dev/null | grep -c '{pattern}' || true").strip() or 0)
        for name in KIT.containers("workers")
    )


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(1)


def dead_letters() -> str:
    result = KIT.playbook("-e", "dlq_action=list", "-e", '{"dlq_selection": []}', "playbooks/dlq.yml")
    assert result.returncode == 0
    return result.stdout


def test_a_signup_through_http_sends_one_welcome_email_and_records_the_event():
    status, reply = signup("alice")
    assert status == 201, reply
    assert set(reply) >= {"user", "email_task", "analytics_task"}
    wait_for("alice's welcome email", lambda: emails_to("alice") == 1)
    events = "".join(sh(name, f"cat {ANALYTICS} 2>/dev/null || true") for name in KIT.containers("workers"))
    assert '"username": "alice"' in events


def test_a_bad_signup_gets_a_4xx_with_a_message():
    status, reply = signup("bad name with spaces")
    assert 400 <= status < 500, reply
    assert reply.get("error")


def test_each_pool_runs_the_tasks_of_its_own_queue():
    worker = container("workers")
    email_log = sh(worker, "journalctl -q --no-pager -u 'celery-worker-email@*'")
    analytics_log = sh(worker, "journalctl -q --no-pager -u 'celery-worker-analytics@*'")
    assert re.search(r"users\.tasks\.send_welcome_email\[[^]]+\] succeeded", email_log)
    assert re.search(r"users\.tasks\.track_signup\[[^]]+\] succeeded", analytics_log)
    # (Each worker's start banner lists every task of the app; a task id in
    # brackets is a task that worker received.)
    assert not re.search(r"users\.tasks\.track_signup\[", email_log)
    assert not re.search(r"users\.tasks\.send_welcome_email\[", analytics_log)


def test_the_migration_to_rabbitmq_moves_the_queued_welcome_emails():
    # Welcome emails queued in Redis with no worker running: the move must
    # carry them to RabbitMQ, where the restarted pools send each once.
    sh(container("workers"), "systemctl stop celery-workers.target 'celery-worker-*@*.service'")
    users = [f"queued{index}" for index in range(QUEUED_DURING_MIGRATION)]
    statuses = [signup(user)[0] for user in users]
    accepted = statuses.count(201)
    # What make migrate does on a local deployment: a RabbitMQ host first.
    rabbitmq_host = ("-e", '{"local_groups": ["rabbitmq"]}', "-e", "local_rabbitmq_hosts=1")
    created = KIT.playbook(*rabbitmq_host, "playbooks/local-hosts.yml")
    assert created.returncode == 0
    migrated = KIT.playbook("-e", "migration_target=rabbitmq", "playbooks/migrate-broker.yml")
    assert migrated.returncode == 0
    assert json.loads(sh(container("api"), f"cat {DEPLOYMENT_FILE}"))["broker"] == "rabbitmq"
    wait_for("every queued welcome email", lambda: all(emails_to(user) >= 1 for user in users), timeout=180)
    sent = {user: emails_to(user) for user in users}
    lost = sum(1 for count in sent.values() if count == 0)
    twice = sum(1 for count in sent.values() if count > 1)
    print(f"migration: accepted {accepted}, refused {len(users) - accepted}, lost {lost}, run twice {twice}")
    assert (accepted, lost, twice) == (len(users), 0, 0)
    status, _ = signup("after")
    assert status == 201
    wait_for("a welcome email sent through RabbitMQ", lambda: emails_to("after") == 1)


def test_a_dead_lettered_welcome_email_is_replayed_once_its_cause_is_fixed():
    worker = container("workers")
    # The mail transport breaks: the app's user can no longer write the
    # mail directory, so Django's file backend raises, Celery retries twice
    # and the kit's settings reject the task into the dead-letter queue.
    sh(worker, f"chown root:root {MAIL_DIR} && chmod 0755 {MAIL_DIR}")
    status, reply = signup("dora")
    assert status == 201
    task_id = reply["email_task"]
    wait_for("dora's welcome email in the dead-letter queue", lambda: task_id in dead_letters(), timeout=120)
    assert emails_to("dora") == 0
    # The cause is fixed; the operator replays that message (make dlq-replay ID=...).
    sh(worker, f"chown celeryapp:celeryapp {MAIL_DIR} && chmod 0750 {MAIL_DIR}")
    replayed = KIT.playbook(
        "-e", "dlq_action=replay", "-e", json.dumps({"dlq_selection": ["--id", task_id]}), "playbooks/dlq.yml"
    )
    assert replayed.returncode == 0
    assert task_id in replayed.stdout
    wait_for("dora's replayed welcome email", lambda: emails_to("dora") == 1)
    left = dead_letters()
    print(f"dead-letter: accepted 1, dead-lettered 1, replayed 1, lost 0, run twice {emails_to('dora') - 1}")
    assert task_id not in left
