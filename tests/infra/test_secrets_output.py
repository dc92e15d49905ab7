"""make rotate-secrets under load, and no secret in Ansible's output, also at the highest verbosity and with --diff.

One run checks both (one converge costs make test minutes). The files on
the hosts that hold the deployment's secrets (redis.conf, its users and the
admin's password, the exporter's settings, the app's settings, environment
and token) are changed by hand, as drift; then make rotate-secrets runs with
-vvv and --diff, as an operator debugging it would, under a steady load:
it puts every file back, with a new password wherever it holds one.

- Nothing is refused, lost or dead-lettered.
- The old passwords no longer log in to Redis and RabbitMQ, the new ones
  do: a script on a worker host tries the app's settings from before and
  after and prints only whether each logged in (no password leaves the
  hosts).
- What the run printed (every task's arguments and results, every diff)
  holds none of the secrets generated for the deployment, neither the old
  nor the new (the files of its state directory: the passwords, the Erlang
  cookie, the CA's private key, the API tokens), neither as they are nor
  base64-encoded (how slurp prints a file).

With a Sentinel group, the drifted redis.conf restarts every Redis server:
they must restart one at a time, each back in sync with the primary before
the next stops, and the primary must hand its role over first (SENTINEL
FAILOVER, no Sentinel seeing it down: no +odown).

The monitoring host rotates too (Flower logs in with the app's
passwords); molecule's quicker scrapes there go back to the defaults, which
no later check of the scenario depends on.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    APP_PYTHON,
    api_url,
    changed_per_host,
    converge,
    curl_tls,
    sentinel_cli,
    state_dir,
    under_counted_load,
)

ROOT = Path(__file__).resolve().parents[2]
DRIFT = "# drift made by tests/infra/test_secrets_output.py"
# Per host group, the files the roles write that hold a secret.
FILES_WITH_SECRETS = {
    "redis": [
        "/etc/redis/redis.conf",
        "/etc/redis/users.acl",
        "/etc/redis/admin-password",
        "/etc/default/prometheus-redis-exporter",
    ],
    "api": ["/etc/celery-app/deployment.json", "/etc/celery-app/app.env", "/etc/celery-app/kit-api-auth.header"],
    "workers": ["/etc/celery-app/deployment.json", "/etc/celery-app/app.env"],
}
SECRET_NAME = re.compile(r"(password|cookie|secret|token)", re.I)


def secret_value(text: str) -> str:
    """What to look for: a PEM key's longest base64 line, else the file's first word."""
    if "-----BEGIN" in text:
        return max((line for line in text.splitlines() if not line.startswith("-----")), key=len, default="")
    words = text.split()
    return words[0] if words else ""


def deployment_secrets() -> dict[str, str]:
    """The deployment's generated secrets, by path in its state directory.

    The passwords and the Erlang cookie, the CA's private key (ca/ca.key)
    and the API tokens (api-tokens/<name>).
    """
    state = state_dir()
    if not state.is_dir():
        pytest.skip(f"no state directory {state}: the secrets of this deployment are not on this controller")
    secrets = {}
    for path in sorted(state.rglob("*")):
        if not path.is_file():
            continue
        if SECRET_NAME.search(path.name) or path.suffix == ".key" or path.parent.name == "api-tokens":
            value = secret_value(path.read_text())
            if len(value) >= 12:
                secrets[str(path.relative_to(state))] = value
    return secrets


def printed_forms(secret: str) -> list[str]:
    """The secret as it is, and the part of its base64 that is the same wherever it sits in a file."""
    forms = [secret]
    raw = secret.encode()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        # The first group mixes in what came before, the last what follows.
        middle = encoded[4 if offset else 0 : -4]
        if len(middle) >= 12:
            forms.append(middle)
    return forms


def _drift(host, path: str) -> str | None:
    """Change the file by hand (valid still: a comment, or whitespace after JSON); its checksum before."""
    if not host.file(path).exists:
        return None
    checksum = host.file(path).sha256sum
    line = "" if path.endswith(".json") else DRIFT
    host.check_output(f"printf '\\n%s\\n' {line!r} >> {path}")
    return checksum


SETTINGS = "/etc/celery-app/deployment.json"
SETTINGS_BEFORE = "/root/rotation-settings-before.json"

# Run as the app on a worker host: does each settings file's Redis URL
# (the app's user) and first RabbitMQ URL (the workers' user) log in?
LOGS_IN = """
import json, sys
import amqp, redis
from celery_kit import amqpurl, redisurl
answers = {}
for name, path in (("before", sys.argv[1]), ("after", sys.argv[2])):
    settings = json.load(open(path))
    try:
        redisurl.connect(settings["result_backend"], socket_timeout=5).ping()
        answers[name + " redis"] = "ok"
    except redis.exceptions.RedisError as error:
        answers[name + " redis"] = type(error).__name__
    if settings["broker"] == "rabbitmq":
        try:
            with amqp.Connection(**amqpurl.amqp_params(settings["broker_url"].split(";")[0])) as connection:
                connection.channel().close()
            answers[name + " rabbitmq"] = "ok"
        except Exception as error:  # a refused login comes as one of several classes
            answers[name + " rabbitmq"] = type(error).__name__
