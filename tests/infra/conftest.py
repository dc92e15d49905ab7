"""Shared helpers of the testinfra suite.

The suite runs against the hosts of an Ansible inventory (make verify passes
the current ENV's inventory; molecule passes its own). Tests that need a
service on another host reach it through that host's own tools, so nothing
here needs a password on the controller.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

from celery_kit.local import API_AUTH_FILE, APP, APP_ENV, APP_VENV

ROOT = Path(__file__).resolve().parents[2]
APP_QUEUES = ("health", "default", "emails", "priority")
DEAD_LETTERED_QUEUES = ("default", "emails", "priority")
# How the suite runs the app's Python and Celery on a host: as root, with
# the app's environment (celery_kit.local, as the scenarios do).
APP_PYTHON = APP
CELERY = f"{APP_ENV} {APP_VENV}/bin/celery --app celery_kit.app"
DEAD_LETTER_QUEUE = "dead-letter"
VHOST = "/celery"


def _inventory(config: pytest.Config) -> str:
    inventory = config.getoption("ansible_inventory")
    if not inventory:
        raise pytest.UsageError("run with --ansible-inventory=<inventory> (see make verify)")
    return inventory


def _plain(value: Any) -> Any:
    """A value of ansible-inventory's JSON, without its 'unsafe' wrapping."""
    if isinstance(value, dict) and "__ansible_unsafe" in value:
        return value["__ansible_unsafe"]
    return value


@pytest.fixture(scope="session")
def group_hosts(pytestconfig: pytest.Config) -> Callable[[str], list[Any]]:
    """Return the testinfra hosts of an inventory group.

    Containers are reached with docker exec directly (fast); any other
    connection goes through testinfra's Ansible backend.
    """
    inventory = _inventory(pytestconfig)
    runner = AnsibleRunner(inventory)
    hostvars = runner.inventory["_meta"]["hostvars"]
    cache: dict[str, Any] = {}

    def connect(name: str) -> Any:
        variables = hostvars.get(name, {})
        connection = _plain(variables.get("ansible_connection", "ssh"))
        if connection in ("community.docker.docker", "docker"):
            return testinfra.get_host(f"docker://{_plain(variables.get('ansible_host', name))}")
        return testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory)

    def hosts(group: str, required: bool = True) -> list[Any]:
        names = sorted(runner.get_hosts(group))
        assert names or not required, f"the inventory has no host in group {group}"
        return [cache.setdefault(name, connect(name)) for name in names]

    return hosts


# The deployment's CA on its hosts when it runs with TLS (tls_ca of the
# app's settings), read once per session by the fixture below; the helpers
# of this module reach Redis, Sentinel and the API over TLS with it.
TLS_CA: str | None = None


@pytest.fixture(scope="session", autouse=True)
def tls_ca(group_hosts) -> str | None:
    """The deployment's CA file on its hosts, None on a deployment without TLS."""
    global TLS_CA  # noqa: PLW0603 (set once per session, read by the helpers)
    config = group_hosts("api")[0].file("/etc/celery-app/deployment.json").content_string
    TLS_CA = json.loads(config).get("tls_ca")
    return TLS_CA


def redis_cli_tls() -> str:
    """redis-cli's options over TLS ('' without TLS)."""
    return f"--tls --cacert {TLS_CA} " if TLS_CA else ""


def curl_tls() -> str:
    """curl's option trusting the deployment's CA ('' without TLS)."""
    return f"--cacert {TLS_CA} " if TLS_CA else ""


def curl_auth() -> str:
    """curl's option sending the kit's own API token, from its root-only file on the api host."""
    return f"-H @{API_AUTH_FILE} "


def state_dir() -> Path:
    """The deployment's state directory on the controller (its secrets), as make deploy made it."""
    return ROOT / ".state" / os.environ.get("KIT_LOCAL_DEPLOYMENT", "local")


def private_address(host) -> str:
    """The host's address on the deployment's network (the source of its default route)."""
    return host.check_output("ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'")


def management_url(rabbitmq_host, path: str) -> str:
    """The management API of a node, on its private address (HTTPS on 15671 with TLS, else 15672)."""
    scheme, port = ("https", 15671) if TLS_CA else ("http", 15672)
    return f"{scheme}://{private_address(rabbitmq_host)}:{port}{path}"


def api_url(path: str, address: str = "127.0.0.1") -> str:
    """The API on an api host (HTTPS with TLS)."""
    return f"{'https' if TLS_CA else 'http'}://{address}:8000{path}"


