"""Queueing the tasks of a new signup: the one place that talks to the broker.

Today the view calls queue_welcome once the signup's transaction has
committed (transaction.on_commit), so a signup that rolls back queues
nothing. The gap: when the broker is unreachable at that moment, the user
exists but the welcome email is not queued (the API answers 503 and says
so). A later change replaces this module with a durable outbox: the tasks
written as rows in the same transaction as the user, and relayed to the
broker by a separate process until the broker has them.
"""

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
from celery.utils import uuid
from django.contrib.auth.models import User

from signup.celery import app as celery_app
from users import tasks

# What publishing raises when the task queue is not there: kombu wraps the
# broker's connection errors (after the publish retries) in OperationalError;
# socket errors surface as OSError; with RabbitMQ's publisher confirms a
# refused message is MessageNacked; and the Redis result backend, which
# subscribes to each task's result as it is sent, raises its own errors
# (not wrapped when the broker is RabbitMQ).
BROKER_ERRORS = (
    kombu.exceptions.OperationalError,
    OSError,
    amqp.exceptions.MessageNacked,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def queue_welcome(user: User) -> dict[str, str]:
    """Send the welcome email and the analytics event of user; return their task ids.

    The ids are chosen here rather than by Celery so that they exist before
    anything is published: the outbox that replaces this will store them in
    the signup's transaction.
    """
    # Taken from the project's app rather than called through the
    # shared_task proxies: a proxy resolves to Celery's current app, which is
    # whichever app was created last in this thread.
    send_welcome_email = celery_app.tasks[tasks.send_welcome_email.name]
    track_signup = celery_app.tasks[tasks.track_signup.name]
    email_task = uuid()
    analytics_task = uuid()
    send_welcome_email.apply_async((user.username, user.email), task_id=email_task)
    track_signup.apply_async((user.username,), task_id=analytics_task)
    return {"email_task": email_task, "analytics_task": analytics_task}
