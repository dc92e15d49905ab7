"""HTTP API of the sample app: submit tasks and read their results.

POST /tasks        {"task": name, "args": [...], "kwargs": {...},
                    "countdown": seconds, "priority": 0-9, "queue": name}
                   -> 202 {"id": ...}
GET  /tasks/<id>   -> 200 {"id", "state", "result"}
GET  /healthz      -> 200 {"status": "ok", "broker": ...}

Bad input gets a 4xx with a message. A submission the broker does not take
(unreachable, or blocking publishers) is stored in the host's durable outbox
(celery_kit.outbox) and still gets its 202; the relay sends it later, and
GET /tasks/<id> says STORED meanwhile. Only a full or unwritable outbox, or
an unreachable result store on GET, gets a 503, within a few seconds: never
a hang nor a 500.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Celery
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from celery_kit import outbox
from celery_kit.boot import producer_mode
from celery_kit.settings import HEALTH_TASK
from celery_kit.topology import PRIORITY_MAX, PRIORITY_MIN
from taskapp import tasks

MAX_BODY_BYTES = 64 * 1024
MAX_NUMBER = 1e15
TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,155}$")
SUBMIT_KEYS = {"task", "args", "kwargs", "countdown", "priority", "queue"}
UNAVAILABLE_ERRORS = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


class BadRequest(ValueError):
    """The request is well-formed HTTP but its content is wrong."""


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be a number")
    if not math.isfinite(value) or abs(value) > MAX_NUMBER:
        raise BadRequest(f"{name} must be a finite number below {MAX_NUMBER:g} in size")


def _check_add(arguments: dict[str, Any]) -> None:
    _number("x", arguments["x"])
    _number("y", arguments["y"])


def _check_email(arguments: dict[str, Any]) -> None:
    email = arguments["email"]
    if not isinstance(email, str) or len(email) > 254 or not tasks.EMAIL_PATTERN.match(email):
        raise BadRequest("email must be an email address of at most 254 characters")


def _check_process(arguments: dict[str, Any]) -> None:
    data = arguments["data"]
    if not isinstance(data, dict):
        raise BadRequest("data must be a JSON object")
    seconds = data.get("seconds", 0)
    _number("data.seconds", seconds)
    if not 0 <= seconds <= tasks.MAX_PROCESS_SECONDS:
        raise BadRequest(f"data.seconds must be between 0 and {tasks.MAX_PROCESS_SECONDS}")


def _check_nothing(arguments: dict[str, Any]) -> None:
    del arguments


# Tasks the API accepts, each with the check of its arguments.
SUBMITTABLE: dict[str, Callable[[dict[str, Any]], None]] = {
    "add": _check_add,
    "send_welcome_email": _check_email,
    "process_task": _check_process,
    "poison": _check_nothing,
    HEALTH_TASK: _check_nothing,
}


def _bind_arguments(task: Any, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    signature = inspect.signature(task.run)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise BadRequest(f"wrong arguments for {task.name}{signature}: {exc}") from exc
    return dict(bound.arguments)


def validate_submission(celery_app: Celery, body: Any, queue_names: list[str], max_countdown: int) -> dict[str, Any]:
    """Check a POST /tasks body; return the task and its apply_async options."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(body) - SUBMIT_KEYS)
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(unknown)}; allowed: {', '.join(sorted(SUBMIT_KEYS))}")
    name = body.get("task")
    if not isinstance(name, str) or name not in SUBMITTABLE:
        raise BadRequest(f"task must be one of: {', '.join(sorted(SUBMITTABLE))}")
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    if not isinstance(args, list):
        raise BadRequest("args must be a JSON array")
    if not isinstance(kwargs, dict):
        raise BadRequest("kwargs must be a JSON object")
    # Looked up in the app, not imported: a task proxy resolves to Celery's
    # current app, which is per thread, and gunicorn serves from threads.
    task = celery_app.tasks[name]
    SUBMITTABLE[name](_bind_arguments(task, args, kwargs))
    options: dict[str, Any] = {}
    if "countdown" in body:
        countdown = body["countdown"]
        _number("countdown", countdown)
        if not 0 <= countdown <= max_countdown:
            raise BadRequest(f"countdown must be between 0 and {max_countdown} seconds")
        # Whole seconds, rounded up: RabbitMQ's delayed delivery counts in
        # seconds (a fraction below one would not be delayed at all).
        options["countdown"] = math.ceil(countdown)
    if "priority" in body:
        priority = body["priority"]
        if isinstance(priority, bool) or not isinstance(priority, int) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise BadRequest(f"priority must be an integer between {PRIORITY_MIN} and {PRIORITY_MAX}")
        options["priority"] = priority
    if "queue" in body:
        queue = body["queue"]
        if queue not in queue_names:
            raise BadRequest(f"queue must be one of: {', '.join(queue_names)}")
        options["queue"] = queue
    return {"task": task, "args": args, "kwargs": kwargs, "options": options}


