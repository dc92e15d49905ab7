"""make chaos's fault suite: one fault at a time under a steady load, counted.

Runs on the controller against a local deployment (celery_kit.local): a
steady load of quick, slow, countdown, email and priority tasks goes through
the API (celery_kit.loadgen, on the api host, recording every submission);
one fault is injected; the load goes on for a while after the fault ended,
stops, and the suite waits until everything accepted has run. Then it counts
what a user would notice (count_fault, a pure function of the records):

- accepted / refused: submissions answered 2xx / anything else (status 0:
  no answer within the load generator's 20 s, or no connection);
- lost: accepted ids without a SUCCESS result once the wait is over;
- dead-lettered: growth of the dead-letter queue during the run;
- emails sent twice: send_welcome_email ids with more than one mail-sink line
  on the worker hosts (one line per execution: a duplicate a user would get);
- redelivered and skipped: copies the at-most-once guard recognised and
  skipped (celery-kit:duplicates), harmless;
- longest wait for a 2xx: the slowest accepted submission, in seconds;
- recovery: seconds from the fault's end until completions are back at the
  submission rate: the first second from the fault's end on that completes
  at least RECOVERY_SHARE of the accepted rate measured before the fault,
  and so do the RECOVERY_SPAN seconds it starts, on average; None if that
  never happens while the run is observed.

Every wait and the load itself are bounded in time; the traffic goes to the
deployment's own containers only (docker exec, the deployment's network).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from celery_kit.local import APP_ENV, APP_VENV, LOAD, Deployment, put_file, sh

# The load's mix, as the fault and resize tests send it: quick tasks, half-
# second tasks (running when the fault hits), welcome emails (a side effect a
# user would see twice), countdown tasks (waiting in the broker's delay
# queues) and priority tasks on their own queue.
BODIES = [
    {"task": "add", "args": [2, 3]},
    {"task": "process_task", "args": [{"seconds": 0.5}]},
    {"task": "send_welcome_email", "args": ["chaos@example.com"]},
    {"task": "add", "args": [3, 4], "countdown": 5},
    {"task": "process_task", "args": [{"seconds": 0.5}], "queue": "priority", "priority": 7},
    {"task": "process_task", "args": [{"seconds": 3}]},
]
RECOVERY_SPAN = 5
RECOVERY_SHARE = 0.8
# The Sentinel master name the Redis role gives its primary (issue 13's
# Sentinel work); the fault asks Sentinel on port 26379 for its address.
SENTINEL_MASTER = "celery-kit"
SENTINEL_PORT = 26379
CELERY = f"{APP_ENV} {APP_VENV}/bin/celery --app celery_kit.app"


@dataclass(frozen=True)
class Timing:
    """How long each phase lasts, in seconds; the rate in submissions a second."""

    rate: float = 10
    lead: float = 10  # load before the fault (the baseline rate)
    settle: float = 25  # load after the fault ended (the recovery)
    node_down: float = 30  # one RabbitMQ node, the Redis primary
    outage: float = 60  # the whole broker
    alarm: float = 30  # memory or disk alarm
    cut: float = 30  # network cut
    drain: float = 300  # the longest wait for everything accepted to run


FULL = Timing()
# make test's counted subset: the same faults, shorter.
SHORT = Timing(rate=5, lead=6, settle=15, node_down=20, outage=20, alarm=15, cut=15, drain=240)


@dataclass(frozen=True)
class Fault:
    """One fault: its key, its title, when it applies and how it is injected.

    inject(kit, timing) makes the fault, undoes it, and returns the wall-clock
    (start, end) of the fault window; applies(kit) returns None when the
    fault applies to the deployment, else why not. load_host(kit) is the
    container the load runs on (the api host, unless the fault restarts it).
    """

    key: str
    title: str
    inject: Callable[[Deployment, Timing], tuple[float, float]]
    applies: Callable[[Deployment], str | None] = lambda kit: None
    load_host: Callable[[Deployment], str] = lambda kit: kit.container("api")


# --- the faults ---------------------------------------------------------------


def _systemctl(name: str, action: str, unit: str) -> None:
    sh(name, f"systemctl {action} {unit}", timeout=300)


def _in_parallel(calls: list[Callable[[], None]]) -> None:
    """Run calls at once (RabbitMQ nodes wait for each other at boot); raise the first error."""
    errors: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as error:  # re-raised below, in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    if errors:
        raise errors[0]


def _wait(what: str, timeout: float, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(2)


def _running_rabbitmq(kit: Deployment) -> str:
    """A RabbitMQ node that answers (for counting)."""
    for name in kit.containers("rabbitmq"):
        if (
            subprocess.run(
                ["docker", "exec", name, "rabbitmqctl", "-q", "status"], check=False, capture_output=True
            ).returncode
            == 0
        ):
            return name
    raise AssertionError("no RabbitMQ node answers")


def _cluster_running(kit: Deployment) -> bool:
    nodes = kit.containers("rabbitmq")
    try:
        status = json.loads(sh(nodes[0], "rabbitmqctl -q --formatter json cluster_status", timeout=60))
    except AssertionError:
        return False
    return set(status["running_nodes"]) == {f"rabbit@{name}" for name in nodes}


def dead_letters(kit: Deployment) -> int:
    """Messages in the dead-letter queue, asked of a node that answers."""
    out = sh(_running_rabbitmq(kit), "rabbitmqctl -q --formatter json list_queues -p /celery name messages")
    return next((queue["messages"] for queue in json.loads(out) if queue["name"] == "dead-letter"), 0)


def _workers_consuming(kit: Deployment) -> bool:
    """Every app queue has consumers again (after a broker outage the workers reconnect)."""
    try:
        out = sh(_running_rabbitmq(kit), "rabbitmqctl -q --formatter json list_queues -p /celery name consumers")
    except AssertionError:
        return False
    queues = {queue["name"]: queue["consumers"] for queue in json.loads(out)}
    return all(queues.get(name, 0) > 0 for name in ("default", "emails", "priority"))


def worker_sigkill(kit: Deployment, timing: Timing) -> tuple[float, float]:
    """SIGKILL the pool child of a worker that is running a slow task (process_task)."""
    asker = kit.containers("workers")[0]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = sh(asker, f"{CELERY} inspect active --json --timeout 3 2>/dev/null || true", timeout=60).strip()
        active = json.loads(out.splitlines()[-1]) if out.startswith("{") else {}
        for worker, tasks in active.items():
            slow = [task for task in tasks if task["name"] == "process_task" and task.get("worker_pid")]
            host = worker.split("@", 1)[-1]
            if slow and host in kit.containers("workers"):
                started = time.time()
                sh(host, f"kill -9 {slow[0]['worker_pid']}")
                print(f"SIGKILL to pid {slow[0]['worker_pid']} ({worker}) while it ran {slow[0]['id']}")
                return started, time.time()
        time.sleep(0.5)
    raise AssertionError("no pool child ran a process_task within 30 s")


def worker_host_restart(kit: Deployment, timing: Timing) -> tuple[float, float]:
    """docker restart of the first worker host (systemd shuts the workers down warm)."""
    host = kit.containers("workers")[0]
    started = time.time()
    subprocess.run(["docker", "restart", host], check=True, capture_output=True, timeout=300)
    _wait(
        f"{host}'s workers running",
        180,
        lambda: sh(host, "systemctl is-active celery-workers.target", check=False).strip() == "active",
    )
    return started, time.time()


def _leader_of_default(kit: Deployment) -> str:
    out = sh(_running_rabbitmq(kit), "rabbitmqctl -q --formatter json list_queues -p /celery name leader")
    leader = next(queue["leader"] for queue in json.loads(out) if queue["name"] == "default")
    return leader.split("@", 1)[1]


def rabbitmq_node_stop(kit: Deployment, timing: Timing) -> tuple[float, float]:
    """Stop the node leading the default queue for timing.node_down s, then start it again."""
    victim = _leader_of_default(kit)
    started = time.time()
    _systemctl(victim, "stop", "rabbitmq-server")
    time.sleep(timing.node_down)
    _systemctl(victim, "start", "rabbitmq-server")
    ended = time.time()
    _wait("the node rejoining the cluster", 180, lambda: _cluster_running(kit))
    return started, ended


def _broker_outage(kit: Deployment, seconds: float, during: Callable[[], None] | None = None) -> tuple[float, float]:
    nodes = kit.containers("rabbitmq")
    started = time.time()
    for name in reversed(nodes):
        _systemctl(name, "stop", "rabbitmq-server")
    if during:
        during()
    time.sleep(max(0.0, seconds - (time.time() - started)))
    _in_parallel([lambda name=name: _systemctl(name, "start", "rabbitmq-server") for name in nodes])
    ended = time.time()
    _wait("every node running", 180, lambda: _cluster_running(kit))
    _wait("the workers consuming again", 180, lambda: _workers_consuming(kit))
    return started, ended


def broker_outage(kit: Deployment, timing: Timing) -> tuple[float, float]:
    """Stop every RabbitMQ node for timing.outage s, then start them all at once."""
    return _broker_outage(kit, timing.outage)


def _rabbitmq_setting(name: str, key: str) -> str:
    return sh(name, f"awk -F' = ' '$1 == \"{key}\" {{print $2}}' /etc/rabbitmq/rabbitmq.conf").strip()


def memory_alarm(kit: Deployment, timing: Timing) -> tuple[float, float]:
    """A memory alarm on the first node (it blocks every publisher of the cluster), then the configured watermark."""
    node = kit.containers("rabbitmq")[0]
    configured = _rabbitmq_setting(node, "vm_memory_high_watermark.relative")
    assert configured, "vm_memory_high_watermark.relative not found in rabbitmq.conf"
    started = time.time()
    sh(node, "rabbitmqctl -q set_vm_memory_high_watermark 0.0001")
    time.sleep(timing.alarm)
    sh(node, f"rabbitmqctl -q set_vm_memory_high_watermark {shlex.quote(configured)}")
    return started, time.time()


def disk_alarm(kit: Deployment, timing: Timing) -> tuple[float, float]:
    """A disk alarm on the first node (a free-space limit far above the disk), then the configured limit."""
    node = kit.containers("rabbitmq")[0]
    configured = _rabbitmq_setting(node, "disk_free_limit.absolute")
    assert configured, "disk_free_limit.absolute not found in rabbitmq.conf"
    started = time.time()
    sh(node, "rabbitmqctl -q set_disk_free_limit 100000GB")
    time.sleep(timing.alarm)
    sh(node, f"rabbitmqctl -q set_disk_free_limit {shlex.quote(configured)}")
    return started, time.time()


def redis_restart(kit: Deployment, timing: Timing) -> tuple[float, float]:
    """systemctl restart redis-server on the (first) Redis host: the results and the guard's keys go away and back."""
    started = time.time()
    _systemctl(kit.containers("redis")[0], "restart", "redis-server")
    return started, time.time()


