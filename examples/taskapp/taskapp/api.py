"""HTTP API of the sample app: submit tasks and read their results.

POST /tasks        {"task": name, "args": [...], "kwargs": {...},
                    "countdown": seconds, "priority": 0-9, "queue": name}
                   -> 202 {"id": ...}
GET  /tasks/<id>   -> 200 {"id", "state", "result"}
GET  /healthz      -> 200 {"status": "ok", "broker": ...}

Every request but GET /healthz carries a token (Authorization: Bearer ...),
checked with the per-token limits by the kit's gate in front of the app
(celery_kit.apigate); a process_task submission is charged its seconds
against the token's work limit (429 past it).

Bad input gets a 4xx with a JSON {"error": message}, never a 5xx: a body is
checked before it is parsed (at most MAX_BODY_BYTES, else 413, whatever its
Content-Length says; UTF-8; arrays and objects at most MAX_JSON_DEPTH deep)
and after (no NaN or Infinity, no key twice in an object, no lone surrogate
or NUL in a string), then field by field. A submission the broker does not take
(unreachable, or blocking publishers) is stored in the host's durable outbox
(celery_kit.outbox) and still gets its 202; the relay sends it later, and
GET /tasks/<id> says STORED meanwhile. Only a full or unwritable outbox, or
an unreachable result store on GET, gets a 503, within a few seconds: never
a hang nor a 500.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Celery
from flask import Flask, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from celery_kit import apigate, outbox
from celery_kit.boot import producer_mode
from celery_kit.settings import HEALTH_TASK
from celery_kit.topology import PRIORITY_MAX, PRIORITY_MIN
from taskapp import tasks

MAX_BODY_BYTES = 64 * 1024
# Arrays and objects one in the other, the body itself included (a valid
# submission is 3 to 5 deep). Python's json parser and kombu's serialiser
# recurse once per level: near 1000 levels they fail (a RecursionError).
MAX_JSON_DEPTH = 32
# Digits of an integer anywhere in the body: Python's own default limit of
# int() (sys.int_info.default_max_str_digits), fixed here so that the
# interpreter's setting does not change what the API accepts.
MAX_INTEGER_DIGITS = 4300
MAX_NUMBER = 1e15
# Of an error message, which may echo names from the request.
MAX_ERROR_CHARS = 500
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


def _names(names: list[str], limit: int = 5) -> str:
    """Names taken from a request, for a message: a few of them, each cut short."""
    shown = [(name if len(name) <= 40 else name[:40] + "...") or '""' for name in names[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


def _check_content_type() -> None:
    """A JSON body, in UTF-8 and as sent: another charset or a Content-Encoding is refused, not guessed."""
    if not request.is_json:
        raise BadRequest("send a JSON body with Content-Type: application/json")
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise BadRequest(f"the body must be UTF-8, not charset={_names([charset])}")
    if request.content_encoding not in (None, "", "identity"):
        raise BadRequest("a Content-Encoding is not supported: send the JSON body uncompressed")


def _read_body() -> bytes:
    """The raw body; a 413 when it is longer than MAX_BODY_BYTES, whatever its Content-Length says.

    Werkzeug refuses a Content-Length over MAX_CONTENT_LENGTH, but a body
    without one (chunked, which gunicorn passes on) it cuts at that many
    bytes, silently, and the cut body would be parsed as if whole. So its
    limit is one byte more than the API's (create_api), and reading one
    byte more than the API takes tells a longer body from one of exactly
    MAX_BODY_BYTES. A body shorter than its Content-Length is werkzeug's
    ClientDisconnected (400).
    """
    declared = request.headers.get("Content-Length")
    if declared and not (declared.isascii() and declared.isdigit()):  # PEP 3333: it may be empty
        # Werkzeug would read it as 0: an empty body, a misleading message.
        raise BadRequest("Content-Length must be a number of bytes")
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()  # refused as declared, before any byte is read
    chunks = []
    size = 0
    while size <= MAX_BODY_BYTES:
        chunk = request.stream.read(MAX_BODY_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    return b"".join(chunks)


def _decode(body: bytes) -> str:
    """The body as text, strictly UTF-8 (RFC 8259).

    Python's json would guess UTF-16 or UTF-32 from the first bytes and let
    encoded surrogates through; here invalid or overlong sequences,
    surrogates and a byte order mark are refused.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    if text.startswith("\ufeff"):
        raise BadRequest("the body starts with a byte order mark: send UTF-8 without one")
    if not text.strip():
        raise BadRequest("the body is empty: send a JSON object")
    return text


