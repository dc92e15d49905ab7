"""The signup API as a client sees it: answers, emails, analytics lines; never a 500."""

import json
import uuid
from urllib.parse import urlencode

import kombu.exceptions
import pytest
import redis.exceptions
from django.contrib.auth.models import User
from django.db import OperationalError, connections

from celery_kit import outbox
from signup.celery import app as celery_app
from users import publish

PUBLISH = outbox.publish
ALICE = {"username": "alice", "email": "alice@example.com", "password": "correct horse"}


def post_json(client, body, path="/signup"):
    return client.post(path, data=json.dumps(body), content_type="application/json")


def post_raw(client, data, content_type="application/json"):
    return client.post("/signup", data=data, content_type=content_type)


def sent_mail(mail_dir):
    return sorted(mail_dir.glob("*.log")) if mail_dir.exists() else []


def test_signup_creates_the_user_and_sends_the_welcome_email(client, mail_dir, analytics_file):
    response = post_json(client, ALICE)

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["user"] == "alice"
    assert body["email_task"] != body["analytics_task"]
    user = User.objects.get(username="alice")
    assert user.email == "alice@example.com"
    assert user.check_password("correct horse")
    [message] = sent_mail(mail_dir)
    text = message.read_text()
    assert "To: alice@example.com" in text
    assert "From: welcome@signup.example" in text
    assert "Subject: Welcome, alice!" in text
    [line] = analytics_file.read_text().splitlines()
    event = json.loads(line)
    assert event["event"] == "signup"
    assert event["username"] == "alice"
    assert event["task_id"] == body["analytics_task"]
    assert event["at"]


def test_task_ids_answer_on_the_tasks_endpoint(client):
    body = post_json(client, ALICE).json()

    for key in ("email_task", "analytics_task"):
        response = client.get(f"/tasks/{body[key]}")
        assert response.status_code == 200
        assert response.json() == {"id": body[key], "state": "SUCCESS"}


def test_a_form_encoded_signup_on_the_slashed_path_works_too(client, mail_dir):
    response = client.post("/signup/", data=urlencode(ALICE), content_type="application/x-www-form-urlencoded")

    assert response.status_code == 201, response.content
    assert len(sent_mail(mail_dir)) == 1


def test_the_email_domain_is_normalized(client):
    post_json(client, {**ALICE, "email": "Alice@EXAMPLE.com"})

    assert User.objects.get(username="alice").email == "Alice@example.com"


def test_a_taken_username_gets_409_and_no_second_email(client, mail_dir, analytics_file):
    assert post_json(client, ALICE).status_code == 201

    response = post_json(client, {**ALICE, "email": "other@example.com"})

    assert response.status_code == 409
    assert "taken" in response.json()["error"]
    # The second signup rolled back, so its on-commit publishing never ran.
    assert len(sent_mail(mail_dir)) == 1
    assert len(analytics_file.read_text().splitlines()) == 1
    assert User.objects.get(username="alice").email == "alice@example.com"


