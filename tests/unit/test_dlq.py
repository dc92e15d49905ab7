"""celery-kit dlq: reading dead-lettered Celery messages and sending them back.

A fake RabbitMQ stands in for the broker here; the Django example's molecule
scenario replays a real dead-lettered task.
"""

from __future__ import annotations

import argparse
from datetime import datetime

import amqp

from celery_kit import dlq


def _dead(task: str, task_id: str, queue: str = "email", deaths: int = 1) -> amqp.Message:
    death = {
        "count": deaths,
        "reason": "rejected",
        "queue": queue,
        "time": datetime(2026, 11, 23, 20, 0, 0),
        "exchange": "tasks",
        "routing-keys": [queue],
    }
    message = amqp.Message(
        b'[["a@b.example"], {}, {}]',
        content_type="application/json",
        content_encoding="utf-8",
        priority=0,
        application_headers={
            **{"task": task, "id": task_id, "lang": "py"},
            **{"x-death": [death], "x-first-death-queue": queue},
        },
    )
    message.delivery_info = {"delivery_tag": task_id}
    return message


class FakeRabbit:
    """Serves messages like basic_get and records publishes and acks, in order."""

    def __init__(self, messages: list[amqp.Message]) -> None:
        self.waiting = list(messages)
        self.events: list[tuple[str, str]] = []

    def get(self, queue: str) -> amqp.Message | None:
        return self.waiting.pop(0) if self.waiting else None

    def publish(self, messages: list) -> None:
        for message in messages:
            self.events.append(("publish", f"{message.routing_key}:{message.properties['application_headers']['id']}"))

    def ack(self, delivery_tag: str) -> None:
        self.events.append(("ack", delivery_tag))


CONFIG = {"amqp_url": "amqp://x", "dead_letter_queue": "dead-letter", "queues": [{"name": "email"}]}


def _selection(**choice) -> argparse.Namespace:
    return argparse.Namespace(task=choice.get("task"), id=choice.get("id"), all=choice.get("all", False), limit=100)


def test_a_dead_lettered_message_says_what_it_is_and_where_it_died():
    entry = dlq.describe(_dead("users.tasks.send_welcome_email", "t-1", deaths=2))
    assert entry == {
        "task": "users.tasks.send_welcome_email",
        "id": "t-1",
        "queue": "email",
        "reason": "rejected",
        "deaths": 2,
        "first_death": "2026-11-23T20:00:00+00:00",
    }


def test_the_hops_through_celerys_delay_queues_are_not_deaths():
    # A task retried with a countdown waited in celery_delayed_1: RabbitMQ
    # records each hop as an "expired" death; the task died in "email".
    message = _dead("users.tasks.send_welcome_email", "t-1")
    headers = message.properties["application_headers"]
    hop = {"count": 2, "reason": "expired", "queue": "celery_delayed_1", "time": datetime(2026, 11, 23, 19, 59, 0)}
    headers["x-death"] = [headers["x-death"][0], hop]
    headers["x-first-death-queue"] = "celery_delayed_1"
    entry = dlq.describe(message)
    assert (entry["queue"], entry["reason"], entry["deaths"]) == ("email", "rejected", 1)
    assert entry["first_death"] == "2026-11-23T20:00:00+00:00"


def test_the_replayed_copy_goes_to_its_queue_without_its_death_records():
    copy = dlq.replay_copy(_dead("users.tasks.send_welcome_email", "t-1"), "email")
    assert (copy.exchange, copy.routing_key) == ("", "email")
    headers = copy.properties["application_headers"]
    assert headers == {"task": "users.tasks.send_welcome_email", "id": "t-1", "lang": "py"}
    assert copy.properties["delivery_mode"] == 2
    assert copy.properties["content_type"] == "application/json"
    assert copy.body == b'[["a@b.example"], {}, {}]'


def test_replay_publishes_each_chosen_message_before_it_leaves_and_keeps_the_others():
    rabbit = FakeRabbit([_dead("a.send", "t-1"), _dead("b.report", "t-2"), _dead("a.send", "t-3")])
    outcome = dlq.command_replay(rabbit, CONFIG, _selection(task="a.send"))
    assert [entry["id"] for entry in outcome["replayed"]] == ["t-1", "t-3"]
    assert rabbit.events == [("publish", "email:t-1"), ("ack", "t-1"), ("publish", "email:t-3"), ("ack", "t-3")]


def test_a_message_from_a_queue_the_app_no_longer_has_is_not_replayed():
    rabbit = FakeRabbit([_dead("a.send", "t-1", queue="gone")])
    outcome = dlq.command_replay(rabbit, CONFIG, _selection(all=True))
    assert outcome["replayed"] == []
    assert "'gone' is not one of the app's queues" in outcome["skipped"][0]["why"]
    assert rabbit.events == []


def test_purge_by_id_deletes_only_that_message():
    rabbit = FakeRabbit([_dead("a.send", "t-1"), _dead("a.send", "t-2")])
    outcome = dlq.command_purge(rabbit, CONFIG, _selection(id="t-2"))
    assert [entry["id"] for entry in outcome["purged"]] == ["t-2"]
    assert rabbit.events == [("ack", "t-2")]


def test_the_table_names_every_column():
    entry = {**dlq.describe(_dead("a.send", "t-1")), "exception": "ImproperlyConfigured: mail dir not writable"}
    text = dlq.table([entry])
    assert text.splitlines()[0].split() == ["TASK", "ID", "QUEUE", "REASON", "DEATHS", "FIRST_DEATH", "EXCEPTION"]
    assert "ImproperlyConfigured: mail dir not writable" in text
