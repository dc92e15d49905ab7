"""A durable outbox for task submissions: accepted while the broker is away, sent once it is back.

A producer (the kit's API, a team's own web app) submits a task with
``submit``. When the broker takes it (publisher confirm on RabbitMQ) nothing
is stored. When it does not (unreachable, or blocking publishers during a
memory or disk alarm: the confirm does not come within a few seconds), the
submission is written to a SQLite file on the producer's host, fsynced,
before ``submit`` returns: the caller may answer "accepted". While the
outbox holds anything, new submissions join it behind the others, so they
reach the broker in the order they were accepted.

A relay (``celery-kit outbox relay``, one service per producer host) sends
the stored submissions in order as soon as the broker takes them, with the
same task id, queue and priority, and the countdown kept as an absolute due
time. A submission leaves the outbox only after the broker confirmed it: a
crash between the confirm and the delete sends it again, with the same id,
and the at-most-once guard (celery_kit.guard) runs it once.

Why SQLite: it is in Python's standard library, its transactions survive a
crash or a power loss (WAL journal, synchronous=FULL: a commit returns once
it is on disk), several processes (gunicorn's workers and the relay) share
one file safely, and a damaged file is reported as such instead of being
half-read. An append-only file of our own would need its own framing,
fsync, locking and compaction to be as safe.

The outbox is bounded (max_entries, max_bytes): a full outbox refuses new
submissions (OutboxFull) and keeps everything it already accepted.

    from celery_kit import outbox

    box = outbox.for_app(celery_app)             # the deployment's outbox
    receipt = outbox.submit(celery_app, box, "users.send_welcome_email", ["ada"])
    receipt.id, receipt.stored                   # stored: waiting in the outbox
    outbox.state(celery_app, box, receipt.id)    # "STORED", or Celery's state
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import amqp.exceptions
import kombu.exceptions
import redis.exceptions

from celery_kit import deployment
from celery_kit.topology import broker_priority

log = logging.getLogger("celery_kit.outbox")

# The state GET /tasks/<id> reports for a submission still in the outbox.
STORED = "STORED"
# The bounds' defaults: the deployment's (celery_kit.deployment).
DEFAULT_MAX_ENTRIES = deployment.DEFAULTS["outbox"]["max_entries"]
DEFAULT_MAX_BYTES = deployment.DEFAULTS["outbox"]["max_bytes"]
# How long a producer waits for the broker's confirm before it stores the
# submission instead (a broker under a memory or disk alarm takes the
# message and never confirms it). The relay waits longer: it has no user
# waiting.
SUBMIT_CONFIRM_TIMEOUT = 2.0
RELAY_CONFIRM_TIMEOUT = 10.0
# Publish retries a submission makes before it is stored (each RabbitMQ node
# of a cluster of 3 is tried once; a Redis broker's failover is not waited out).
SUBMIT_MAX_RETRIES = 3
# Seconds SQLite waits for another process's write lock before it gives up.
LOCK_TIMEOUT = 10.0

# What a publish raises when the broker does not take the message: kombu
# wraps connection errors (after its retries) in OperationalError; socket
# errors and a confirm that does not come in time are OSErrors; a nack or a
# closed channel are AMQP errors; the Redis broker raises its own.
PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.OperationalError,
    OSError,
    amqp.exceptions.AMQPError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    stored_at REAL NOT NULL
);
-- Entries the relay could not read back: kept, reported, never sent or dropped.
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    body TEXT NOT NULL,
    stored_at REAL NOT NULL,
    error TEXT NOT NULL
);
-- One row: the count and size of the submissions, kept by the triggers, so
-- the bound is checked without scanning the table.
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals (id, entries, bytes) VALUES (1, 0, 0);
CREATE TRIGGER IF NOT EXISTS submissions_added AFTER INSERT ON submissions BEGIN
    UPDATE totals SET entries = entries + 1, bytes = bytes + length(NEW.body) WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS submissions_removed AFTER DELETE ON submissions BEGIN
    UPDATE totals SET entries = entries - 1, bytes = bytes - length(OLD.body) WHERE id = 1;
END;
"""


class OutboxError(RuntimeError):
    """The outbox cannot take a submission; the message says why."""


class OutboxFull(OutboxError):
    """The outbox holds its maximum: nothing new is accepted until the relay sends some."""


class OutboxUnavailable(OutboxError):
    """The outbox file cannot be opened, read or written (permissions, disk full, damaged)."""


