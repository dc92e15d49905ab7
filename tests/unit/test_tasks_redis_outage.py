"""A Redis restart or outage around a task is not the task's failure.

The at-most-once guard (celery_kit.guard.AtMostOnceTask) talks to Redis before
and after the task runs. Here Redis is a stand-in that refuses connections
(or answers LOADING, as a restarted Redis does while it reads its data) for a
while: the task must wait and run once, or, if Redis stays away too long,
go back to its queue (requeue) rather than fail into the dead-letter queue.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from celery.exceptions import Reject
from sample import deployment_settings, kit_app

from celery_kit import guard
from taskapp.api import create_api


class FlakyRedis:
    """Enough of redis.Redis for the guard; the first `failures` calls raise `error`."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.data: dict[str, str] = {}
        self.hashes: dict[str, dict[str, int]] = {}
        self.calls = 0

    def _call(self) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error

    def get(self, key):
        self._call()
        return self.data.get(key)

    def set(self, key, value, nx=False, ex=None):
        self._call()
        if nx and key in self.data:
            return None
        self.data[key] = value
        return True

    def hincrby(self, key, field, amount):
        self._call()
        self.hashes.setdefault(key, {})
        self.hashes[key][field] = self.hashes[key].get(field, 0) + amount
        return self.hashes[key][field]

    def eval(self, script, numkeys, *keys_and_args):
        """The guard's scripts, as Redis would run them (atomically, one call)."""
        self._call()
        keys, args = keys_and_args[:numkeys], keys_and_args[numkeys:]
        if script == guard.CLAIM:
            done_key, running_key = keys
            if done_key in self.data:
                return [1, self.data[done_key]]
            if running_key in self.data:
                return [0]
            self.data[running_key] = args[0]
            return [2]
        if script == guard.FINISH:
            done_key, running_key = keys
            self.data[done_key] = args[0]
            if self.data.get(running_key) == args[2]:
                del self.data[running_key]
            return 1
        (key,) = keys
        if self.data.get(key) == args[0]:
            if script == guard.RELEASE_IF_OURS:
                del self.data[key]
            return 1
        return 0


@pytest.fixture
def add(monkeypatch):
    monkeypatch.setattr(guard, "REDIS_RETRY_MAX_SECONDS", 0.01)
    monkeypatch.setattr(guard, "REDIS_RETRY_FIRST_SECONDS", 0.001)
    app = kit_app()
    return app.tasks["add"]


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ConnectionError("Connection refused"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
    ],
)
def test_the_task_waits_for_redis_and_runs_once(add, error):
    flaky = FlakyRedis(failures=8, error=error)
    add.__dict__["locks"] = flaky
    result = add.apply(args=(2, 3), task_id="outage-1")
    assert result.state == "SUCCESS"
    assert result.result == 5
    assert flaky.data["celery-kit:done:outage-1"] == "5"
    assert "celery-kit:running:outage-1" not in flaky.data, "the lease is released"


def test_a_redis_gone_longer_than_the_patience_sends_the_task_back_to_its_queue(add, monkeypatch):
    flaky = FlakyRedis(failures=10**9, error=redis.exceptions.ConnectionError("Connection refused"))
    add.__dict__["locks"] = flaky
    monkeypatch.setattr(type(add), "redis_deadlines", lambda self: (0.0, 0.0))
    ran = []
    monkeypatch.setattr(type(add), "run", lambda self, x, y: ran.append((x, y)))
    result = add.apply(args=(2, 3), task_id="outage-3")
    assert result.state == "REJECTED"
    assert isinstance(result.result, Reject)
    assert result.result.requeue is True, "requeued, not dead-lettered"
    assert ran == [], "the task did not run without its guard"


def test_the_guard_costs_two_round_trips_to_redis_per_task(add):
    counting = FlakyRedis(failures=0, error=redis.exceptions.ConnectionError("unused"))
    add.__dict__["locks"] = counting
    assert add.apply(args=(2, 3), task_id="cost-1").result == 5
    assert counting.calls == 2, "one script before the run, one after"
    assert guard.RENEWER.held() == [], "the lease is no longer renewed"


def test_a_task_that_raises_frees_its_lease_for_the_retry(add, monkeypatch):
    counting = FlakyRedis(failures=0, error=redis.exceptions.ConnectionError("unused"))
    add.__dict__["locks"] = counting
    monkeypatch.setattr(type(add), "run", lambda self, x, y: 1 / 0)
    result = add.apply(args=(2, 3), task_id="raises-1")
    assert result.state == "FAILURE"
    assert "celery-kit:running:raises-1" not in counting.data
    assert "celery-kit:done:raises-1" not in counting.data, "not recorded as finished: a retry runs it"


def test_one_thread_renews_every_lease_of_the_process(monkeypatch):
    monkeypatch.setattr(guard, "LEASE_RENEW_SECONDS", 0.01)
    client = FlakyRedis(failures=0, error=redis.exceptions.ConnectionError("unused"))
    renewer = guard.Renewer()
    monkeypatch.setattr(guard, "RENEWER", renewer)
    leases = [guard.Lease(client, f"celery-kit:running:{i}", f"celery-kit:done:{i}") for i in range(3)]
    for lease in leases:
        assert lease.claim() == [2]
    before = threading.active_count()
    deadline = time.monotonic() + 5
    while client.calls < 3 + 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.calls >= 9, "each lease renewed at least twice"
    assert threading.active_count() == before, "no thread per lease"
    for lease in leases:
        lease.finish("1", 60)
    assert renewer.held() == []


def test_a_finished_id_is_skipped_even_when_redis_answers_late(add):
    flaky = FlakyRedis(failures=3, error=redis.exceptions.BusyLoadingError("loading"))
    flaky.data["celery-kit:done:outage-2"] = "5"
    add.__dict__["locks"] = flaky
    result = add.apply(args=(2, 3), task_id="outage-2")
    assert result.result == 5
    assert flaky.hashes["celery-kit:duplicates"]["outage-2"] == 1


def test_the_api_answers_at_once_instead_of_waiting_for_redis():
    app = kit_app()
    create_api(app)
    assert app.conf.result_backend_always_retry is False


def test_the_api_never_subscribes_to_results_in_any_thread():
    # Celery keeps one result backend per thread; gunicorn serves requests
    # from threads. A subscription would tie every submission to Redis.
    app = kit_app(deployment_settings(result_backend="redis://127.0.0.1:1/1"))
    create_api(app)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(app.backend.on_task_call(None, "some-id")))
    thread.start()
    thread.join()
    assert seen == [None]
    assert app.backend.result_consumer.subscribed_to == set()
