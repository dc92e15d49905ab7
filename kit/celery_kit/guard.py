"""The at-most-once guard: an opt-in base task of the kit.

A message can reach a worker twice: the worker that had it died before its
acknowledgement, a broker node failed over, a broker migration moved it
twice. A task whose effect must not repeat (an email, a payment) opts in
with ``base=AtMostOnceTask`` and then runs at most once in effect per task
id, with two keys in Redis (the deployment's locks database):

- celery-kit:running:<id>, a lease taken (SET NX) before the task runs and
  renewed while it runs; a second delivery of the same id waits while
  another process holds it. A worker killed mid-task stops renewing, so its
  lease lapses within LEASE_SECONDS and the redelivered message runs then.
- celery-kit:done:<id>, the result of a finished id, kept as long as
  results; a later delivery of a finished id is skipped, counted in the hash
  celery-kit:duplicates, and returns the recorded result.

A Redis restart or outage is not the task's failure: every call to Redis
waits for it to come back, with backoff. Before the task runs the wait lasts
up to half the soft time limit; then the message goes back to its queue
(requeued, not dead-lettered) for a later try. After the task ran, the
finished mark is retried for as long as the time limit leaves.

The cost: three to four Redis round trips per task and a renewal every
LEASE_RENEW_SECONDS while it runs.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from functools import cached_property
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Reject
from celery.utils.log import get_task_logger

logger = get_task_logger(__name__)

DONE_KEY = "celery-kit:done:{}"
DUPLICATE_KEY = "celery-kit:duplicates"
RUNNING_KEY = "celery-kit:running:{}"
# How long a lease outlives a process that stopped renewing it (killed).
LEASE_SECONDS = 20
LEASE_RENEW_SECONDS = 5
LEASE_POLL_SECONDS = 0.5
DEFAULT_KEEP_SECONDS = 86400


def deployment_setting(app: Celery, key: str) -> Any:
    """A value of the kit's deployment settings, None when the kit did not configure the app."""
    return (app.conf.get("celery_kit") or {}).get(key)


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
# What a restart or an outage of Redis raises (BusyLoadingError, Redis
# loading its data after a restart, is a ConnectionError).
REDIS_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
REDIS_RETRY_FIRST_SECONDS = 0.1
REDIS_RETRY_MAX_SECONDS = 2.0


class RedisUnavailable(RuntimeError):
    """Redis did not come back before the deadline."""


def call_redis(what: str, call: Any, deadline: float) -> Any:
    """Run call() and retry it with backoff while Redis is restarting or unreachable, until deadline."""
    delay = REDIS_RETRY_FIRST_SECONDS
    warned = False
    while True:
        try:
            return call()
        except REDIS_TRANSIENT as error:
            if time.monotonic() + delay > deadline:
                raise RedisUnavailable(f"Redis unavailable while {what}: {error}") from error
            if not warned:
                logger.warning("Redis unavailable while %s (%s); waiting for it", what, error)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, REDIS_RETRY_MAX_SECONDS)


class AtMostOnceTask(Task):
    """Runs each task id at most once in effect (see the module's docstring).

    Opt in per task: ``@shared_task(base=AtMostOnceTask)``. Without the kit's
    deployment settings (a unit test, a developer's machine) it is a plain task.
    """

    @cached_property
    def locks(self) -> redis.Redis | None:
        url = deployment_setting(self.app, "locks_url")
        return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) if url else None

    def keep_seconds(self) -> int:
        """How long a finished id is remembered: as long as its result."""
        return _keep_seconds(self.app.conf.result_expires)

    def redis_deadlines(self) -> tuple[float, float]:
        """How long to wait for Redis: before the run, and for the finished mark after it."""
        soft_limit = self.soft_time_limit or self.app.conf.task_soft_time_limit or self.app.conf.task_time_limit or 300
        started = time.monotonic()
        return started + max(soft_limit / 2, 5), started + max(soft_limit - 5, 5)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if self.locks is None or task_id is None:
            return super().__call__(*args, **kwargs)
        before_run, after_run = self.redis_deadlines()
        done_key = DONE_KEY.format(task_id)
        lease = Lease(self.locks, RUNNING_KEY.format(task_id))
        waited = False
        try:
            while True:
                previous = call_redis("checking the finished ids", lambda: self.locks.get(done_key), before_run)
                if previous is not None:
                    logger.warning("task %s already ran; skipping this duplicate delivery", task_id)
                    call_redis(
                        "counting a duplicate", lambda: self.locks.hincrby(DUPLICATE_KEY, task_id, 1), before_run
                    )
                    return json.loads(previous)
                if call_redis("taking the lease", lease.acquire, before_run):
                    break
                if not waited:
                    logger.warning("task %s is running in another process; waiting for it", task_id)
                    waited = True
                time.sleep(LEASE_POLL_SECONDS)
        except RedisUnavailable as error:
            # Not the task's failure: back to its queue, to run once Redis is back.
            raise Reject(str(error), requeue=True) from error
        try:
            result = super().__call__(*args, **kwargs)
            try:
                call_redis(
                    "recording the finished id",
                    lambda: self.locks.set(done_key, json.dumps(result), ex=self.keep_seconds()),
                    after_run,
                )
            except RedisUnavailable as error:
                # The task ran: requeueing it would run it again. Its message
                # is acknowledged; a later copy of the id would run again.
                logger.error("task %s ran, but its finished mark is lost: %s", task_id, error)
        finally:
            lease.release()
        return result


class Lease:
    """celery-kit:running:<id>: held by one process, renewed by a thread while it runs."""

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


def _keep_seconds(expires: Any) -> int:
    if isinstance(expires, timedelta):
        return max(int(expires.total_seconds()), 1)
    return int(expires) if expires else DEFAULT_KEEP_SECONDS
