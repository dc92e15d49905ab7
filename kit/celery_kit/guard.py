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

The cost: two Redis round trips per task (one script that checks the
finished ids and takes the lease, one that records the finished id and
frees the lease), and a renewal every LEASE_RENEW_SECONDS of every lease the
process holds, by one thread per process.
"""

from __future__ import annotations

import json
import os
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

from celery_kit import redisurl

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


# Before the task runs, in one round trip: the recorded result of a
# finished id ([1, result]); else the lease, taken ([2]) or held by another
# process ([0]).
CLAIM = """
local done = redis.call('get', KEYS[1])
if done then
  return {1, done}
end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return {2}
end
return {0}
"""
# After it ran, in one round trip: the finished id recorded, the lease freed
# if it is still ours.
FINISH = """
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
if redis.call('get', KEYS[2]) == ARGV[3] then
  redis.call('del', KEYS[2])
end
return 1
"""
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
        return redisurl.connect(url, socket_connect_timeout=2, socket_timeout=5) if url else None

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
        lease = Lease(self.locks, RUNNING_KEY.format(task_id), done_key)
        waited = False
        try:
            while True:
                claim = call_redis("checking the finished ids and taking the lease", lease.claim, before_run)
                if claim[0] == 1:
                    logger.warning("task %s already ran; skipping this duplicate delivery", task_id)
                    call_redis(
                        "counting a duplicate", lambda: self.locks.hincrby(DUPLICATE_KEY, task_id, 1), before_run
                    )
                    return json.loads(claim[1])
                if claim[0] == 2:
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
        except BaseException:
            lease.release()
            raise
        try:
            call_redis(
                "recording the finished id", lambda: lease.finish(json.dumps(result), self.keep_seconds()), after_run
            )
        except RedisUnavailable as error:
            # The task ran: requeueing it would run it again. Its message
            # is acknowledged; a later copy of the id would run again. The
            # lease lapses on its own.
            lease.stop()
            logger.error("task %s ran, but its finished mark is lost: %s", task_id, error)
        return result


class Lease:
    """celery-kit:running:<id>: held by one process, renewed by the process's renewer while it runs."""

    def __init__(self, client: redis.Redis, key: str, done_key: str) -> None:
        self.client = client
        self.key = key
        self.done_key = done_key
        self.token = uuid.uuid4().hex

    def claim(self) -> list:
        """CLAIM: [1, result] for a finished id, [2] once the lease is ours, [0] while another holds it."""
        answer = self.client.eval(CLAIM, 2, self.done_key, self.key, self.token, LEASE_SECONDS)
        if answer[0] == 2:
            RENEWER.add(self)
        return answer

    def renew(self) -> None:
        try:
            self.client.eval(RENEW_IF_OURS, 1, self.key, self.token, LEASE_SECONDS)
        except redis.RedisError as error:  # the next round tries again
            logger.warning("could not renew %s: %s", self.key, error)

    def finish(self, result: str, keep_seconds: int) -> None:
        """FINISH: the finished id recorded and the lease freed, in one round trip."""
        self.client.eval(FINISH, 2, self.done_key, self.key, result, keep_seconds, self.token)
        RENEWER.remove(self)

    def stop(self) -> None:
        RENEWER.remove(self)

    def release(self) -> None:
        """Free the lease without recording the id (the task raised: a retry may run it)."""
        RENEWER.remove(self)
        try:
            self.client.eval(RELEASE_IF_OURS, 1, self.key, self.token)
        except redis.RedisError as error:  # it lapses on its own
            logger.warning("could not release %s: %s", self.key, error)


class Renewer:
    """One thread per process renewing every lease the process holds, every LEASE_RENEW_SECONDS.

    A thread per task cost a thread start and a join on every task. After
    a fork (Celery's prefork pool) the child starts its own thread.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leases: dict[int, Lease] = {}
        self.pid: int | None = None

    def add(self, lease: Lease) -> None:
        with self.lock:
            if self.pid != os.getpid():
                self.pid = os.getpid()
                self.leases = {}
                threading.Thread(target=self._run, name="celery-kit lease renewer", daemon=True).start()
            self.leases[id(lease)] = lease

    def remove(self, lease: Lease) -> None:
        with self.lock:
            self.leases.pop(id(lease), None)

    def held(self) -> list[Lease]:
        with self.lock:
            return list(self.leases.values())

    def _run(self) -> None:
        while True:
            time.sleep(LEASE_RENEW_SECONDS)
            for lease in self.held():
                lease.renew()


RENEWER = Renewer()


def _keep_seconds(expires: Any) -> int:
    if isinstance(expires, timedelta):
        return max(int(expires.total_seconds()), 1)
    return int(expires) if expires else DEFAULT_KEEP_SECONDS