@pytest.fixture(scope="session")
def broker(group_hosts) -> str:
    """The deployment's broker, as the app on the api host is configured."""
    config = group_hosts("api")[0].file("/etc/celery-app/deployment.json").content_string
    return json.loads(config)["broker"]


@pytest.fixture(scope="session")
def rabbitmq(group_hosts, broker):
    """The RabbitMQ host; tests of RabbitMQ do not apply to a Redis-broker deployment."""
    if broker != "rabbitmq":
        pytest.skip(f"this deployment's broker is {broker}, not RabbitMQ")
    return group_hosts("rabbitmq")[0]


@pytest.fixture(scope="session")
def rabbitmq_nodes(group_hosts, broker):
    """Every RabbitMQ host of the cluster, in inventory order."""
    if broker != "rabbitmq":
        pytest.skip(f"this deployment's broker is {broker}, not RabbitMQ")
    return group_hosts("rabbitmq")


@pytest.fixture
def redis_host(group_hosts):
    """The Redis host that takes writes now: the only one, or the primary the Sentinels name."""
    return redis_primary(group_hosts)


# The group the Sentinels monitor (kit_redis_master_name).
REDIS_MASTER_NAME = "celery-kit"


def sentinel_cli(host, *args: str):
    """Run redis-cli against the host's Sentinel, authenticated with its password."""
    auth = 'REDISCLI_AUTH=$(awk \'$1 == "requirepass" {gsub(/"/, "", $2); print $2}\' /etc/redis/sentinel.conf) '
    command = f"{auth}redis-cli {redis_cli_tls()}--no-auth-warning -p 26379 " + " ".join(shlex.quote(a) for a in args)
    return host.run("sh -c %s", command)


def host_addresses(host) -> set[str]:
    return set(host.check_output("hostname -I").split())