NESTED = '{"username": ' + "[" * 2000 + "]" * 2000 + "}"
BAD_INPUTS = {
    "missing username": ({"email": ALICE["email"], "password": ALICE["password"]}, 400, "username is required"),
    "missing email": ({"username": "alice", "password": ALICE["password"]}, 400, "email is required"),
    "missing password": ({"username": "alice", "email": ALICE["email"]}, 400, "password is required"),
    "username not a string": ({**ALICE, "username": 42}, 400, "username must be a string"),
    "username a list": ({**ALICE, "username": ["alice"]}, 400, "username must be a string"),
    "empty username": ({**ALICE, "username": ""}, 400, "username must be 1 to 150"),
    "username too long": ({**ALICE, "username": "a" * 151}, 400, "username must be 1 to 150"),
    "username with spaces": ({**ALICE, "username": "alice smith"}, 400, "username:"),
    "username with a newline": ({**ALICE, "username": "alice\n"}, 400, "username:"),
    "username with a lone surrogate": ({**ALICE, "username": "al\ud800ice"}, 400, "username is not valid Unicode"),
    "bad email": ({**ALICE, "email": "not-an-email"}, 400, "email is not a valid email address"),
    "email with a newline": ({**ALICE, "email": "alice@example.com\nBcc: x@y.z"}, 400, "email is not a valid"),
    "email too long": ({**ALICE, "email": "a" * 250 + "@example.com"}, 400, "email must be at most 254"),
    "email with a lone surrogate": ({**ALICE, "email": "alice@\udc00.com"}, 400, "email is not valid Unicode"),
    "short password": ({**ALICE, "password": "short"}, 400, "password: This password is too short"),
    "password with a lone surrogate": ({**ALICE, "password": "pass\ud800word"}, 400, "password is not valid Unicode"),
    "password with NUL": ({**ALICE, "password": "pass\x00word"}, 400, "password must not contain NUL"),
    "password null": ({**ALICE, "password": None}, 400, "password is required"),
}