@dataclass(frozen=True)
class Submission:
    """A task as the producer submitted it; due is an absolute time (epoch seconds)."""

    task: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    due: float | None = None
    # On the kit's scale (0-9, 9 most urgent), translated for the broker when sent.
    priority: int | None = None
    queue: str | None = None

    def encode(self) -> str:
        try:
            return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"task {self.task} {self.id}: its arguments are not JSON: {exc}") from exc

    @classmethod
    def decode(cls, body: str) -> Submission:
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("task"), str) or not isinstance(data.get("id"), str):
            raise ValueError("not a stored submission")
        return cls(**data)


@dataclass(frozen=True)
class Receipt:
    """What submit did: the task's id, and whether it waits in the outbox."""

    id: str
    stored: bool


class Outbox:
    """The outbox file: one connection per thread, created on first use."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        durable_deletes: bool = True,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("the outbox's max_entries and max_bytes must be positive")
        self.path = Path(path)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # The relay's deletes may skip the fsync (synchronous=NORMAL): a
        # power loss can bring back a sent entry, which is sent again with
        # its id (a duplicate the guard absorbs), never lose one.
        self.durable_deletes = durable_deletes
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={'FULL' if self.durable_deletes else 'NORMAL'}")
                db.executescript(SCHEMA)
            except sqlite3.Error as exc:
                raise self._unavailable("open", exc) from exc
            self._local.db = db
        return db

    def _unavailable(self, doing: str, exc: BaseException) -> OutboxUnavailable:
        error = OutboxUnavailable(f"cannot {doing} the outbox {self.path}: {exc}")
        log.error("%s", error)
        return error

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def store(self, submission: Submission) -> None:
        """Write the submission durably behind the others; OutboxFull when the bound is reached."""
        body = submission.encode()
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                entries, size = db.execute("SELECT entries, bytes FROM totals WHERE id = 1").fetchone()
                if entries >= self.max_entries or size + len(body) > self.max_bytes:
                    raise OutboxFull(
                        f"the outbox is full ({entries} submissions, {size} bytes; limits"
                        f" {self.max_entries} submissions, {self.max_bytes} bytes)"
                    )
                db.execute(
                    "INSERT OR IGNORE INTO submissions (task_id, body, stored_at) VALUES (?, ?, ?)",
                    (submission.id, body, time.time()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._unavailable("write to", exc) from exc

    def depth(self) -> int:
        """How many submissions wait."""
        try:
            return self._db().execute("SELECT entries FROM totals WHERE id = 1").fetchone()[0]
        except sqlite3.Error as exc:
            raise self._unavailable("read", exc) from exc

    def contains(self, task_id: str) -> bool:
        try:
            row = self._db().execute("SELECT 1 FROM submissions WHERE task_id = ?", (task_id,)).fetchone()
        except sqlite3.Error as exc:
            raise self._unavailable("read", exc) from exc
        return row is not None

    def head(self, limit: int) -> list[tuple[int, str]]:
        """The oldest entries, in order, as (seq, encoded submission)."""
        try:
            return self._db().execute("SELECT seq, body FROM submissions ORDER BY seq LIMIT ?", (limit,)).fetchall()
        except sqlite3.Error as exc:
            raise self._unavailable("read", exc) from exc

    def remove(self, seq: int) -> None:
        """The broker confirmed this entry: it leaves the outbox."""
        try:
            self._db().execute("DELETE FROM submissions WHERE seq = ?", (seq,))
        except sqlite3.Error as exc:
            raise self._unavailable("write to", exc) from exc

    def quarantine(self, seq: int, error: str) -> None:
        """Set an unreadable entry aside, kept with the reason (status reports it)."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR REPLACE INTO quarantine (seq, task_id, body, stored_at, error)"
                " SELECT seq, task_id, body, stored_at, ? FROM submissions WHERE seq = ?",
                (error, seq),
            )
            db.execute("DELETE FROM submissions WHERE seq = ?", (seq,))
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise self._unavailable("write to", exc) from exc

    def stats(self) -> dict[str, Any]:
        """Depth, size, age of the oldest entry and quarantined entries (make status shows them)."""
        try:
            db = self._db()
            entries, size = db.execute("SELECT entries, bytes FROM totals WHERE id = 1").fetchone()
            oldest = db.execute("SELECT min(stored_at) FROM submissions").fetchone()[0]
            quarantined = db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        except sqlite3.Error as exc:
            raise self._unavailable("read", exc) from exc
        return {
            "path": str(self.path),
            "depth": entries,
            "bytes": size,
            "oldest_age_seconds": round(time.time() - oldest, 1) if oldest is not None else None,
            "quarantined": quarantined,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
        }


def from_settings(settings: dict[str, Any], durable_deletes: bool = True) -> Outbox | None:
    """The deployment's outbox (its "outbox" key), or None where it has none."""
    config = settings.get("outbox") or {}
    if not config.get("path"):
        return None
    return Outbox(
        config["path"],
        max_entries=config.get("max_entries", DEFAULT_MAX_ENTRIES),
        max_bytes=config.get("max_bytes", DEFAULT_MAX_BYTES),
        durable_deletes=durable_deletes,
    )


