"""Driving a local deployment from outside: its containers, its playbooks, its load.

The molecule scenarios (migration, apps, chaos) and the benchmarks run on
the controller, reach the hosts (containers named
ck-<deployment>-<group>-<n>) with docker exec, and run the kit's playbooks
against them exactly as make does. The load runs on the api host with the
kit installed there (python -m celery_kit.loadgen).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# The repository (these run on the controller, from its checkout).
ROOT = Path(__file__).resolve().parents[2]
# The app's Python as root, with the app's environment (the units' EnvironmentFile).
APP_ENV = "env $(grep -v ^# /etc/celery-app/app.env | xargs)"
APP_VENV = "/opt/celery-app/current/venv"
APP = f"{APP_ENV} {APP_VENV}/bin/python"
# The deployment's settings on an app host (roles/celery_app).
DEPLOYMENT_FILE = "/etc/celery-app/deployment.json"
# The kit's own API token as an HTTP header, root-only, on the api hosts
# (roles/celery_app, tasks/api_tokens.yml): curl -H @file, loadgen.
API_AUTH_FILE = "/etc/celery-app/kit-api-auth.header"
# The load generator, as the app's Python on a host runs it.
LOAD = f"{APP} -m celery_kit.loadgen"
# The ansible-playbook next to this interpreter (the kit's .venv), else PATH's.
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
if not Path(ANSIBLE_PLAYBOOK).exists():
    ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook") or "ansible-playbook"


def deployment(default: str) -> str:
    """The deployment under test (molecule sets KIT_LOCAL_DEPLOYMENT)."""
    return os.environ.get("KIT_LOCAL_DEPLOYMENT", default)


class Deployment:
    """A local deployment: its containers, its playbooks, its load."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = ROOT / ".state" / name

    @functools.cached_property
    def tls_ca(self) -> str | None:
        """The deployment's CA on its hosts (tls_ca of its settings); None on a deployment without TLS."""
        # From an api host, or a worker host while the api host restarts.
        for host in [self.container("api"), *self.containers("workers")]:
            text = sh(host, f"cat {DEPLOYMENT_FILE}", check=False)
            if text.strip():
                return json.loads(text).get("tls_ca")
        raise AssertionError(f"no app host of {self.name} answers with its settings ({DEPLOYMENT_FILE})")

    def api_url(self, path: str, address: str = "127.0.0.1") -> str:
        """The API's URL on an api host's address (HTTPS with TLS)."""
        return f"{'https' if self.tls_ca else 'http'}://{address}:8000{path}"

    @property
    def curl_tls(self) -> str:
        """curl's option trusting the deployment's CA ('' without TLS)."""
        return f"--cacert {self.tls_ca}" if self.tls_ca else ""

    @property
    def redis_cli_tls(self) -> str:
        """redis-cli's options over TLS ('' without TLS)."""
        return f"--tls --cacert {self.tls_ca}" if self.tls_ca else ""

    @property
    def curl_auth(self) -> str:
        """curl's option sending the kit's token (read from its root-only file on the api host)."""
        return f"-H @{API_AUTH_FILE}"

    def share_api_token(self, host: str) -> None:
        """Copy the kit's token file from the api host to another host (root-only), for a load from there."""
        header = sh(self.container("api"), f"cat {API_AUTH_FILE}")
        subprocess.run(
            ["docker", "exec", "-i", host, "sh", "-c", f"umask 077; cat > {API_AUTH_FILE}"],
            input=header,
            text=True,
            check=True,
            timeout=60,
        )

    def container(self, group: str, index: int = 1) -> str:
        return f"ck-{self.name}-{group}-{index}"

    def containers(self, group: str) -> list[str]:
        """This deployment's containers of a group, running or not."""
        return sorted(
            subprocess.run(
                ["docker", "ps", "--all", "--format", "{{.Names}}", "--filter", f"name=ck-{self.name}-{group}-"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        )

    def playbook(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        """Run a playbook against this deployment, as make would; print its tail."""
        command = [ANSIBLE_PLAYBOOK, "-i", "inventories/local", "-e", "local_publish_ports=false", *args]
        env = dict(os.environ, KIT_LOCAL_DEPLOYMENT=self.name, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
        started = time.monotonic()
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        print(f"$ {' '.join(args)}  (exit {result.returncode}, {time.monotonic() - started:.0f}s)")
        print("\n".join(result.stdout.splitlines()[-60:]))
        return result

    def load(self, *args: str) -> dict:
        """celery_kit.loadgen on the api host."""
        api = self.container("api")
        return json.loads(sh(api, f"{LOAD} {' '.join(args)}").strip().splitlines()[-1])

    def start_steady_load(self, ids: str, stop: str, output: str, rate: float, bodies: list[dict]) -> None:
        """Post bodies, in turn, rate times a second through the API until the file stop exists."""
        api = self.container("api")
        put_file(api, f"{ids}.bodies", json.dumps(bodies))
        command = f"{LOAD} steady {ids} {stop} {rate} @{ids}.bodies > {output}"
        sh(api, f"rm -f {stop} {output}; nohup sh -c '{command}' >/dev/null 2>&1 &")

    def stop_steady_load(self, stop: str, output: str) -> dict:
        api = self.container("api")
        sh(api, f"touch {stop}")
        deadline = time.monotonic() + 60
        while not sh(api, f"cat {output} 2>/dev/null || true").strip():
            assert time.monotonic() < deadline, "the load generator did not stop"
            time.sleep(0.5)
        return json.loads(sh(api, f"cat {output}"))

    def wait_until_all_ran(self, ids: str, timeout: float) -> dict:
        """Every id in the file ran (its finished mark is in Redis db 2), or the report at timeout."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.load("check", ids)
            if report["missing"] == 0 or time.monotonic() > deadline:
                return report
            time.sleep(5)

    def welcome_emails_sent(self) -> Counter:
        """Task ids in the mail sinks of every worker host, with how often each wrote one."""
        names = self.containers("workers")
        assert names, "no worker host found"
        lines = "".join(sh(name, "cat /var/lib/celery-app/mail-sink.log 2>/dev/null || true") for name in names)
        return Counter(json.loads(line)["task_id"] for line in lines.splitlines() if line.strip())

    def rabbitmq_messages(self, node: int = 1) -> dict[str, int]:
        out = sh(
            self.container("rabbitmq", node), "rabbitmqctl -q --formatter json list_queues -p /celery name messages"
        )
        return {queue["name"]: queue["messages"] for queue in json.loads(out)}


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


def put_file(name: str, path: str, text: str) -> None:
    """Write a file into a container (docker cp: no argument-length limit)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as local:
        local.write(text)
        local.flush()
        os.chmod(local.name, 0o644)
        subprocess.run(["docker", "cp", local.name, f"{name}:{path}"], check=True)
