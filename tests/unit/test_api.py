"""The HTTP API: validation, status codes and behaviour without a broker."""

import time

import pytest
from sample import deployment_settings, kit_app

from taskapp.api import create_api, validate_submission


@pytest.fixture
def client():
    return create_api(kit_app()).test_client()


def test_valid_submission_is_accepted_with_an_id(client):
    reply = client.post(
        "/tasks", json={"task": "add", "args": [1, 2], "countdown": 5, "priority": 3, "queue": "priority"}
    )
    assert reply.status_code == 202
    assert len(reply.json["id"]) == 36


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object"),
        ({"args": [1, 2]}, "task must be one of"),
        ({"task": "rm -rf"}, "task must be one of"),
        ({"task": "add", "args": {"x": 1}}, "args must be a JSON array"),
        ({"task": "add", "kwargs": [1]}, "kwargs must be a JSON object"),
        ({"task": "add", "args": [1, True]}, "y must be a number"),
        ({"task": "add", "args": [1, 2, 3]}, "wrong arguments"),
        ({"task": "add", "kwargs": {"x": 1, "z": 2}}, "wrong arguments"),
        ({"task": "add", "args": [1e300, 1]}, "finite number"),
        ({"task": "add", "args": [1, 2], "countdown": -1}, "countdown must be between"),
        ({"task": "add", "args": [1, 2], "countdown": 10**9}, "countdown must be between"),
        ({"task": "add", "args": [1, 2], "priority": 1.5}, "priority must be an integer"),
        ({"task": "add", "args": [1, 2], "queue": "dead-letter"}, "queue must be one of"),
        ({"task": "add", "args": [1, 2], "eta": "tomorrow"}, "unknown fields: eta"),
        ({"task": "send_welcome_email", "args": ["x" * 300 + "@example.com"]}, "email"),
        ({"task": "process_task", "args": ["text"]}, "data must be a JSON object"),
        ({"task": "process_task", "args": [{"seconds": 1000}]}, "data.seconds"),
    ],
)
def test_bad_submission_gets_400_with_a_message(client, body, message):
    reply = client.post("/tasks", json=body)
    assert reply.status_code == 400
    assert message in reply.json["error"]


def test_malformed_json_gets_400(client):
    reply = client.post("/tasks", data="{not json", content_type="application/json")
    assert reply.status_code == 400
    assert "not valid JSON" in reply.json["error"]


def test_non_json_content_type_gets_400(client):
    reply = client.post("/tasks", data="task=add")
    assert reply.status_code == 400


def test_oversized_body_gets_413(client):
    reply = client.post("/tasks", json={"task": "process_task", "args": [{"blob": "x" * 100_000}]})
    assert reply.status_code == 413
    assert "error" in reply.json


def test_unknown_route_and_method_get_json_errors(client):
    assert client.get("/nowhere").status_code == 404
    assert client.delete("/tasks").status_code == 405


def test_garbage_task_id_gets_400(client):
    assert client.get("/tasks/" + "x" * 200).status_code == 400


def test_health_answers(client):
    assert client.get("/healthz").json == {"status": "ok", "broker": "rabbitmq"}


@pytest.mark.parametrize(
    ("broker", "broker_url"),
    [("rabbitmq", "amqp://user:secret@127.0.0.1:1//"), ("redis", "redis://:secret@127.0.0.1:1/0")],
)
def test_unreachable_broker_gets_503_within_seconds(broker, broker_url):
    config = deployment_settings(broker=broker, broker_url=broker_url, result_backend="redis://127.0.0.1:1/1")
    client = create_api(kit_app(config)).test_client()
    started = time.monotonic()
    reply = client.post("/tasks", json={"task": "add", "args": [1, 2]})
    assert reply.status_code == 503
    assert "unreachable" in reply.json["error"]
    assert "secret" not in reply.json["error"]
    assert time.monotonic() - started < 5


def test_unreachable_result_store_gets_503():
    config = deployment_settings(result_backend="redis://127.0.0.1:1/1")
    client = create_api(kit_app(config)).test_client()
    reply = client.get("/tasks/0b6b1d6e-3f6e-4d43-9a3c-2f1f0b8f3c11")
    assert reply.status_code == 503


@pytest.mark.parametrize(("countdown", "sent"), [(0, 0), (0.4, 1), (2.5, 3), (60, 60)])
def test_a_countdown_is_sent_in_whole_seconds_rounded_up(countdown, sent):
    # RabbitMQ's delayed delivery counts whole seconds: 0.4 s must still delay.
    app = kit_app()
    body = {"task": "add", "args": [1, 2], "countdown": countdown}
    assert validate_submission(app, body, ["default"], 3600)["options"]["countdown"] == sent


def test_the_health_check_task_is_accepted_and_routed_to_its_own_queue(client):
    reply = client.post("/tasks", json={"task": "celery_kit.health"})
    assert reply.status_code == 202
    app = kit_app()
    assert app.amqp.router.route({}, "celery_kit.health")["queue"].name == "health"
