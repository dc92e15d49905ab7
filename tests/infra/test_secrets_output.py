"""No secret in Ansible's output, also at the highest verbosity and with --diff.

The files on the hosts that hold the deployment's secrets (redis.conf, its
users and the admin's password, the exporter's settings, the app's
settings and environment) are changed by hand, as drift, and site.yml
then runs with -vvv and --diff, as an operator debugging a deploy would:
it puts every file back, and what it printed
(every task's arguments and results, every diff) must hold none of the
secrets generated for the deployment (the files of its state directory: the
passwords, the Erlang cookie, the CA's private key, the API tokens),
neither as they are nor base64-encoded (how slurp prints a file).

The monitoring host is left out of the run: molecule's scenario gives it
settings of its own (quicker scrapes), which a plain run would change.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
from conftest import changed_per_host, converge

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
    state = ROOT / ".state" / os.environ.get("KIT_LOCAL_DEPLOYMENT", "local")
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


def test_a_verbose_converge_with_diff_that_rewrites_secret_files_prints_no_secret(group_hosts, pytestconfig):
    secrets = deployment_secrets()
    assert {"redis_admin_password", "redis_app_password", "rabbitmq_app_password"} <= set(secrets), sorted(secrets)
    if (ROOT / ".state" / os.environ.get("KIT_LOCAL_DEPLOYMENT", "local") / "ca").is_dir():
        assert "ca/ca.key" in secrets, sorted(secrets)
    drifted = []
    for group, paths in FILES_WITH_SECRETS.items():
        for host in group_hosts(group, required=False):
            for path in paths:
                if checksum := _drift(host, path):
                    drifted.append((host, path, checksum))
    assert drifted

    result = converge(pytestconfig, "-vvv", "--diff", limit="all:localhost:!monitoring", timeout=1500)

    output = result.stdout + result.stderr
    printed = sorted(name for name, value in secrets.items() if any(form in output for form in printed_forms(value)))
    print(
        f"verbose converge: {len(output.splitlines())} lines of output, {len(secrets)} secrets looked for,"
        f" {len(drifted)} files with secrets rewritten; printed: {printed or 'none'}"
    )
    assert printed == [], f"the output of ansible-playbook -vvv --diff holds these secrets: {printed}"
    # The run did rewrite the drifted files (their diffs were to be shown).
    changed = changed_per_host(result)
    for host, path, checksum in drifted:
        name = host.backend.hostname
        assert changed.get(name, 0) > 0, f"{name} was not changed"
        assert host.file(path).sha256sum == checksum, f"{path} on {name} was not put back"