def create_api(celery_app: Celery) -> Flask:
    """The Flask app, publishing through the given Celery app."""
    api = Flask(__name__)
    api.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # The deployment's settings, which celery_kit.boot put on the app.
    settings = celery_app.conf.celery_kit
    # Requests never wait for Redis, nor subscribe to results (the kit's
    # producer settings; celery_kit.wsgi applies them too).
    producer_mode(celery_app)
    queue_names = [queue["name"] for queue in settings["queues"]]
    box = outbox.for_app(celery_app)

    def error(status: int, message: str) -> tuple[Any, int]:
        return jsonify({"error": message}), status

    @api.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Any, int]:
        return error(exc.code or 500, exc.description or exc.name)

    @api.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> tuple[Any, int]:
        return error(400, str(exc))

    def unavailable(exc: Exception) -> tuple[Any, int]:
        api.logger.warning("backend unavailable: %s", exc)
        return error(503, f"the broker or result store is unreachable, try again later ({exc.__class__.__name__})")

    for exc_class in UNAVAILABLE_ERRORS:
        api.register_error_handler(exc_class, unavailable)

    @api.errorhandler(outbox.OutboxFull)
    def outbox_full(exc: outbox.OutboxFull) -> tuple[Any, int]:
        api.logger.error("submission refused: the broker does not take tasks and %s", exc)
        return error(503, f"the task queue is unavailable and this host's outbox is full; try again later ({exc})")

    @api.errorhandler(outbox.OutboxUnavailable)
    def outbox_unavailable(exc: outbox.OutboxUnavailable) -> tuple[Any, int]:
        # Logged with the file's error (permissions, disk full, damaged);
        # the client is told only that nothing was accepted.
        api.logger.error("submission refused: %s", exc)
        return error(503, "the task queue is unavailable and the outbox cannot store the task; try again later")

    @api.post("/tasks")
    def submit() -> tuple[Any, int]:
        if not request.is_json:
            raise BadRequest("send a JSON body with Content-Type: application/json")
        body = request.get_json(silent=True)
        if body is None:
            raise BadRequest("the body is not valid JSON")
        submission = validate_submission(celery_app, body, queue_names, settings["max_countdown"])
        options = submission["options"]
        receipt = outbox.submit(
            celery_app,
            box,
            submission["task"].name,
            submission["args"],
            submission["kwargs"],
            countdown=options.get("countdown"),
            priority=options.get("priority"),
            queue=options.get("queue"),
        )
        return jsonify({"id": receipt.id, "state": outbox.STORED if receipt.stored else "PENDING"}), 202

    @api.get("/tasks/<task_id>")
    def status(task_id: str) -> tuple[Any, int]:
        if not TASK_ID_PATTERN.match(task_id):
            raise BadRequest("not a task id")
        state = outbox.state(celery_app, box, task_id)
        result = celery_app.AsyncResult(task_id)
        if state == "SUCCESS":
            value = result.result
        elif state in ("FAILURE", "RETRY"):
            value = {"error": repr(result.result)}
        else:
            value = None
        return jsonify({"id": task_id, "state": state, "result": value}), 200

    @api.get("/healthz")
    def healthz() -> tuple[Any, int]:
        return jsonify({"status": "ok", "broker": settings["broker"]}), 200

    return api


def _app() -> Flask:
    """The API of the app celery_kit.boot configured (gunicorn loads it through celery_kit.wsgi)."""
    from celery_kit.app import app as celery_app  # noqa: PLC0415 (loads the deployment when served)

    return create_api(celery_app)


def __getattr__(name: str) -> Any:
    if name == "app":
        return _app()
    raise AttributeError(name)
