"""The tasks a signup queues (see users.publish).

send_welcome_email must not repeat (a second delivery of its message would
send a second email), so it opts into the kit's at-most-once guard;
track_signup is a plain task.
"""

import fcntl
import json
import smtplib
from datetime import UTC, datetime

from celery import Task, shared_task
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import send_mail

from celery_kit.guard import AtMostOnceTask

# The mail transport being unavailable, per backend: the file backend raises
# ImproperlyConfigured when its directory is not writable (or is not a
# directory) and OSError when writing fails; the SMTP backend raises
# SMTPException, or OSError when it cannot connect.
MAIL_TRANSPORT_ERRORS = (ImproperlyConfigured, OSError, smtplib.SMTPException)


@shared_task(
    base=AtMostOnceTask,
    bind=True,
    # A few quick retries ride out a short outage. Once they are spent the
    # error is not caught: the task fails, and under the kit a failed task is
    # rejected into RabbitMQ's dead-letter queue, from which an operator
    # replays it once the mail transport works again.
    autoretry_for=MAIL_TRANSPORT_ERRORS,
    max_retries=2,
    default_retry_delay=2,
)
def send_welcome_email(self: Task, username: str, email: str) -> dict[str, str]:
    """Send the welcome email of a new user (from_email: DEFAULT_FROM_EMAIL)."""
    body = f"Hello {username},\n\nyour account is ready. Thank you for signing up.\n"
    send_mail(
        subject=f"Welcome, {username}!",
        # Names the task, to find it in the worker logs and the result store.
        message=f"{body}\n(message {self.request.id})\n",
        from_email=None,
        recipient_list=[email],
    )
    return {"sent_to": email}


@shared_task(bind=True)
def track_signup(self: Task, username: str) -> dict[str, str]:
    """Append a signup event to SIGNUP_ANALYTICS_FILE, one JSON object per line."""
    event = {
        "event": "signup",
        "username": username,
        "at": datetime.now(UTC).isoformat(),
        "task_id": self.request.id,
    }
    with open(settings.SIGNUP_ANALYTICS_FILE, "a", encoding="utf-8") as log:
        # Several worker processes append at once: the lock keeps each line
        # whole.
        fcntl.flock(log, fcntl.LOCK_EX)
        log.write(json.dumps(event) + "\n")
    return {"recorded": username}