def _address(name: str, network: str) -> str:
    out = subprocess.run(
        ["docker", "inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip()


def network(kit: Deployment) -> str:
    """The deployment's Docker network (playbooks/tasks/local-host.yml)."""
    return f"celery-kit-{kit.name}"


def sentinel_primary(kit: Deployment) -> str:
    """The Redis host Sentinel names as the primary (get-master-addr-by-name)."""
    hosts = kit.containers("redis")
    # Sentinel's own rewrites of its file quote the password.
    auth = 'REDISCLI_AUTH=$(awk \'$1 == "requirepass" {gsub(/"/, "", $2); print $2}\' /etc/redis/sentinel.conf)'
    out = sh(
        hosts[0],
        f"{auth} redis-cli {kit.redis_cli_tls} --no-auth-warning -p {SENTINEL_PORT} "
        f"sentinel get-master-addr-by-name {SENTINEL_MASTER}",
    )
    address = out.split()[0]
    return next(name for name in hosts if _address(name, network(kit)) == address)


def redis_primary_applies(kit: Deployment) -> str | None:
    hosts = len(kit.containers("redis"))
    return (
        None if hosts >= 3 else f"the deployment has {hosts} Redis host(s); Sentinel failover needs 3 (REDIS_HOSTS=3)"
    )


def redis_primary_lost(kit: Deployment, timing: Timing) -> tuple[float, float]:
    """Stop redis-server on the primary Sentinel names for timing.node_down s; it comes back as a replica."""
    primary = sentinel_primary(kit)
    started = time.time()
    _systemctl(primary, "stop", "redis-server")
    _wait("Sentinel promoting a replica", 120, lambda: sentinel_primary_or_none(kit) not in (None, primary))
    time.sleep(max(0.0, timing.node_down - (time.time() - started)))
    _systemctl(primary, "start", "redis-server")
    return started, time.time()


def sentinel_primary_or_none(kit: Deployment) -> str | None:
    try:
        return sentinel_primary(kit)
    except (AssertionError, StopIteration, IndexError):
        return None


def _api_healthy(kit: Deployment) -> bool:
    api = kit.container("api")
    return (
        sh(
            api,
            f"curl -s -o /dev/null -w '%{{http_code}}' -m 5 {kit.curl_tls} {kit.api_url('/healthz')}",
            check=False,
            timeout=30,
        )
        == "200"
    )


def api_restart_in_outage(kit: Deployment, timing: Timing) -> tuple[float, float]:
    """The whole broker stopped; 10 s in (the outbox, once it exists, holds submissions) the api host restarts."""

    def restart_api() -> None:
        time.sleep(min(10.0, timing.outage / 3))
        subprocess.run(["docker", "restart", kit.container("api")], check=True, capture_output=True, timeout=300)
        _wait("the API answering again", 180, lambda: _api_healthy(kit))

    return _broker_outage(kit, timing.outage, during=restart_api)


def api_from_worker(kit: Deployment) -> str:
    """The api-restart fault posts from the last worker host (the api host itself restarts)."""
    return kit.containers("workers")[-1]


def network_cut(kit: Deployment, timing: Timing) -> tuple[float, float]:
    """Cut the last worker host off the deployment's network for timing.cut s; reconnect it at its fixed address."""
    host = kit.containers("workers")[-1]
    address = _address(host, network(kit))
    started = time.time()
    subprocess.run(["docker", "network", "disconnect", network(kit), host], check=True, capture_output=True)
    try:
        time.sleep(timing.cut)
    finally:
        subprocess.run(
            ["docker", "network", "connect", "--ip", address, network(kit), host], check=True, capture_output=True
        )
    return started, time.time()


FAULTS = [
    Fault("worker-sigkill", "worker pool child SIGKILLed mid-task", worker_sigkill),
    Fault("worker-host-restart", "worker host restarted (docker restart)", worker_host_restart),
    Fault(
        "rabbitmq-node-stop",
        "one RabbitMQ node stopped",
        rabbitmq_node_stop,
        applies=lambda kit: None if len(kit.containers("rabbitmq")) >= 3 else "needs a RabbitMQ cluster of 3",
    ),
    Fault("broker-outage", "every RabbitMQ node stopped", broker_outage),
    Fault("memory-alarm", "RabbitMQ memory alarm", memory_alarm),
    Fault("disk-alarm", "RabbitMQ disk alarm", disk_alarm),
    Fault("redis-restart", "Redis restarted", redis_restart),
    Fault("redis-primary-lost", "Redis primary lost (Sentinel)", redis_primary_lost, applies=redis_primary_applies),
    Fault(
        "api-restart-in-outage",
        "api host restarted during a broker outage",
        api_restart_in_outage,
        load_host=api_from_worker,
    ),
    Fault("network-cut", "worker host cut off the network", network_cut),
]
BY_KEY = {fault.key: fault for fault in FAULTS}


def seconds_of(fault: Fault, timing: Timing) -> float:
    """How long the fault lasts by design (the title's figure)."""
    return {
        "rabbitmq-node-stop": timing.node_down,
        "broker-outage": timing.outage,
        "memory-alarm": timing.alarm,
        "disk-alarm": timing.alarm,
        "redis-primary-lost": timing.node_down,
        "api-restart-in-outage": timing.outage,
        "network-cut": timing.cut,
    }.get(fault.key, 0)


# --- counting (pure) ------------------------------------------------------------


def per_second(moments: list[float], start: float, seconds: int) -> list[int]:
    """How many moments fall in each second [start + i, start + i + 1), for i < seconds."""
    counts = [0] * seconds
    for moment in moments:
        index = int(moment - start)
        if 0 <= index < seconds:
            counts[index] += 1
    return counts


def recovery_seconds(
    completions: list[int],
    baseline_rate: float,
    fault_end: int,
    span: int = RECOVERY_SPAN,
    share: float = RECOVERY_SHARE,
) -> int | None:
    """Seconds from fault_end (an index) until completions run at share of the baseline rate.

    The first second from fault_end on that completes at least share of the
    baseline, and with the span of seconds it starts at least share of the
    baseline times span (one lucky second is not a recovery).
    """
    needed = share * baseline_rate
    for start in range(max(0, fault_end), len(completions) - span + 1):
        if completions[start] >= needed and sum(completions[start : start + span]) >= needed * span:
            return start - fault_end
    return None


def count_fault(
    records: list[dict[str, Any]],
    *,
    succeeded: dict[str, float],
    window: tuple[float, float],
    dead_lettered: int,
    emails: dict[str, int],
    skipped: int,
) -> dict[str, Any]:
    """The counts and the per-second timeline of one fault's run, from the load's records.

    records: one per submission (sent, status, wait, id if accepted);
    succeeded: accepted id -> when it finished with SUCCESS; window: the
    fault's wall-clock start and end; emails: mail-sink lines per task id.
    """
    accepted = [record for record in records if 200 <= record["status"] < 300]
    refused = [record for record in records if not 200 <= record["status"] < 300]
    ids = {record["id"] for record in accepted}
    start = min(record["sent"] for record in records)
    finished = [succeeded[task_id] for task_id in ids if task_id in succeeded]
    seconds = int(max([record["sent"] for record in records] + finished + [window[1]]) - start) + 2
    accepted_per_second = per_second([record["sent"] for record in accepted], start, seconds)
    fault_start, fault_end = int(window[0] - start), int(window[1] - start)
    lead = accepted_per_second[1:fault_start] or accepted_per_second[:1]
    baseline = sum(lead) / len(lead)
    completions = per_second(finished, start, seconds)
    refusals: dict[str, int] = {}
    for record in refused:
        refusals[str(record["status"])] = refusals.get(str(record["status"]), 0) + 1
    return {
        "accepted": len(accepted),
        "refused": len(refused),
        "refusals": refusals,
        "lost": len(ids - set(succeeded)),
        "dead_lettered": dead_lettered,
        "emails_sent_twice": sum(count - 1 for task_id, count in emails.items() if task_id in ids and count > 1),
        "redelivered_skipped": skipped,
        "longest_wait_2xx_s": round(max((record["wait"] for record in accepted), default=0.0), 2),
        "recovery_s": recovery_seconds(completions, baseline, fault_end),
        "baseline_per_s": round(baseline, 1),
        "fault_window_s": [round(window[0] - start, 1), round(window[1] - start, 1)],
        "timeline": {
            "accepted": accepted_per_second,
            "refused": per_second([record["sent"] for record in refused], start, seconds),
            "completed": completions,
        },
    }


# Faults that take the only api host down: while it boots a client gets no
# connection (status 0: nothing was accepted, and a client retries it), which
# is not the API refusing a submission. Any answer but a 2xx still counts.
API_HOST_DOWN_FAULTS = {"api-restart-in-outage"}


def violations(result: dict[str, Any]) -> list[str]:
    """What broke the guarantee: anything lost, dead-lettered, refused by the API or emailed twice."""
    counts = dict(result["counts"])
    if result["fault"] in API_HOST_DOWN_FAULTS:
        counts["refused"] -= counts["refusals"].get("0", 0)
    found = [f"{counts[key]} {text}" for key, text in VIOLATIONS if counts[key]]
    if counts["accepted"] == 0:
        found.append("nothing accepted")
    return found


VIOLATIONS = [
    ("lost", "accepted tasks lost"),
    ("dead_lettered", "tasks dead-lettered"),
    ("refused", "submissions refused"),
    ("emails_sent_twice", "welcome emails sent twice"),
]


# --- running a fault --------------------------------------------------------------


def _load_command(kit: Deployment, host: str) -> str:
    if host == kit.container("api"):
        return LOAD
    api = _address(kit.container("api"), network(kit))
    return f"env CELERY_KIT_LOADGEN_API={kit.api_url('/tasks', api)} {LOAD}"


def _loadgen(kit: Deployment, host: str, *args: str, timeout: float = 600) -> dict[str, Any]:
    out = sh(host, f"{_load_command(kit, host)} {' '.join(args)}", timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def run_fault(kit: Deployment, fault: Fault, timing: Timing = FULL) -> dict[str, Any]:
    """Inject one fault under load and count it; the result has the counts and the timeline."""
    result: dict[str, Any] = {"fault": fault.key, "title": fault.title, "seconds": seconds_of(fault, timing)}
    reason = fault.applies(kit)
    if reason:
        return {**result, "applicable": False, "reason": reason}
    host = fault.load_host(kit)
    base = f"/root/chaos-{fault.key}"
    ids, stop, output = f"{base}.ids", f"{base}.stop", f"{base}.out"
    sh(host, f"rm -f {base}.*")
    dead_before = dead_letters(kit)
    put_file(host, f"{base}.bodies", json.dumps(BODIES))
    if host != kit.container("api"):
        kit.share_api_token(host)
    command = (
        f"timeout {int(timing.lead + 900)} {_load_command(kit, host)} steady {ids} {stop} {timing.rate} @{base}.bodies"
    )
    sh(host, f"nohup sh -c {shlex.quote(command + ' > ' + output)} >/dev/null 2>&1 &")
    try:
        time.sleep(timing.lead)
        window = fault.inject(kit, timing)
        time.sleep(timing.settle)
    finally:
        sh(host, f"touch {stop}")
    _wait("the load generator stopping", 60, lambda: sh(host, f"cat {output} 2>/dev/null || true").strip() != "")
    deadline = time.monotonic() + timing.drain
    report = _loadgen(kit, host, "check", ids)
    while report["missing"] and time.monotonic() < deadline:
        time.sleep(5)
        report = _loadgen(kit, host, "check", ids)
    records = [json.loads(line) for line in sh(host, f"cat {ids}.records").splitlines() if line.strip()]
    succeeded = _loadgen(kit, host, "finished", ids)["finished"]
    dead_after = dead_letters(kit)
    counts = count_fault(
        records,
        succeeded=succeeded,
        window=window,
        dead_lettered=dead_after - dead_before,
        emails=dict(kit.welcome_emails_sent()),
        skipped=report["duplicate_executions_skipped"],
    )
    counts["states"] = report["states"]
    return {**result, "applicable": True, "timing": asdict(timing), "counts": counts}


def verdict(result: dict[str, Any]) -> tuple[str, str]:
    """What a test makes of a result: "not applicable", "failed" or "passed", and why."""
    if not result["applicable"]:
        return "not applicable", result["reason"]
    found = violations(result)
    if not found:
        return "passed", ""
    return "failed", f"{result['title']}: " + "; ".join(
        found
    ) + f" (refusals by status: {result['counts']['refusals']})"


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The result without its timeline, for a one-line log."""
    counts = {key: value for key, value in result.get("counts", {}).items() if key != "timeline"}
    return {**result, "counts": counts} if counts else result


def deployment_hosts(kit: Deployment) -> dict[str, int]:
    """How many hosts of each group the deployment runs."""
    groups = ("rabbitmq", "redis", "workers", "api", "monitoring")
    return {group: len(kit.containers(group)) for group in groups if kit.containers(group)}
