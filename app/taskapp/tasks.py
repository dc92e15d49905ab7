"""The sample tasks.

Each runs at most once in effect per task id, with two keys in Redis db 2
(the locks database):

- taskapp:running:<id>, a lease taken (SET NX) before the task runs and
  renewed while it runs; a second delivery of the same id waits while
  another process holds it. A worker killed mid-task stops renewing, so its
  lease lapses within LEASE_SECONDS and the redelivered message runs then.
- taskapp:done:<id>, the result of a finished id, kept as long as results;
  a later delivery of a finished id is skipped, counted in the hash
  taskapp:duplicates, and returns the recorded result.

That makes redelivery after a worker crash, or a message moved twice between
brokers, harmless, even when both copies reach two workers at the same time.
"""

from __future__ import annotations

import fcntl
import json
import re
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import redis
from celery import Task, shared_task
from celery.utils.log import get_task_logger

logger = get_task_logger(__name__)

EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s]+$")
MAX_PROCESS_SECONDS = 60
DONE_KEY = "taskapp:done:{}"
DUPLICATE_KEY = "taskapp:duplicates"
RUNNING_KEY = "taskapp:running:{}"
# How long a lease outlives a process that stopped renewing it (killed).
LEASE_SECONDS = 20
LEASE_RENEW_SECONDS = 5
LEASE_POLL_SECONDS = 0.5
# Renew or release the lease only while it is still ours.
RENEW_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('expire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class PoisonError(RuntimeError):
    """Raised by the poison task, every time."""


class IdempotentTask(Task):
    """A task that runs under a lease in Redis db 2, records finished ids there and skips repeats."""

    @cached_property
    def locks(self) -> redis.Redis | None:
        url = self.app.conf.taskapp.get("locks_url")
        return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) if url else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if self.locks is None or task_id is None:
            return super().__call__(*args, **kwargs)
        done_key = DONE_KEY.format(task_id)
        lease = Lease(self.locks, RUNNING_KEY.format(task_id))
        waited = False
        while True:
            previous = self.locks.get(done_key)
            if previous is not None:
                logger.warning("task %s already ran; skipping this duplicate delivery", task_id)
                self.locks.hincrby(DUPLICATE_KEY, task_id, 1)
                return json.loads(previous)
            if lease.acquire():
                break
            if not waited:
                logger.warning("task %s is running in another process; waiting for it", task_id)
                waited = True
            time.sleep(LEASE_POLL_SECONDS)
        try:
            result = super().__call__(*args, **kwargs)
            self.locks.set(done_key, json.dumps(result), ex=self.app.conf.taskapp["result_expires"])
        finally:
            lease.release()
        return result


class Lease:
    """taskapp:running:<id>: held by one process, renewed by a thread while it runs."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key
        self.token = uuid.uuid4().hex
        self.stopped = threading.Event()
        self.renewer: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self.client.set(self.key, self.token, nx=True, ex=LEASE_SECONDS):
            return False
        self.renewer = threading.Thread(target=self._renew, name=f"lease {self.key}", daemon=True)
        self.renewer.start()
        return True

    def _renew(self) -> None:
        while not self.stopped.wait(LEASE_RENEW_SECONDS):
            try:
                self.client.eval(RENEW_IF_OURS, 1, self.key, self.token, LEASE_SECONDS)
            except redis.RedisError as error:  # the next round tries again
                logger.warning("could not renew %s: %s", self.key, error)

    def release(self) -> None:
        self.stopped.set()
        if self.renewer is not None:
            self.renewer.join()
        try:
            self.client.eval(RELEASE_IF_OURS, 1, self.key, self.token)
        except redis.RedisError as error:  # it lapses on its own
            logger.warning("could not release %s: %s", self.key, error)


@shared_task(base=IdempotentTask, name="add")
def add(x: float, y: float) -> float:
    """Add two numbers."""
    return x + y


@shared_task(base=IdempotentTask, bind=True, name="send_welcome_email")
def send_welcome_email(self: Task, email: str) -> dict[str, str]:
    """Write a welcome email to the mail sink file; nothing leaves the host."""
    if not EMAIL_PATTERN.match(email):
        raise ValueError(f"not an email address: {email!r}")
    record = {
        "to": email,
        "subject": "Welcome!",
        "task_id": self.request.id,
        "sent_at": datetime.now(UTC).isoformat(),
    }
    with open(self.app.conf.taskapp["mail_sink"], "a", encoding="utf-8") as sink:
        fcntl.flock(sink, fcntl.LOCK_EX)
        sink.write(json.dumps(record) + "\n")
    return {"to": email, "status": "written to mail sink"}


@shared_task(base=IdempotentTask, name="process_task")
def process_task(data: dict[str, Any]) -> dict[str, Any]:
    """Pretend to process a document; data["seconds"] makes it take that long."""
    seconds = float(data.get("seconds", 0))
    time.sleep(min(max(seconds, 0.0), MAX_PROCESS_SECONDS))
    return {"keys": sorted(data), "processed_by": socket.gethostname()}


@shared_task(
    name="poison",
    autoretry_for=(PoisonError,),
    max_retries=2,
    default_retry_delay=1,
)
def poison() -> None:
    """Always fail: retried twice, then rejected into the dead-letter queue."""
    raise PoisonError("poison always fails")