@pytest.mark.parametrize(("body", "status", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_fields_get_a_4xx_with_a_message(client, mail_dir, body, status, message):
    response = post_json(client, body)

    assert response.status_code == status
    assert message in response.json()["error"]
    assert not User.objects.exists()
    assert not sent_mail(mail_dir)


BAD_BODIES = {
    "not JSON": (b"{nope", "application/json", 400, "not valid JSON"),
    # The test client sends no Content-Type with an empty body.
    "empty": (b"", "application/json", 415, "application/json"),
    "not UTF-8": (b'{"username": "\xff\xfe"}', "application/json", 400, "not valid JSON"),
    "a JSON array": (b"[]", "application/json", 400, "must be a JSON object"),
    "a JSON string": (b'"alice"', "application/json", 400, "must be a JSON object"),
    "JSON null": (b"null", "application/json", 400, "must be a JSON object"),
    "a huge number": (b'{"username": ' + b"9" * 4050 + b"}", "application/json", 400, ""),
    "deeply nested JSON": (NESTED.encode(), "application/json", 400, ""),
    "deeply nested array": (("[" * 2040 + "]" * 2040).encode(), "application/json", 400, ""),
    "over the size limit": (json.dumps({**ALICE, "pad": "x" * 10_000}).encode(), "application/json", 413, "larger"),
    "plain text": (b"username=alice", "text/plain", 415, "application/json"),
    "multipart": (b"--x--", "multipart/form-data; boundary=x", 415, "application/json"),
    "too many form fields": (b"a=1&" * 1001, "application/x-www-form-urlencoded", 400, "malformed"),
    "an empty form": (b"=", "application/x-www-form-urlencoded", 400, "username is required"),
}


@pytest.mark.parametrize(("data", "content_type", "status", "message"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_get_a_4xx_with_a_message(client, data, content_type, status, message):
    response = post_raw(client, data, content_type)

    assert response.status_code == status
    assert message in response.json()["error"]
    assert not User.objects.exists()


def test_other_methods_get_405_with_the_allowed_one(client):
    response = client.get("/signup")

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert "use POST" in response.json()["error"]


def test_unknown_paths_and_hosts_get_json_errors(client):
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert response.json() == {"error": "no such endpoint: /nowhere"}

    # No redirect to the slashed path: an API answers the path it was asked.
    assert client.get("/healthz/").status_code == 404

    response = client.get("/healthz", headers={"host": "evil.example"})
    assert response.status_code == 400
    assert response.json() == {"error": "bad request"}


@pytest.mark.parametrize(
    "error",
    [
        kombu.exceptions.OperationalError("[Errno 111] Connection refused"),
        ConnectionRefusedError(111, "Connection refused"),
        redis.exceptions.ConnectionError("Error 111 connecting to localhost:6379"),
    ],
    ids=["kombu", "socket", "redis"],
)
def test_an_unreachable_task_queue_gets_503_and_the_user_is_kept(client, monkeypatch, mail_dir, error):
    def unreachable(user):
        raise error

    monkeypatch.setattr(publish, "queue_welcome", unreachable)

    response = post_json(client, ALICE)

    assert response.status_code == 503
    body = response.json()
    assert "task queue is unavailable" in body["error"]
    assert body["user"] == "alice"
    # Without an outbox that can keep them (here: none configured), the user
    # is committed, its welcome email is not queued, and signing up again gets 409.
    assert User.objects.filter(username="alice").exists()
    assert not sent_mail(mail_dir)
    monkeypatch.undo()
    assert post_json(client, ALICE).status_code == 409


def test_a_database_failure_gets_503(client, monkeypatch, mail_dir):
    def locked(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(User, "save", locked)

    response = post_json(client, ALICE)

    assert response.status_code == 503
    assert "database is unavailable" in response.json()["error"]
    assert not sent_mail(mail_dir)


def test_healthz(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_says_503_when_the_database_does_not_answer(client, monkeypatch):
    def broken():
        raise OperationalError("unable to open database file")

    monkeypatch.setattr(connections["default"], "cursor", broken)

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"error": "the database is unavailable"}


@pytest.mark.parametrize(
    "path",
    ["/tasks/not%20an%20id", "/tasks/" + "a" * 156, "/tasks/abc%0A", "/tasks/%C3%A9t%C3%A9", "/tasks/a%00b"],
    ids=["space", "too long", "trailing newline", "non-ASCII", "NUL"],
)
def test_a_malformed_task_id_gets_400(client, path):
    response = client.get(path)

    assert response.status_code == 400
    assert response.json() == {"error": "not a task id"}


def test_an_unknown_task_id_is_pending(client):
    task_id = str(uuid.uuid4())

    response = client.get(f"/tasks/{task_id}")

    assert response.status_code == 200
    assert response.json() == {"id": task_id, "state": "PENDING"}


def test_an_unreachable_result_store_gets_503(client, monkeypatch):
    def unreachable(*args, **kwargs):
        raise redis.exceptions.ConnectionError("Error 111 connecting to localhost:6379")

    monkeypatch.setattr(celery_app.backend, "get_task_meta", unreachable)

    response = client.get(f"/tasks/{uuid.uuid4()}")

    assert response.status_code == 503
    assert "result store is unavailable" in response.json()["error"]


@pytest.fixture
def broker_down_with_an_outbox(monkeypatch, tmp_path):
    """The deployment's outbox on this host, and a broker that takes nothing (refuses connections)."""
    path = tmp_path / "outbox.sqlite3"
    celery_app.conf.celery_kit = {"outbox": {"path": str(path)}}

    def refused(app, submission, confirm_timeout, retry_policy=None):
        raise kombu.exceptions.OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr(outbox, "publish", refused)
    yield outbox.Outbox(path)
    celery_app.conf.celery_kit = None


def test_a_signup_while_the_broker_is_down_is_stored_and_its_email_sent_once_the_broker_is_back(
    client, monkeypatch, mail_dir, broker_down_with_an_outbox
):
    box = broker_down_with_an_outbox
    response = post_json(client, ALICE)

    assert response.status_code == 201, response.content
    body = response.json()
    assert not sent_mail(mail_dir)
    stored = [outbox.Submission.decode(entry) for _, entry in box.head(10)]
    assert [s.id for s in stored] == [body["email_task"], body["analytics_task"]]
    assert stored[0].args == ["alice", "alice@example.com"]
    assert client.get(f"/tasks/{body['email_task']}").json()["state"] == "STORED"

    # The broker is back: the relay sends them (here Celery runs them eagerly).
    monkeypatch.setattr(outbox, "publish", PUBLISH)
    relay = outbox.Relay(box, lambda submission: outbox.publish(celery_app, submission, confirm_timeout=1))
    assert relay.drain_once() == 2
    [message] = sent_mail(mail_dir)
    assert "To: alice@example.com" in message.read_text()
    assert box.depth() == 0
