"""make bench, on the hosts: one broker configuration's figures.

playbooks/bench.yml runs it on the first api host with the app's Python and
environment, once per configuration, while bench workers (the deployment's
app, release and settings, started beside the deployed workers and pointed
at the benchmark's own broker) run on the worker hosts. FILE is the
benchmark's deployment settings of the configuration, which the playbook
writes.

  python -m celery_kit.brokerbench celery FILE WORKLOAD --tasks N
      --threads P --paced-tasks M --paced-rate R --workers W [--plain]
      Celery through the bench workers: publish N tasks from P threads
      (publish rate, end-to-end rate), then M tasks at R a second from one
      thread (latency from submit to start and to result); --plain: the task
      without the at-most-once guard
  python -m celery_kit.brokerbench raw FILE --messages N --threads P
      kombu without Celery, on the same broker with the same durability:
      persistent messages published (confirmed one by one on RabbitMQ) from
      P threads, then consumed with one acknowledgement each

Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# What each workload submits: (share, sleep seconds, countdown, priority).
WORKLOADS: dict[str, list[tuple[float, float, int, int | None]]] = {
    "noop": [(1.0, 0.0, 0, None)],
    "sleep10ms": [(1.0, 0.01, 0, None)],
    # Mostly 10 ms tasks; a fifth urgent (priority 9); a tenth due in 2 s.
    "mixed": [(0.7, 0.01, 0, None), (0.2, 0.01, 0, 9), (0.1, 0.01, 2, None)],
}
# A raw message about the size of a Celery task message's body and headers.
RAW_BODY = {"task": "bench", "args": [0, 0.0], "padding": "x" * 400}
RESULT_PREFIX = "celery-task-meta-"
WAIT_SECONDS = 300


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 in milliseconds (nearest rank), None without values."""
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    ordered = sorted(values)

    def rank(share: float) -> float:
        index = min(len(ordered) - 1, max(0, int(share * len(ordered) + 0.999999) - 1))
        return round(ordered[index] * 1000, 1)

    return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99)}


def plan(workload: str, count: int, seed: int = 7) -> list[tuple[float, int, int | None]]:
    """count submissions of the workload (sleep, countdown, priority), in a fixed random order."""
    shares = WORKLOADS[workload]
    picker = random.Random(seed)  # noqa: S311 (a repeatable mix, not a secret)
    weights = [share for share, *_ in shares]
    return [tuple(picker.choices(shares, weights)[0][1:]) for _ in range(count)]


def _date_done(meta: dict[str, Any]) -> float | None:
    value = meta.get("date_done")
    if not value:
        return None
    done = datetime.fromisoformat(value)
    if done.tzinfo is None:
        done = done.replace(tzinfo=UTC)
    return done.timestamp()