# Table for bytes.translate: every byte but the brackets is deleted.
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _nesting_depth(body: bytes) -> int:
    """How deep arrays and objects nest in a JSON body, counted on the raw bytes, without parsing.

    Brackets in strings do not count: escaped backslashes, then escaped
    quotes, are dropped, so that the quotes left delimit the strings. In
    linear time and without recursion, as it runs before the parser, which
    recurses once per level. Invalid JSON gets some number (at least the
    depth the parser would reach before its error), then the parser's 400.
    """
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside_strings = b"".join(unescaped.split(b'"')[::2])
    depth = deepest = 0
    for bracket in outside_strings.translate(None, _NOT_BRACKETS):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _no_constant(name: str) -> None:
    """NaN, Infinity and -Infinity: Python's json reads them, JSON has no such numbers."""
    raise BadRequest(f"{name} is not a JSON number: numbers must be finite")


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; one that overflows a float (1e400) is refused."""
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"the number {_names([text])} is too large: numbers must be finite")
    return value


def _integer(text: str) -> int:
    """A JSON integer of at most MAX_INTEGER_DIGITS digits (longer ones int() refuses, or takes long)."""
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise BadRequest(f"an integer has more than {MAX_INTEGER_DIGITS} digits")
    try:
        return int(text)
    except ValueError as exc:  # an interpreter with a lower limit (PYTHONINTMAXSTRDIGITS)
        raise BadRequest(f"an integer has too many digits ({exc})") from exc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different.

    Python's json keeps the last of a key given twice; a proxy, a log
    reader or another parser may take the first: the same body would mean
    two submissions. Refused instead.
    """
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise BadRequest(f"key {_names([key])} appears twice in one object: keys must be unique")
        seen.add(key)
    return dict(pairs)


def _parse(text: str) -> Any:
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_integer,
        )
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


def _check_strings(value: Any) -> None:
    """Refuse strings that are valid JSON but not text: a lone surrogate, or NUL.

    A lone \\ud800 escape parses into a str that cannot be encoded (the
    worker's mail sink, a log line would fail on it); NUL cuts strings
    short in C libraries and PostgreSQL refuses it. Keys and values alike,
    walked without recursion.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise BadRequest("a string contains NUL (\\u0000)")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise BadRequest(
                    "a string contains a lone surrogate (a \\ud800-\\udfff escape without its pair)"
                ) from exc


def read_json() -> Any:
    """The request's JSON body, checked before it is parsed and after."""
    _check_content_type()
    body = _read_body()
    text = _decode(body)
    if _nesting_depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"the body is nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects")
    value = _parse(text)
    _check_strings(value)
    return value


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be a number")
    # An int is compared as it is: math.isfinite would overflow on 10**400.
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_NUMBER:
        raise BadRequest(f"{name} must be a finite number below {MAX_NUMBER:g} in size")


def _check_add(arguments: dict[str, Any]) -> None:
    _number("x", arguments["x"])
    _number("y", arguments["y"])


def _invisible(text: str) -> bool:
    """Whether text holds a control, format (bidirectional, zero-width), private or unassigned character."""
    return any(unicodedata.category(char).startswith("C") for char in text)


def _check_email(arguments: dict[str, Any]) -> None:
    email = arguments["email"]
    # fullmatch: the pattern's $ would let a trailing newline through.
    if not isinstance(email, str) or len(email) > 254 or not tasks.EMAIL_PATTERN.fullmatch(email) or _invisible(email):
        raise BadRequest(
            "email must be an email address of at most 254 characters, without control or invisible characters"
        )