def for_app(app: Any) -> Outbox | None:
    """The outbox of a Celery app the kit configured (celery_kit.boot)."""
    return from_settings(app.conf.get("celery_kit") or {})


def _no_retry_after_a_timeout(exc: BaseException, interval: float) -> None:
    """kombu's retry hook: a confirm that did not come in time is a broker that blocks publishers.

    Another node of the same cluster blocks too (alarms are cluster-wide),
    so the publish gives up at once (the submission goes to the outbox)
    instead of trying every node, each for the whole confirm timeout. A
    refused connection is still retried on the next node.
    """
    del interval
    if isinstance(exc, TimeoutError):
        raise exc


def publish(app: Any, submission: Submission, confirm_timeout: float, retry_policy: dict | None = None) -> None:
    """Send a submission to the broker now; returns once the broker confirmed it (raises otherwise)."""
    options: dict[str, Any] = {}
    if submission.due is not None:
        remaining = submission.due - time.time()
        if remaining > 0:
            options["countdown"] = math.ceil(remaining - 1e-6)
    if submission.priority is not None:
        broker = (app.conf.get("celery_kit") or {}).get("broker", "rabbitmq")
        options["priority"] = broker_priority(submission.priority, broker)
    if submission.queue:
        options["queue"] = submission.queue
    options.update(
        task_id=submission.id,
        retry=True,
        retry_policy={**(retry_policy or app.conf.task_publish_retry_policy), "errback": _no_retry_after_a_timeout},
        confirm_timeout=confirm_timeout,
    )
    task = app.tasks.get(submission.task)
    if task is not None:
        task.apply_async(submission.args, submission.kwargs, **options)
    else:
        app.send_task(submission.task, submission.args, submission.kwargs, **options)


def submit(
    app: Any,
    box: Outbox | None,
    task: str,
    args: list[Any] | tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    countdown: float | None = None,
    priority: int | None = None,
    queue: str | None = None,
    task_id: str | None = None,
) -> Receipt:
    """Publish a task, or store it in the outbox when the broker does not take it.

    Returns once the task is either confirmed by the broker or on disk in the
    outbox. Raises OutboxFull or OutboxUnavailable (nothing was accepted)
    when it can be neither; without an outbox (box None), the publish error.
    """
    if priority is not None:
        broker_priority(priority, "rabbitmq")  # refused now (ValueError), not once stored
    submission = Submission(
        task=task,
        id=task_id or str(uuid.uuid4()),
        args=list(args),
        kwargs=dict(kwargs or {}),
        due=time.time() + countdown if countdown else None,
        priority=priority,
        queue=queue,
    )
    if box is None:
        publish(app, submission, SUBMIT_CONFIRM_TIMEOUT)
        return Receipt(submission.id, stored=False)
    submission.encode()  # arguments that cannot be stored are refused before anything is sent
    try:
        waiting = box.depth()
    except OutboxUnavailable:
        waiting = None  # logged; the broker may still take it
    if not waiting:
        try:
            publish(app, submission, SUBMIT_CONFIRM_TIMEOUT, submit_retry_policy(app))
            return Receipt(submission.id, stored=False)
        except PUBLISH_ERRORS as exc:
            if waiting is None:
                raise OutboxUnavailable(
                    f"the broker did not take task {submission.id} ({exc.__class__.__name__}) and the outbox"
                    f" {box.path} is unavailable"
                ) from exc
            log.warning("the broker did not take task %s (%s): storing it in the outbox", submission.id, exc)
    if submission.queue is None:
        # Resolved here, where the app's task modules are imported: the
        # relay may not import them, and a task's own queue would be missed.
        submission = replace(submission, queue=queue_of(app, task, submission.args, submission.kwargs))
    box.store(submission)
    return Receipt(submission.id, stored=True)