print(json.dumps(answers))
"""


def _logins(worker) -> dict[str, str]:
    try:
        command = f"{APP_PYTHON} -c {shlex.quote(LOGS_IN)} {SETTINGS_BEFORE} {SETTINGS}"
        return json.loads(worker.check_output(command).splitlines()[-1])
    finally:
        worker.run(f"rm -f {SETTINGS_BEFORE}")


def _api_status(api_host, token: str) -> str:
    """The API's HTTP status for a GET with this token, asked on the api host."""
    header = shlex.quote(f"Authorization: Bearer {token}")
    url = api_url("/tasks/0b6b1d6e-3f6e-4d43-9a3c-2f1f0b8f3c11")
    return api_host.run(f"curl -s -o /dev/null -w %{{http_code}} {curl_tls()}-H {header} {url}").stdout


# What a replica's Redis logs once it is in sync with its primary again.
IN_SYNC = ("MASTER <-> REPLICA sync: Finished with success", "MASTER <-> REPLICA sync: Master accepted a Partial")


def _restart_window(host, since: float) -> tuple[float | None, float | None]:
    """When the host's Redis server was stopped after since, and when it was in sync with a primary again."""
    log = host.run(f"journalctl -u redis-server -o short-unix --no-pager --since @{since:.0f}").stdout
    stopped = None
    for line in log.splitlines():
        stamp, _, text = line.partition(" ")
        if stopped is None and "Received SIGTERM" in text:
            stopped = float(stamp)
        elif stopped is not None and any(mark in text for mark in IN_SYNC):
            return stopped, float(stamp)
    return stopped, None


def _check_the_group_restarted_in_turn(redis_hosts, since: float, output: str) -> None:
    windows = {host.backend.hostname: _restart_window(host, since) for host in redis_hosts}
    print("REDIS RESTARTS (stopped, in sync again) " + json.dumps(windows))
    assert all(stopped and synced for stopped, synced in windows.values()), f"every server restarts: {windows}"
    ordered = sorted(windows.values())
    for (_, synced), (next_stopped, _) in itertools.pairwise(ordered):
        assert next_stopped >= synced, f"two Redis servers of the group were down at once: {windows}"
    odown = [
        line
        for host in redis_hosts
        for line in host.run(f"journalctl -u redis-sentinel --no-pager --since @{since:.0f}").stdout.splitlines()
        if "+odown" in line
    ]
    assert odown == [], "a Sentinel saw the primary down during the restarts"
    # The primary handed its role over before its restart (more than once
    # when the Sentinels promoted a replica whose turn was still to come).
    handed_over = re.findall(r"handed over to [0-9.]+: writes held for \d+ ms", output)
    print(f"HAND-OVERS {handed_over}")
    assert handed_over, "the primary handed its role over before it restarted"


def _drift_every_file_with_a_secret(group_hosts) -> list[tuple]:
    """Drift every file that holds a secret; each (host, path, its checksum once drifted)."""
    drifted = []
    for group, paths in FILES_WITH_SECRETS.items():
        for host in group_hosts(group, required=False):
            for path in paths:
                if _drift(host, path):
                    drifted.append((host, path, host.file(path).sha256sum))
    assert drifted
    return drifted


