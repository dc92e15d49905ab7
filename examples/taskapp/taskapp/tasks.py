"""The sample tasks.

Every task but health and poison opts into the kit's at-most-once guard
(celery_kit.guard.AtMostOnceTask): a message delivered twice (a worker died
before acknowledging it, a broker migration moved it twice) runs once in
effect.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from celery import Task, shared_task

from celery_kit.guard import AtMostOnceTask

EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s]+$")
MAX_PROCESS_SECONDS = 60
# Where send_welcome_email writes (TASKAPP_MAIL_SINK; the kit's deployment
# sets it under the app's data directory).
MAIL_SINK_ENV = "TASKAPP_MAIL_SINK"


def mail_sink() -> str:
    return os.environ.get(MAIL_SINK_ENV) or os.path.join(tempfile.gettempdir(), "taskapp-mail-sink.log")


class PoisonError(RuntimeError):
    """Raised by the poison task, every time."""


@shared_task(base=AtMostOnceTask, name="add")
def add(x: float, y: float) -> float:
    """Add two numbers."""
    return x + y


@shared_task(base=AtMostOnceTask, bind=True, name="send_welcome_email")
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
    with open(mail_sink(), "a", encoding="utf-8") as sink:
        fcntl.flock(sink, fcntl.LOCK_EX)
        sink.write(json.dumps(record) + "\n")
    return {"to": email, "status": "written to mail sink"}


@shared_task(base=AtMostOnceTask, name="process_task")
def process_task(data: dict[str, Any]) -> dict[str, Any]:
    """Pretend to process a document; data["seconds"] makes it take that long."""
    seconds = float(data.get("seconds", 0))
    time.sleep(min(max(seconds, 0.0), MAX_PROCESS_SECONDS))
    return {"keys": sorted(data), "processed_by": socket.gethostname()}


@shared_task(name="health")
def health() -> dict[str, str]:
    """The kit's health check: a worker took it from the health queue and Redis stored its result."""
    return {"worker": socket.gethostname(), "at": datetime.now(UTC).isoformat()}


@shared_task(
    name="poison",
    autoretry_for=(PoisonError,),
    max_retries=2,
    default_retry_delay=1,
)
def poison() -> None:
    """Always fail: retried twice, then rejected into the dead-letter queue."""
    raise PoisonError("poison always fails")