def _check_process(arguments: dict[str, Any]) -> None:
    data = arguments["data"]
    if not isinstance(data, dict):
        raise BadRequest("data must be a JSON object")
    seconds = data.get("seconds", 0)
    _number("data.seconds", seconds)
    if not 0 <= seconds <= tasks.MAX_PROCESS_SECONDS:
        raise BadRequest(f"data.seconds must be between 0 and {tasks.MAX_PROCESS_SECONDS}")
    # The seconds a worker will spend count against the caller's work limit
    # (celery_kit.apigate), so one token cannot keep every worker busy.
    apigate.charge(seconds)


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
        raise BadRequest(f"unknown fields: {_names(unknown)}; allowed: {', '.join(sorted(SUBMIT_KEYS))}")
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
    # One byte more than the API takes: _read_body refuses that byte.
    api.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    # The deployment's settings, which celery_kit.boot put on the app.
    settings = celery_app.conf.celery_kit
    # Requests never wait for Redis, nor subscribe to results (the kit's
    # producer settings; celery_kit.wsgi applies them too).
    producer_mode(celery_app)
    queue_names = [queue["name"] for queue in settings["queues"]]
    box = outbox.for_app(celery_app)

    def error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> tuple[Any, int, Any]:
        if len(message) > MAX_ERROR_CHARS:
            message = message[:MAX_ERROR_CHARS] + "..."
        return jsonify({"error": message}), status, headers or []

    @api.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Any, int, Any]:
        # Werkzeug's headers (a 405's Allow) without its HTML page's type.
        headers = [(name, value) for name, value in exc.get_headers() if name.lower() != "content-type"]
        return error(exc.code or 500, exc.description or exc.name, headers)

    @api.errorhandler(NotFound)
    def not_found(exc: NotFound) -> tuple[Any, int, Any]:
        del exc
        return error(404, f"no such path: {request.path}; the API has POST /tasks, GET /tasks/<id>, GET /healthz")

    @api.errorhandler(MethodNotAllowed)
    def method_not_allowed(exc: MethodNotAllowed) -> tuple[Any, int, Any]:
        allowed = ", ".join(sorted(exc.valid_methods or []))
        return error(
            405, f"{request.method} is not allowed on {request.path}; allowed: {allowed}", [("Allow", allowed)]
        )

    @api.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> tuple[Any, int, Any]:
        del exc
        return error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")

    @api.errorhandler(ClientDisconnected)
    def cut_short(exc: ClientDisconnected) -> tuple[Any, int, Any]:
        del exc
        return error(400, "the body ended before its Content-Length")

    @api.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> tuple[Any, int, Any]:
        return error(400, str(exc))

    @api.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Any, int, Any]:
        # A bug, not bad input (which is refused above): logged with its
        # traceback; the client gets neither that nor Flask's HTML page.
        api.logger.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
        return error(500, "internal error; it is logged on the server")

    def unavailable(exc: Exception) -> tuple[Any, int, Any]:
        api.logger.warning("backend unavailable: %s", exc)
        return error(503, f"the broker or result store is unreachable, try again later ({exc.__class__.__name__})")

    for exc_class in UNAVAILABLE_ERRORS:
        api.register_error_handler(exc_class, unavailable)

    @api.errorhandler(apigate.LimitExceeded)
    def over_limit(exc: apigate.LimitExceeded) -> tuple[Any, int, Any]:
        return error(
            429, f"too many requests: {exc}; retry after {exc.retry_after} s", [("Retry-After", str(exc.retry_after))]
        )

    @api.errorhandler(outbox.OutboxFull)
    def outbox_full(exc: outbox.OutboxFull) -> tuple[Any, int, Any]:
        api.logger.error("submission refused: the broker does not take tasks and %s", exc)
        return error(503, f"the task queue is unavailable and this host's outbox is full; try again later ({exc})")

    @api.errorhandler(outbox.OutboxUnavailable)
    def outbox_unavailable(exc: outbox.OutboxUnavailable) -> tuple[Any, int, Any]:
        # Logged with the file's error (permissions, disk full, damaged);
        # the client is told only that nothing was accepted.
        api.logger.error("submission refused: %s", exc)
        return error(503, "the task queue is unavailable and the outbox cannot store the task; try again later")

    @api.post("/tasks")
    def submit() -> tuple[Any, int]:
        submission = validate_submission(celery_app, read_json(), queue_names, settings["max_countdown"])
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
        # fullmatch: the pattern's $ would let a trailing newline through.
        if not TASK_ID_PATTERN.fullmatch(task_id):
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