def queue_of(app: Any, task: str, args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """The queue a publish of task would go to: the task's own, else the app's routes; None: the default."""
    registered = app.tasks.get(task)
    if registered is not None and getattr(registered, "queue", None):
        return getattr(registered.queue, "name", registered.queue)
    route = app.amqp.router.route({}, task, args, kwargs, registered)
    queue = route.get("queue")
    return getattr(queue, "name", queue)


def submit_retry_policy(app: Any) -> dict[str, Any]:
    """The app's publish retries, at most SUBMIT_MAX_RETRIES: with an outbox to fall back on, a
    submission need not wait out a failover (the relay sends it once the broker is back)."""
    policy = dict(app.conf.task_publish_retry_policy)
    policy["max_retries"] = min(policy.get("max_retries", SUBMIT_MAX_RETRIES), SUBMIT_MAX_RETRIES)
    return policy


def state(app: Any, box: Outbox | None, task_id: str) -> str:
    """STORED while the submission waits in this host's outbox, else Celery's state of the id."""
    if box is not None:
        try:
            if box.contains(task_id):
                return STORED
        except OutboxUnavailable:
            pass  # logged; the result store may still know the id
    return app.AsyncResult(task_id).state


class Relay:
    """Sends the outbox's submissions to the broker, oldest first, each once it is confirmed."""

    def __init__(self, box: Outbox, send: Callable[[Submission], None], batch: int = 100) -> None:
        self.box = box
        self.send = send
        self.batch = batch
        self.sent = 0

    def drain_once(self) -> int:
        """Send what waits, in order, until the outbox is empty or the broker fails (raises then)."""
        count = 0
        for seq, body in self.box.head(self.batch):
            try:
                submission = Submission.decode(body)
            except (ValueError, TypeError) as exc:
                log.error("outbox entry %s cannot be read back (%s): kept in quarantine, not sent", seq, exc)
                self.box.quarantine(seq, str(exc))
                continue
            try:
                self.send(submission)
            except PUBLISH_ERRORS:
                raise  # the broker does not take it yet: this one first, again, later
            except Exception as exc:  # this entry itself cannot be sent: keep it aside, go on
                log.error("outbox entry %s (task %s) cannot be sent (%r): kept in quarantine", seq, submission.id, exc)
                self.box.quarantine(seq, f"cannot be sent: {exc!r}")
                continue
            # Confirmed: a crash from here to the delete sends it again (same id).
            self.box.remove(seq)
            count += 1
        self.sent += count
        return count

    def run(self, stop: threading.Event, idle: float = 0.2, backoff_max: float = 5.0) -> None:
        """Drain until stop is set: poll while empty, back off while the broker refuses."""
        backoff = 0.5
        while not stop.is_set():
            try:
                sent = self.drain_once()
                backoff = 0.5
                if sent:
                    log.info("relayed %d submissions (%d in all); %d waiting", sent, self.sent, self.box.depth())
                    continue
            except PUBLISH_ERRORS as exc:
                log.warning("the broker does not take the outbox's submissions yet (%s); retrying", exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, backoff_max)
                continue
            except OutboxUnavailable:
                stop.wait(backoff_max)  # logged; nothing is dropped, the file is left as it is
                continue
            stop.wait(idle)


def relay_main(stop: threading.Event | None = None) -> int:
    """celery-kit outbox relay: the deployment's relay, until SIGTERM."""
    import signal  # noqa: PLC0415

    from celery_kit.app import app  # noqa: PLC0415 (loads the deployment's app)
    from celery_kit.boot import producer_mode  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    producer_mode(app)
    box = from_settings(app.conf.celery_kit, durable_deletes=False)
    if box is None:
        print("celery-kit outbox relay: the deployment has no outbox (its settings name no outbox path)")
        return 2
    stop = stop or threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    relay = Relay(box, lambda submission: publish(app, submission, RELAY_CONFIRM_TIMEOUT))
    log.info("relaying %s to the broker", box.path)
    relay.run(stop)
    log.info("stopped after relaying %d submissions", relay.sent)
    return 0


def status_main() -> int:
    """celery-kit outbox status: the outbox's figures as JSON (an "error" key when unreadable)."""
    box = from_settings(deployment.load())
    if box is None:
        print(json.dumps({"enabled": False}))
        return 0
    if box.path.exists() and box.path.stat().st_uid != os.geteuid():
        # Opening it would leave SQLite's side files owned by this user, which
        # the producer could not open: run it as the file's owner (the app's user).
        print(f"celery-kit outbox status: run it as the owner of {box.path} (celery-app-run)", file=sys.stderr)
        return 2
    if not box.path.exists():
        print(json.dumps({"enabled": True, "path": str(box.path), "depth": 0, "oldest_age_seconds": None}))
        return 0
    try:
        print(json.dumps({"enabled": True, **box.stats()}))
    except OutboxUnavailable as exc:
        print(json.dumps({"enabled": True, "path": str(box.path), "error": str(exc)}))
        return 1
    return 0


def main(argv: list[str]) -> int:
    """celery-kit outbox relay | status."""
    if argv == ["relay"]:
        return relay_main()
    if argv == ["status"]:
        return status_main()
    print("usage: celery-kit outbox relay | status", file=sys.stdout if argv in (["-h"], ["--help"]) else sys.stderr)
    return 0 if argv in (["-h"], ["--help"]) else 2
