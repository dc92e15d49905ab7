#!/usr/bin/env python3
"""Benchmark of make migrate. Reports figures; it does not judge them.

    celery-kit bench-migration [--messages 100000]
        [--rabbitmq-hosts 3] [--keep]

It creates its own local deployment (KIT_LOCAL_DEPLOYMENT=bench, network
172.30.15.0/24, no published ports) on the Redis broker with RabbitMQ hosts
(as make migrate RABBITMQ_HOSTS=3 adds them), then measures in three runs of
the playbooks:

1. the move: the workers are stopped, a backlog of --messages tasks is
   queued in Redis, and playbooks/migrate-broker.yml moves it (step 3 starts
   the workers on RabbitMQ): messages moved per second;
2. the way back: the workers are stopped again, a second backlog of
   --messages tasks is queued in RabbitMQ, and make rollback-broker's
   playbook moves it to Redis;
3. the switch under load: the workers run, a submitter posts to the API 20
   times a second, a monitor counts twice a second the worker processes
   running on every worker host, and the migration runs again: producer
   errors, seconds with no worker process running, and how many accepted
   tasks have not run two minutes after the playbook ends.

Prints the figures as JSON, then removes the deployment (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time

from celery_kit.local import APP, Deployment, sh

DEPLOYMENT = "bench"
KIT = Deployment(DEPLOYMENT)
container = KIT.container
EXTRA = ["-e", "local_network_prefix=172.30.15"]
# Moving a large backlog takes long; a playbook gets this much.
PLAYBOOK_TIMEOUT_SECONDS = 4 * 3600

ENQUEUE = """
import sys, time
from celery_kit.app import app
count = int(sys.argv[1])
started = time.monotonic()
with app.producer_or_acquire() as producer:
    for i in range(count):
        app.send_task("add", args=[i, 0], producer=producer)
print(round(time.monotonic() - started, 1))
"""


def playbook(*args: str) -> str:
    """A playbook against the benchmark's deployment; the benchmark stops when one fails."""
    result = KIT.playbook(*EXTRA, *args, timeout=PLAYBOOK_TIMEOUT_SECONDS)
    if result.returncode != 0:
        print(result.stdout[-5000:], result.stderr[-2000:])
        raise SystemExit(f"playbook failed: {args}")
    return result.stdout


class Monitor(threading.Thread):
    """Counts running worker processes on every worker host twice a second."""

    def __init__(self, hosts: list[str]) -> None:
        super().__init__(daemon=True)
        self.hosts = hosts
        self.stop = threading.Event()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            running = 0
            for host in self.hosts:
                out = subprocess.run(
                    [
                        "docker",
                        "exec",
                        host,
                        "systemctl",
                        "list-units",
                        "celery-worker-*@*",
                        "--state=running",
                        "--no-legend",
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                running += len([line for line in out.splitlines() if line.strip()])
            self.samples.append((time.monotonic(), running))
            time.sleep(0.5)

    def seconds_without_worker(self) -> float:
        gap = 0.0
        for (when, running), (later, _) in zip(self.samples, self.samples[1:], strict=False):
            if running == 0:
                gap += later - when
        return round(gap, 1)


def queue_backlog(workers: list[str], messages: int, broker: str) -> None:
    """Stop the workers, then queue messages on the deployment's current broker."""
    for worker in workers:
        sh(worker, "systemctl stop celery-workers.target")
    seconds = sh(workers[0], f"{APP} -c '{ENQUEUE}' {messages}", timeout=PLAYBOOK_TIMEOUT_SECONDS).strip()
    print(f"--- queued {messages} messages in {broker} in {seconds} s", flush=True)


def report(output: str) -> dict:
    """The mover's figures from the playbook's final report."""
    moved = re.search(r"Moved: (\d+)\s+in ([0-9.]+) s\s+\((\d+) messages/s\)", re.sub(r"\s+", " ", output))
    if not moved:
        return {"moved": None}
    return {"moved": int(moved.group(1)), "seconds": float(moved.group(2)), "per_second": int(moved.group(3))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="celery-kit bench-migration", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rabbitmq-hosts", type=int, default=3, help="RabbitMQ cluster size (1, or 3 and more)")
    parser.add_argument("--keep", action="store_true", help="keep the deployment afterwards")
    args = parser.parse_args(argv)

    playbook(
        "-e", "celery_broker=redis", "-e", f"local_rabbitmq_hosts={args.rabbitmq_hosts}", "playbooks/local-hosts.yml"
    )
    playbook("-e", "celery_broker=redis", "playbooks/site.yml")
    workers = [container("workers", 1), container("workers", 2)]

    # 1. The move of a backlog nobody consumes meanwhile.
    queue_backlog(workers, args.messages, "Redis")
    forward = report(playbook("-e", "migration_target=rabbitmq", "playbooks/migrate-broker.yml"))

    # 2. Back to Redis: a second backlog joins, with the workers stopped,
    # what the RabbitMQ workers have not consumed of the first (the playbook's
    # switch steps take minutes, during which they would drain RabbitMQ).
    queue_backlog(workers, args.messages, "RabbitMQ")
    backward = report(playbook("-e", "migration_target=redis", "playbooks/migrate-broker.yml"))

    # 3. The switch under load, workers running.
    monitor = Monitor(workers)
    monitor.start()
    steady = f"{APP} -m celery_kit.loadgen steady /root/steady-ids /root/stop 20 > /root/steady.json"
    sh(container("api"), f"rm -f /root/stop; nohup sh -c '{steady}' >/dev/null 2>&1 &")
    started = time.monotonic()
    playbook("-e", "migration_target=rabbitmq", "playbooks/migrate-broker.yml")
    migration_seconds = time.monotonic() - started
    sh(container("api"), "touch /root/stop; sleep 2")
    monitor.stop.set()
    monitor.join()
    submitter = json.loads(sh(container("api"), "cat /root/steady.json"))
    outcome = KIT.wait_until_all_ran("/root/steady-ids", timeout=120)

    figures = {
        "backlog_queued": args.messages,
        "redis_to_rabbitmq": forward,
        "rabbitmq_to_redis": backward,
        "switch_under_load": {
            "migration_seconds": round(migration_seconds, 1),
            "seconds_without_a_running_worker": monitor.seconds_without_worker(),
            "worker_samples": len(monitor.samples),
            "submissions_accepted": submitter["accepted"],
            "producer_errors": submitter["failures"],
            "accepted_not_run_after_wait": outcome["missing"],
            "duplicate_executions_skipped": outcome["duplicate_executions_skipped"],
            "result_states": outcome["states"],
        },
    }
    print(json.dumps(figures, indent=2))
    if not args.keep:
        playbook("playbooks/local-hosts-destroy.yml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