class Run:
    """Submissions of one run: id, submit time, due time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted: dict[str, tuple[float, float]] = {}
        self.errors = 0

    def record(self, task_id: str, submitted: float, countdown: int) -> None:
        with self.lock:
            self.submitted[task_id] = (submitted, submitted + countdown)


def publish(task: Any, submissions: list, threads: int, run: Run, rate: float | None = None) -> float:
    """Publish the submissions from threads (paced at rate a second overall when given); the seconds taken."""
    shares = [submissions[index::threads] for index in range(threads)]
    started = time.monotonic()

    def submit(share: list, offset: int) -> None:
        for position, (sleep, countdown, priority) in enumerate(share):
            if rate:
                due = started + (position * threads + offset) / rate
                time.sleep(max(0.0, due - time.monotonic()))
            options: dict[str, Any] = {}
            if countdown:
                options["countdown"] = countdown
            if priority is not None:
                options["priority"] = priority
            submitted = time.time()
            try:
                result = task.apply_async(args=[sleep, submitted], **options)
            except Exception:  # counted: a benchmark reports failures, it does not stop
                with run.lock:
                    run.errors += 1
                continue
            run.record(result.id, submitted, countdown)

    workers = [threading.Thread(target=submit, args=(share, index)) for index, share in enumerate(shares)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.monotonic() - started


def collect(results: Any, run: Run, timeout: float) -> dict[str, tuple[float, float]]:
    """Wait until every submitted task has a successful result; its start and result times."""
    pending = set(run.submitted)
    finished: dict[str, tuple[float, float]] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        batch = sorted(pending)
        for start in range(0, len(batch), 500):
            ids = batch[start : start + 500]
            for task_id, raw in zip(ids, results.mget([RESULT_PREFIX + i for i in ids]), strict=True):
                if raw is None:
                    continue
                meta = json.loads(raw)
                if meta.get("status") != "SUCCESS":
                    continue
                done = _date_done(meta)
                finished[task_id] = (float(meta["result"]["started"]), done if done is not None else time.time())
                pending.discard(task_id)
        if pending:
            time.sleep(0.2)
    return finished


def figures(run: Run, finished: dict[str, tuple[float, float]]) -> dict[str, Any]:
    to_start = [finished[i][0] - run.submitted[i][1] for i in finished]
    to_result = [finished[i][1] - run.submitted[i][1] for i in finished]
    return {
        "accepted": len(run.submitted),
        "publish_errors": run.errors,
        "not_finished": len(run.submitted) - len(finished),
        "submit_to_start": percentiles([max(value, 0.0) for value in to_start]),
        "submit_to_result": percentiles([max(value, 0.0) for value in to_result]),
    }


def wait_for_workers(app: Any, expected: int, timeout: float = 120) -> int:
    """Wait until expected bench workers answer a ping; how many did."""
    deadline = time.monotonic() + timeout
    answered = 0
    while time.monotonic() < deadline:
        answered = len(app.control.ping(timeout=1.0) or [])
        if answered >= expected:
            return answered
        time.sleep(1)
    raise SystemExit(f"only {answered} of {expected} bench workers answered within {timeout:.0f} s")


def celery_main(args: argparse.Namespace) -> dict[str, Any]:
    import os  # noqa: PLC0415

    from celery_kit import redisurl  # noqa: PLC0415

    os.environ["CELERY_KIT_DEPLOYMENT"] = args.file
    from celery_kit.boot import load, producer_mode  # noqa: PLC0415

    app = load()
    # Publish as the API does: no result subscriptions, no waits for Redis.
    producer_mode(app)
    deployment = app.conf.celery_kit
    results = redisurl.connect(deployment["result_backend"])
    workers = wait_for_workers(app, args.workers)
    task_name = "celery_kit.bench" if args.plain else "celery_kit.bench_guarded"

    # Throughput: everything at once from the producer threads.
    load_run = Run()
    submissions = plan(args.workload, args.tasks)
    started = time.time()
    publish_seconds = publish(app.tasks[task_name], submissions, args.threads, load_run)
    finished = collect(results, load_run, WAIT_SECONDS)
    last = max((done for _, done in finished.values()), default=time.time())
    throughput = figures(load_run, finished)
    throughput["publish_per_second"] = round(len(load_run.submitted) / publish_seconds, 1)
    throughput["end_to_end_per_second"] = round(len(finished) / max(last - started, 1e-6), 1)

    # Latency: a steady rate well below the throughput, one thread.
    paced_run = Run()
    publish(app.tasks[task_name], plan(args.workload, args.paced_tasks, seed=11), 1, paced_run, rate=args.paced_rate)
    latency = figures(paced_run, collect(results, paced_run, WAIT_SECONDS))
    latency["rate_per_second"] = args.paced_rate
    return {
        "broker": deployment["broker"],
        "queue_type": None if deployment["broker"] == "redis" else deployment["queues"][0].get("type"),
        "workload": args.workload,
        "task": task_name,
        "workers": workers,
        "threads": args.threads,
        "throughput": throughput,
        "latency": latency,
    }


def raw_main(args: argparse.Namespace) -> dict[str, Any]:
    from kombu import Connection, Exchange, Queue  # noqa: PLC0415

    from celery_kit import deployment as deployment_module  # noqa: PLC0415
    from celery_kit import redisurl  # noqa: PLC0415
    from celery_kit.topology import queue_arguments  # noqa: PLC0415

    deployment = deployment_module.load(args.file)
    rabbitmq = deployment["broker"] == "rabbitmq"
    # The Redis broker through Sentinel (several Redis hosts): every
    # Sentinel, and the group's name in the transport options.
    url = deployment_module.broker_urls(deployment)[0] if rabbitmq else redisurl.celery_url(deployment["broker_url"])
    options = {"confirm_publish": True} if rabbitmq else redisurl.transport_options(deployment["broker_url"])
    kind = deployment["queues"][0].get("type") if rabbitmq else None
    exchange = Exchange("bench-raw", type="direct", durable=True)
    queue = Queue(
        "bench-raw",
        exchange,
        routing_key="bench-raw",
        durable=True,
        queue_arguments=queue_arguments({"type": kind}) if rabbitmq else None,
    )
    with Connection(url, transport_options=options) as connection:
        queue(connection.default_channel).declare()
        queue(connection.default_channel).purge()
    body = json.dumps(RAW_BODY)
    errors = [0]

    def send(count: int) -> None:
        with Connection(url, transport_options=options) as connection:
            producer = connection.Producer(serializer="json")
            for _ in range(count):
                try:
                    producer.publish(
                        body,
                        exchange=exchange,
                        routing_key="bench-raw",
                        delivery_mode=2,
                        content_type="application/json",
                    )
                except Exception:  # counted
                    errors[0] += 1

    per_thread = [
        args.messages // args.threads + (1 if i < args.messages % args.threads else 0) for i in range(args.threads)
    ]
    threads = [threading.Thread(target=send, args=(count,)) for count in per_thread]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    publish_seconds = time.monotonic() - started

    received = [0]
    started = time.monotonic()
    with Connection(url, transport_options=options) as connection:

        def handle(_body: Any, message: Any) -> None:
            message.ack()
            received[0] += 1

        with connection.Consumer(queue, callbacks=[handle], prefetch_count=100, accept=["json"]):
            deadline = time.monotonic() + WAIT_SECONDS
            while received[0] < args.messages - errors[0] and time.monotonic() < deadline:
                try:
                    connection.drain_events(timeout=2)
                except TimeoutError:
                    continue
    consume_seconds = time.monotonic() - started
    with Connection(url, transport_options=options) as connection:
        queue(connection.default_channel).delete()
    return {
        "broker": deployment["broker"],
        "queue_type": kind,
        "messages": args.messages,
        "threads": args.threads,
        "publish_errors": errors[0],
        "publish_per_second": round((args.messages - errors[0]) / publish_seconds, 1),
        "consumed": received[0],
        "consume_per_second": round(received[0] / max(consume_seconds, 1e-6), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m celery_kit.brokerbench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    through_celery = commands.add_parser("celery", help="Celery through the bench workers")
    through_celery.add_argument("file")
    through_celery.add_argument("workload", choices=sorted(WORKLOADS))
    through_celery.add_argument("--tasks", type=int, default=2000)
    through_celery.add_argument("--threads", type=int, default=4)
    through_celery.add_argument("--paced-tasks", type=int, default=200)
    through_celery.add_argument("--paced-rate", type=float, default=20.0)
    through_celery.add_argument("--workers", type=int, required=True, help="bench workers to wait for")
    through_celery.add_argument("--plain", action="store_true", help="the task without the at-most-once guard")
    raw = commands.add_parser("raw", help="kombu without Celery")
    raw.add_argument("file")
    raw.add_argument("--messages", type=int, default=5000)
    raw.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    for name in ("tasks", "threads", "paced_tasks", "messages", "workers"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.command == "celery":
        print(json.dumps(celery_main(args)))
        return 0
    if not Path(args.file).exists():
        parser.error(f"{args.file} does not exist")
    print(json.dumps(raw_main(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