def sentinel_primary_address(hosts) -> str | None:
    """The primary's address as the first Sentinel that answers names it."""
    for host in hosts:
        answer = sentinel_cli(host, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", REDIS_MASTER_NAME)
        lines = answer.stdout.split()
        if answer.rc == 0 and len(lines) == 2:
            return lines[0]
    return None


def redis_primary(group_hosts):
    hosts = group_hosts("redis")
    if len(hosts) == 1:
        return hosts[0]
    address = sentinel_primary_address(hosts)
    assert address, "no Sentinel names a Redis primary"
    return next(host for host in hosts if address in host_addresses(host))


@pytest.fixture(scope="session")
def api_host(group_hosts):
    return group_hosts("api")[0]


@pytest.fixture(scope="session")
def monitoring_host(group_hosts):
    """The monitoring host; its tests do not apply to a deployment without one (MONITORING_HOSTS=0)."""
    hosts = group_hosts("monitoring", required=False)
    if not hosts:
        pytest.skip("this deployment has no monitoring host")
    return hosts[0]


def rabbitmq_queues(rabbitmq_host) -> dict[str, dict[str, Any]]:
    """Queues of the app's vhost, by name, as rabbitmqctl reports them."""
    out = rabbitmq_host.check_output(
        "rabbitmqctl -q --formatter json list_queues -p %s name durable type policy messages "
        "messages_ready messages_unacknowledged consumers arguments leader members online",
        VHOST,
    )
    return {queue["name"]: queue for queue in json.loads(out)}


def node_name(host) -> str:
    """The RabbitMQ node name of a host: rabbit@<short hostname>."""
    return "rabbit@" + host.check_output("hostname --short")


def cluster_status(rabbitmq_host) -> dict[str, Any]:
    return json.loads(rabbitmq_host.check_output("rabbitmqctl -q --formatter json cluster_status"))


def dead_letters(rabbitmq_host) -> int:
    return rabbitmq_queues(rabbitmq_host)[DEAD_LETTER_QUEUE]["messages"]


def worker_processes(group_hosts) -> int:
    """Worker processes configured on all worker hosts: each is one consumer per queue."""
    return sum(len(configured_worker_units(host)) for host in group_hosts("workers"))


def configured_worker_units(host) -> list[str]:
    """Worker units the host's target wants (its configured process count)."""
    wants = host.check_output("systemctl show -p Wants --value celery-workers.target")
    return sorted(re.findall(r"celery-worker-[a-z0-9-]+@\d+\.service", wants))


def worker_names(group_hosts) -> set[str]:
    """The Celery worker names the configured units run: celery-worker-<pool>@<n> is <pool>-<n>@<host>."""
    names = set()
    for host in group_hosts("workers"):
        hostname = host.check_output("hostname")
        for unit in configured_worker_units(host):
            pool, index = re.search(r"^celery-worker-(.+)@(\d+)\.service$", unit).groups()
            names.add(f"{pool}-{index}@{hostname}")
    return names


def converge(
    pytestconfig: pytest.Config, *args: str, limit: str, timeout: float, playbook: str = "playbooks/site.yml"
) -> subprocess.CompletedProcess:
    """Run a playbook (site.yml) on the hosts of limit, as make would, with extra arguments; it must succeed."""
    # Without colours (molecule forces them on for its own runs): the
    # output is read (PLAY RECAP) and searched.
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            pytestconfig.getoption("ansible_inventory"),
            "--limit",
            limit,
            *args,
            str(ROOT / playbook),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def converge_redis_hosts(pytestconfig: pytest.Config, timeout: float) -> subprocess.CompletedProcess:
    """Run site.yml on the Redis hosts, as make deploy would; it must succeed."""
    return converge(pytestconfig, limit="redis:localhost", timeout=timeout)


def changed_per_host(result: subprocess.CompletedProcess) -> dict[str, int]:
    """changed= per host of a playbook run's PLAY RECAP."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", plain, re.M)
    return {host: int(changed) for host, changed in recap}


def wait_until(what: str, timeout: float, probe: Callable[[], Any]) -> Any:
    """probe()'s first truthy value, asked every 2 s; fails after timeout."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(2)
    return value


def queue_argument(arguments: Any, name: str) -> Any:
    """One x-argument of a queue, from rabbitmqctl's JSON ([name, type, value] triples)."""
    if isinstance(arguments, dict):
        return arguments.get(name)
    for entry in arguments:
        if entry[0] == name:
            return entry[-1]
    return None


def redis_cli(redis_host, *args: str, db: int = 0, password: bool = True):
    """Run redis-cli on the Redis host as its admin user (its password from the root-only file the role keeps)."""
    auth = "REDISCLI_AUTH=$(cat /etc/redis/admin-password) " if password else ""
    user = "--user admin " if password else ""
    command = f"{auth}redis-cli {redis_cli_tls()}{user}--no-auth-warning -n {db} "
    command += " ".join(shlex.quote(a) for a in args)
    return redis_host.run("sh -c %s", command)


def api_call(api_host, method: str, path: str, body: Any | None = None) -> tuple[int, Any]:
    """Call the API on its host; return the status code and the decoded body."""
    marker = uuid.uuid4().hex
    data = ""
    if body is not None:
        data = f"-H 'Content-Type: application/json' --data-binary {shlex.quote(json.dumps(body))}"
    result = api_host.run(
        f"curl -s -m 20 {curl_tls()}{curl_auth()}-o /tmp/{marker} -w '%{{http_code}}' -X {method} {data} "
        f"{api_url(path)}; "
        f"echo; cat /tmp/{marker}; rm -f /tmp/{marker}"
    )
    assert result.rc == 0, result.stderr
    status, _, text = result.stdout.partition("\n")
    return int(status), json.loads(text) if text.strip() else None


def submit(api_host, body: dict[str, Any]) -> str:
    status, reply = api_call(api_host, "POST", "/tasks", body)
    assert status == 202, reply
    return reply["id"]


def wait_for_result(api_host, task_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll GET /tasks/<id> until the task has finished."""
    deadline = time.monotonic() + timeout
    while True:
        status, reply = api_call(api_host, "GET", f"/tasks/{task_id}")
        assert status == 200, reply
        if reply["state"] in ("SUCCESS", "FAILURE") or time.monotonic() > deadline:
            return reply
        time.sleep(0.5)


# The fault tests' load (test_faults, test_outbox).
FAULT_RATE = 10  # submissions a second
# Quick tasks, half-second ones (they are running when the fault hits),
# welcome emails (a side effect a user would see twice) and countdown tasks
# (they wait in the broker's delay queues during the fault).
FAULT_BODIES = [
    {"task": "add", "args": [2, 3]},
    {"task": "process_task", "args": [{"seconds": 0.5}]},
    {"task": "send_welcome_email", "args": ["fault.test@example.com"]},
    {"task": "add", "args": [3, 4], "countdown": 4},
    {"task": "process_task", "args": [{"seconds": 0.5}], "queue": "priority", "priority": 7},
]


# The longest a steady load of the suite runs (a failed test cannot leave it running).
LOAD_SECONDS = 900
# The kit's load generator, installed on the hosts with the kit.
LOADGEN = f"{APP_PYTHON} -m celery_kit.loadgen"


class Load:
    """celery_kit.loadgen on the api host: a steady stream of submissions, and their bookkeeping."""

    def __init__(self, host, name: str) -> None:
        self.host = host
        self.ids = f"/root/{name}.ids"
        self.stop_file = f"/root/{name}.stop"
        self.output = f"/root/{name}.out"
        host.check_output(f"rm -f {self.ids} {self.stop_file} {self.output}")

    def run(self, *args: str) -> dict[str, Any]:
        out = self.host.check_output(f"{LOADGEN} " + " ".join(shlex.quote(a) for a in args))
        return json.loads(out.strip().splitlines()[-1])

    def start(self, rate: float, bodies: list[dict[str, Any]]) -> None:
        """Post bodies (in turn) rate times a second until stop()."""
        arguments = " ".join(shlex.quote(json.dumps(body)) for body in bodies)
        # Bounded: it stops by itself after LOAD_SECONDS if nothing stops it.
        command = f"timeout {LOAD_SECONDS} {LOADGEN} steady {self.ids} {self.stop_file} {rate} {arguments}"
        self.host.check_output(f"nohup sh -c {shlex.quote(command + ' > ' + self.output)} >/dev/null 2>&1 &")

    def stop(self) -> dict[str, Any]:
        """Stop the stream; its summary: accepted, refused, failures by status."""
        self.host.check_output(f"touch {self.stop_file}")
        deadline = time.monotonic() + 60
        while not self.host.run(f"cat {self.output}").stdout.strip():
            assert time.monotonic() < deadline, "the load generator did not stop"
            time.sleep(0.5)
        return json.loads(self.host.check_output(f"cat {self.output}"))

    def submit(self, bodies: list[dict[str, Any]]) -> None:
        """Submit bodies one after the other; every one must be accepted."""
        spec = base64.b64encode(json.dumps(bodies).encode()).decode()
        self.host.check_output(f"echo {spec} | base64 -d > {self.ids}.spec")
        result = self.run("submit", f"{self.ids}.spec", self.ids)
        assert result["failures"] == {}, result

    def wait_until_all_ran(self, timeout: float) -> dict[str, Any]:
        """Every accepted id ran (its finished mark is in Redis db 2), or the report at timeout."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.run("check", self.ids)
            if report["missing"] == 0 or time.monotonic() > deadline:
                return report
            time.sleep(3)


def emails_written_twice(group_hosts, load: Load) -> int:
    """Welcome emails of the load's tasks that the workers' mail sink holds more than once."""
    ids = set(load.host.check_output(f"cat {load.ids}").split())
    lines = "".join(
        host.run("cat /var/lib/celery-app/mail-sink.log 2>/dev/null").stdout for host in group_hosts("workers")
    )
    written = Counter(json.loads(line)["task_id"] for line in lines.splitlines() if line.strip())
    return sum(count - 1 for task_id, count in written.items() if task_id in ids and count > 1)


def fault_report(fault: str, steady: dict[str, Any], report: dict[str, Any], dead_lettered: int) -> dict[str, Any]:
    """The counts every fault test states: accepted, refused, lost, dead-lettered, run twice."""
    counts = {
        "fault": fault,
        "accepted": steady["accepted"],
        "refused": steady["refused"],
        "lost": report["missing"],
        "dead_lettered": dead_lettered,
        "run_twice": report["duplicate_executions_skipped"],
        "states": report["states"],
    }
    print("FAULT COUNTS " + json.dumps(counts))
    return counts


@dataclass
class CountedRun:
    """What under_counted_load gives back: the action's own result, then the counts."""

    result: Any
    counts: dict[str, Any]
    steady: dict[str, Any]
    report: dict[str, Any]


def under_counted_load(api_host, rabbitmq, name: str, fault: str, action: Callable[[], Any]) -> CountedRun:
    """Run action() under the steady load (from 5 s before to 5 s after), then count what it cost.

    fault names it in the FAULT COUNTS line; {seconds} in it becomes how long
    the load ran until action() returned.
    """
    dead_before = dead_letters(rabbitmq)
    load = Load(api_host, name)
    load.start(FAULT_RATE, FAULT_BODIES)
    started = time.monotonic()
    try:
        time.sleep(5)
        result = action()
        seconds = time.monotonic() - started
        time.sleep(5)
    finally:
        steady = load.stop()
    report = load.wait_until_all_ran(timeout=300)
    counts = fault_report(fault.format(seconds=f"{seconds:.0f}"), steady, report, dead_letters(rabbitmq) - dead_before)
    return CountedRun(result, counts, steady, report)
