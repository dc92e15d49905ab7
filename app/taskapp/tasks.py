"""The sample tasks.

Each runs at most once in effect per task id: a finished task id is recorded
in Redis db 2 (the locks database), and a redelivered or duplicated message
of a finished id is skipped. That makes redelivery after a worker crash, or a
message moved twice between brokers, harmless.
"""

from __future__ import annotations

import fcntl
import json
import re
import socket
import time
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


class PoisonError(RuntimeError):
    """Raised by the poison task, every time."""


class IdempotentTask(Task):
    """A task that records its finished ids in Redis db 2 and skips repeats."""

    @cached_property
    def locks(self) -> redis.Redis | None:
        url = self.app.conf.taskapp.get("locks_url")
        return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) if url else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if self.locks is None or task_id is None:
            return super().__call__(*args, **kwargs)
        done_key = DONE_KEY.format(task_id)
        previous = self.locks.get(done_key)
        if previous is not None:
            logger.warning("task %s already ran; skipping this duplicate delivery", task_id)
            self.locks.hincrby(DUPLICATE_KEY, task_id, 1)
            return json.loads(previous)
        result = super().__call__(*args, **kwargs)
        self.locks.set(done_key, json.dumps(result), ex=self.app.conf.taskapp["result_expires"])
        return result


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
