"""The durable outbox: stored in order, sent in order, bounded, never silently dropped."""

from __future__ import annotations

import sqlite3
import time

import pytest
from sample import deployment_settings, kit_app

from celery_kit import outbox
from celery_kit.outbox import Outbox, OutboxFull, OutboxUnavailable, Relay, Submission
from taskapp.api import create_api

UNREACHABLE = {"broker_url": "amqp://user:secret@127.0.0.1:1//", "result_backend": "redis://127.0.0.1:1/1"}


class Crash(BaseException):
    """The relay's process dies (not an error it handles)."""


class Broker:
    """What a relay sent, in order; optionally down, or dying after a confirm."""

    def __init__(self) -> None:
        self.received: list[Submission] = []
        self.down = False
        self.crash_after: int | None = None

    def send(self, submission: Submission) -> None:
        if self.down:
            raise ConnectionRefusedError("broker down")
        self.received.append(submission)
        if self.crash_after is not None and len(self.received) == self.crash_after:
            raise Crash


def _submissions(count: int) -> list[Submission]:
    return [Submission(task="add", args=[index, 1]) for index in range(count)]


def test_stored_submissions_are_sent_in_order_and_leave_the_outbox(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    stored = _submissions(5)
    for submission in stored:
        box.store(submission)
    assert box.depth() == 5
    assert box.contains(stored[2].id)
    broker = Broker()
    assert Relay(box, broker.send).drain_once() == 5
    assert broker.received == stored
    assert box.depth() == 0
    assert not box.contains(stored[2].id)


def test_a_stored_submission_survives_a_new_process(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    submission = Submission(task="add", args=[1, 2], due=time.time() + 60, priority=7, queue="priority")
    Outbox(path).store(submission)
    # Another process opens the file (the relay, or the API after a restart).
    broker = Broker()
    Relay(Outbox(path), broker.send).drain_once()
    assert broker.received == [submission]


def test_a_relay_that_dies_between_confirm_and_delete_sends_that_one_again_and_loses_none(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    stored = _submissions(5)
    for submission in stored:
        box.store(submission)
    broker = Broker()
    broker.crash_after = 3
    with pytest.raises(Crash):
        Relay(box, broker.send).drain_once()
    # The third was confirmed but not deleted: it is still there, with the first two gone.
    assert Outbox(path).depth() == 3
    broker.crash_after = None
    Relay(Outbox(path), broker.send).drain_once()
    ids = [submission.id for submission in broker.received]
    assert ids == [s.id for s in stored[:3]] + [stored[2].id] + [s.id for s in stored[3:]]
    assert set(ids) == {s.id for s in stored}  # none lost; one sent twice, with its id (the guard runs it once)
    assert Outbox(path).depth() == 0


def test_a_broker_that_refuses_leaves_everything_in_place_in_order(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    stored = _submissions(3)
    for submission in stored:
        box.store(submission)
    broker = Broker()
    broker.down = True
    with pytest.raises(ConnectionRefusedError):
        Relay(box, broker.send).drain_once()
    assert box.depth() == 3
    broker.down = False
    Relay(box, broker.send).drain_once()
    assert broker.received == stored


def test_a_full_outbox_refuses_new_submissions_and_keeps_the_accepted_ones(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3", max_entries=3)
    stored = _submissions(3)
    for submission in stored:
        box.store(submission)
    with pytest.raises(OutboxFull, match=r"full.*3 submissions"):
        box.store(Submission(task="add"))
    assert box.depth() == 3
    broker = Broker()
    Relay(box, broker.send).drain_once()
    assert broker.received == stored
    box.store(Submission(task="add"))  # room again once the relay sent them
    assert box.depth() == 1


def test_the_size_bound_counts_bytes(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3", max_bytes=400)
    box.store(Submission(task="add", args=["x" * 200]))
    with pytest.raises(OutboxFull, match="bytes"):
        box.store(Submission(task="add", args=["x" * 200]))
    assert box.stats()["depth"] == 1


def test_a_damaged_file_is_reported_clearly_and_left_as_it_is(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    box = Outbox(path)
    with pytest.raises(OutboxUnavailable, match=r"outbox.sqlite3.*not a database"):
        box.depth()
    with pytest.raises(OutboxUnavailable):
        box.store(Submission(task="add"))
    assert path.read_bytes() == before


def test_an_outbox_that_cannot_be_created_is_reported(tmp_path):
    (tmp_path / "not-a-directory").write_text("")
    with pytest.raises(OutboxUnavailable, match="cannot open the outbox"):
        Outbox(tmp_path / "not-a-directory" / "outbox.sqlite3").store(Submission(task="add"))


def test_a_disk_full_outbox_raises_unavailable_and_keeps_what_it_had(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    kept = Submission(task="add", args=[1, 1])
    box.store(kept)
    # SQLite's own "database or disk is full", as on a full file system.
    pages = box._db().execute("PRAGMA page_count").fetchone()[0]
    box._db().execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(OutboxUnavailable, match="full"):
        for _ in range(50):
            box.store(Submission(task="add", args=["y" * 4000]))
    assert box.contains(kept.id)


def test_an_entry_that_cannot_be_read_back_is_quarantined_not_sent_not_dropped(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    good = _submissions(2)
    box.store(good[0])
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO submissions (task_id, body, stored_at) VALUES ('bad', '{not json', 0)")
    box.store(good[1])
    broker = Broker()
    Relay(box, broker.send).drain_once()
    assert broker.received == good
    stats = box.stats()
    assert stats["depth"] == 0
    assert stats["quarantined"] == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT task_id, body FROM quarantine").fetchall() == [("bad", "{not json")]


def test_arguments_that_cannot_be_stored_are_refused_before_anything_is_sent(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    with pytest.raises(ValueError, match="not JSON"):
        outbox.submit(kit_app(), box, "add", [object(), 1])
    with pytest.raises(ValueError, match="priority"):
        outbox.submit(kit_app(), box, "add", [1, 1], priority=12)
    assert box.depth() == 0


def test_stats_give_depth_and_the_age_of_the_oldest(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    assert box.stats()["oldest_age_seconds"] is None
    box.store(Submission(task="add"))
    time.sleep(0.2)
    stats = box.stats()
    assert stats["depth"] == 1
    assert stats["oldest_age_seconds"] >= 0.1


def _api_with_outbox(tmp_path, **limits):
    settings = deployment_settings(**UNREACHABLE, outbox={"path": str(tmp_path / "outbox.sqlite3"), **limits})
    return create_api(kit_app(settings)).test_client(), Outbox(tmp_path / "outbox.sqlite3")


def test_the_api_stores_what_an_unreachable_broker_does_not_take_and_answers_202(tmp_path):
    client, box = _api_with_outbox(tmp_path)
    started = time.monotonic()
    first = client.post("/tasks", json={"task": "add", "args": [1, 2], "countdown": 30, "priority": 8})
    first_wait = time.monotonic() - started
    second = client.post("/tasks", json={"task": "send_welcome_email", "args": ["ada@example.com"]})
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json["state"] == outbox.STORED
    assert first_wait < 5
    assert box.depth() == 2
    stored = [Submission.decode(body) for _, body in box.head(10)]
    assert [s.id for s in stored] == [first.json["id"], second.json["id"]]
    assert stored[0].priority == 8
    # The queue the task would have been published to, resolved by the API (the relay may not import the tasks).
    assert [s.queue for s in stored] == ["default", "emails"]
    assert stored[0].due == pytest.approx(time.time() + 30, abs=5)


def test_the_api_says_stored_for_a_task_waiting_in_the_outbox(tmp_path):
    client, _ = _api_with_outbox(tmp_path)
    task_id = client.post("/tasks", json={"task": "add", "args": [1, 2]}).json["id"]
    reply = client.get(f"/tasks/{task_id}")
    assert reply.status_code == 200
    assert reply.json["state"] == "STORED"


def test_a_full_outbox_gets_503_with_a_clear_message(tmp_path):
    client, box = _api_with_outbox(tmp_path, max_entries=2)
    assert [client.post("/tasks", json={"task": "add", "args": [1, 2]}).status_code for _ in range(3)] == [
        202,
        202,
        503,
    ]
    reply = client.post("/tasks", json={"task": "add", "args": [1, 2]})
    assert reply.status_code == 503
    assert "outbox is full" in reply.json["error"]
    assert box.depth() == 2


def test_an_outbox_that_cannot_write_gets_503_not_500(tmp_path):
    (tmp_path / "file").write_text("")
    settings = deployment_settings(**UNREACHABLE, outbox={"path": str(tmp_path / "file" / "outbox.sqlite3")})
    client = create_api(kit_app(settings)).test_client()
    reply = client.post("/tasks", json={"task": "add", "args": [1, 2]})
    assert reply.status_code == 503
    assert "cannot store" in reply.json["error"]
    assert "secret" not in reply.json["error"]


def test_bad_input_keeps_its_400_with_an_outbox(tmp_path):
    client, box = _api_with_outbox(tmp_path)
    reply = client.post("/tasks", json={"task": "add", "args": [1, "two"]})
    assert reply.status_code == 400
    assert box.depth() == 0


def test_a_reachable_broker_takes_the_task_and_nothing_is_stored(tmp_path):
    settings = deployment_settings(outbox={"path": str(tmp_path / "outbox.sqlite3")})
    client = create_api(kit_app(settings)).test_client()
    reply = client.post("/tasks", json={"task": "add", "args": [1, 2]})
    assert reply.status_code == 202
    assert reply.json["state"] == "PENDING"
    assert Outbox(tmp_path / "outbox.sqlite3").depth() == 0


def test_while_the_outbox_holds_anything_new_submissions_queue_behind(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    waiting = Submission(task="add", args=[0, 0])
    Outbox(path).store(waiting)
    # The broker is reachable (in memory), but an older submission waits: keep the order.
    client = create_api(kit_app(deployment_settings(outbox={"path": str(path)}))).test_client()
    reply = client.post("/tasks", json={"task": "add", "args": [1, 2]})
    assert reply.json["state"] == "STORED"
    assert [Submission.decode(body).id for _, body in Outbox(path).head(10)] == [waiting.id, reply.json["id"]]


@pytest.mark.parametrize(("broker", "sent"), [("rabbitmq", 8), ("redis", 1)])
def test_publish_keeps_the_id_queue_due_time_and_translates_the_priority(broker, sent):
    app = kit_app(deployment_settings(broker=broker))
    submission = Submission(task="add", args=[1, 2], due=time.time() + 30.2, priority=8, queue="priority")
    published = {}
    app.tasks["add"].apply_async = lambda args, kwargs, **options: published.update(options, args=args)
    outbox.publish(app, submission, confirm_timeout=1)
    assert published["task_id"] == submission.id
    assert published["queue"] == "priority"
    assert published["priority"] == sent
    assert published["countdown"] == 31
    assert published["args"] == [1, 2]


def test_a_due_time_already_past_is_sent_without_a_countdown():
    app = kit_app()
    published = {}
    app.tasks["add"].apply_async = lambda args, kwargs, **options: published.update(options)
    outbox.publish(app, Submission(task="add", args=[1, 2], due=time.time() - 5), confirm_timeout=1)
    assert "countdown" not in published


def test_an_entry_the_broker_can_never_take_is_quarantined_and_the_others_still_go(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    good = _submissions(2)
    box.store(good[0])
    box.store(Submission(task="add", priority=42))  # no broker has a priority 42
    box.store(good[1])
    app = kit_app()
    sent = []

    def send(submission):
        outbox.publish(app, submission, confirm_timeout=1)  # raises ValueError on the bad priority
        sent.append(submission)

    Relay(box, send).drain_once()
    assert sent == good
    assert box.stats()["quarantined"] == 1


def test_a_submission_with_an_outbox_does_not_wait_out_a_redis_failover():
    # Behind Sentinel the app retries a publish for about 12 s (a failover);
    # a submission that can fall back on the outbox retries 3 times only.
    sentinel_url = "sentinel://:pw@10.0.0.20:26379/0;sentinel://:pw@10.0.0.21:26379/0?master_name=celery-kit"
    app = kit_app(deployment_settings(broker="redis", broker_url=sentinel_url))
    assert app.conf.task_publish_retry_policy["max_retries"] == 12
    assert outbox.submit_retry_policy(app)["max_retries"] == 3
    assert outbox.submit_retry_policy(kit_app())["max_retries"] == 1  # one node: tried twice, then stored
