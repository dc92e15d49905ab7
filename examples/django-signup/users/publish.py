"""Queueing the tasks of a new signup: the one place that talks to the broker.

The view calls queue_welcome once the signup's transaction has committed
(transaction.on_commit), so a signup that rolls back queues nothing. Each
task goes through the kit's outbox (celery_kit.outbox): published at once
when the broker takes it, otherwise stored durably on this host and sent by
the host's relay service once the broker is back. Either way the user gets
a welcome email. What is left: a process killed between the commit and the
outbox's write (a few milliseconds) loses that user's email; a team that
cannot accept it writes the tasks as rows of the signup's own transaction.
"""

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from celery.utils import uuid
from django.contrib.auth.models import User

from celery_kit import outbox
from signup.celery import app as celery_app
from users import tasks

# What publishing raises when the task queue is not there and the outbox
# cannot keep the task either (or the deployment has none): kombu wraps
# the broker's connection errors in OperationalError; socket errors surface
# as OSError; a refused message is MessageNacked; the Redis broker raises its
# own; the outbox raises OutboxFull or OutboxUnavailable.
BROKER_ERRORS = (
    kombu.exceptions.OperationalError,
    OSError,
    amqp.exceptions.MessageNacked,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    outbox.OutboxError,
)


def queue_welcome(user: User) -> dict[str, str]:
    """Send the welcome email and the analytics event of user; return their task ids.

    The ids are chosen here rather than by Celery so that they exist before
    anything is published or stored.
    """
    box = outbox.for_app(celery_app)
    email_task = outbox.submit(
        celery_app, box, tasks.send_welcome_email.name, [user.username, user.email], task_id=uuid()
    )
    analytics_task = outbox.submit(celery_app, box, tasks.track_signup.name, [user.username], task_id=uuid())
    return {"email_task": email_task.id, "analytics_task": analytics_task.id}


def task_state(task_id: str) -> str:
    """STORED while the task waits in this host's outbox, else Celery's state."""
    return outbox.state(celery_app, outbox.for_app(celery_app), task_id)