def test_rotating_every_password_under_load_at_high_verbosity_loses_nothing_and_prints_no_secret(
    group_hosts, pytestconfig, rabbitmq, api_host
):
    secrets = deployment_secrets()
    assert {"redis_admin_password", "redis_app_password", "rabbitmq_app_password"} <= set(secrets), sorted(secrets)
    if (state_dir() / "ca").is_dir():
        assert "ca/ca.key" in secrets, sorted(secrets)
    worker = group_hosts("workers")[0]
    worker.check_output(f"install -m 0600 {SETTINGS} {SETTINGS_BEFORE}")
    redis_hosts = group_hosts("redis")
    started = time.time()

    def rotate() -> tuple[list[tuple], subprocess.CompletedProcess]:
        # Once the load runs: it read its token's header file when it started.
        drifted = _drift_every_file_with_a_secret(group_hosts)
        return drifted, converge(
            pytestconfig, "-vvv", "--diff", limit="all:localhost", timeout=1800, playbook="playbooks/rotate-secrets.yml"
        )

    run = under_counted_load(
        api_host,
        rabbitmq,
        "rotate-secrets",
        "every password rotated (make rotate-secrets -vvv --diff, {seconds} s)",
        rotate,
    )
    drifted, result = run.result
    logins = _logins(worker)
    print("LOGINS AFTER THE ROTATION " + json.dumps(logins))
    if len(redis_hosts) >= 3:
        # The old settings were refused by the Sentinels: this test's own
        # refusals, cleared from their ACL log (test_redis reads it).
        for host in redis_hosts:
            sentinel_cli(host, "ACL", "LOG", "RESET")

    new_secrets = deployment_secrets()
    rotated = sorted(name for name in secrets if new_secrets.get(name) != secrets[name])
    looked_for = {**{f"{name} (before)": value for name, value in secrets.items()}, **new_secrets}
    output = result.stdout + result.stderr
    printed = sorted(name for name, value in looked_for.items() if any(f in output for f in printed_forms(value)))
    print(
        f"verbose rotation: {len(output.splitlines())} lines of output, {len(looked_for)} secrets looked for"
        f" ({len(rotated)} rotated), {len(drifted)} files with secrets rewritten; printed: {printed or 'none'}"
    )
    assert printed == [], f"the output of make rotate-secrets -vvv --diff holds these secrets: {printed}"
    assert {"redis_admin_password", "redis_app_password", "rabbitmq_app_password"} <= set(rotated), rotated
    assert not list(state_dir().glob("*.previous"))

    assert logins["after redis"] == "ok"
    assert logins["before redis"] != "ok", "Redis still takes the app's old password"
    if "after rabbitmq" in logins:
        assert logins["after rabbitmq"] == "ok"
        assert logins["before rabbitmq"] != "ok", "RabbitMQ still takes the workers' old password"
    assert run.counts["refused"] == 0, run.steady
    assert run.counts["lost"] == 0, run.report
    assert run.counts["dead_lettered"] == 0
    assert run.counts["run_twice"] == 0
    if len(redis_hosts) >= 3:
        _check_the_group_restarted_in_turn(redis_hosts, started, output)

    # The kit's own API token has a new value; the old one (the steady load
    # sent it throughout) logs in until its grace ends, a day from now.
    assert "api-tokens/kit" in rotated, rotated
    answers = {
        which: _api_status(api_host, token)
        for which, token in (
            ("old", secrets["api-tokens/kit"]),
            ("new", new_secrets["api-tokens/kit"]),
            ("never issued", "x" * 43),
        )
    }
    assert answers == {"old": "200", "new": "200", "never issued": "401"}, answers
    hashes = json.loads(api_host.file("/etc/celery-app/api-tokens.json").content_string)
    ending = {entry["name"]: entry["expires"] - time.time() for entry in hashes.values() if "expires" in entry}
    assert set(ending) == {"kit"} and 23 * 3600 < ending["kit"] <= 24 * 3600, ending

    # The run rewrote the drifted files (their diffs were to be shown).
    changed = changed_per_host(result)
    for host, path, drifted_checksum in drifted:
        name = host.backend.hostname
        assert changed.get(name, 0) > 0, f"{name} was not changed"
        assert host.file(path).sha256sum != drifted_checksum, f"{path} on {name} was not rewritten"
