"""The signup API; every answer is JSON.

POST /signup      {"username", "email", "password"}, as JSON or form-encoded
                  -> 201 {"user", "email_task", "analytics_task"}
                  400 bad input, 409 username taken, 413 body over
                  DATA_UPLOAD_MAX_MEMORY_SIZE, 415 other body types,
                  503 database or task queue unavailable
GET  /tasks/<id>  -> 200 {"id", "state"} (STORED: waiting in this host's
                  outbox for the broker); 400 not a task id;
                  503 result store unreachable
GET  /healthz     -> 200 {"status": "ok"}; 503 when the database does not answer

No input gets a 500: every way a body can be wrong is answered with a 4xx
and a message saying what is wrong.
"""

import json
import logging
import re
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery.exceptions import BackendGetMetaError
from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.models import User
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, ValidationError
from django.core.validators import validate_email
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.http import HttpRequest, JsonResponse

from users import publish

logger = logging.getLogger(__name__)

USERNAME_MAX_LENGTH = User._meta.get_field("username").max_length
EMAIL_MAX_LENGTH = User._meta.get_field("email").max_length
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,155}")
# What reading a task's state raises when Redis (the result store) is not
# there: its connection errors, or Celery's own once its retries are spent.
RESULT_STORE_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    OSError,
    BackendGetMetaError,
)


class BadInput(ValueError):
    """The request cannot be served as sent; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class PublishFailed(RuntimeError):
    """The signup committed, but its tasks could not be queued."""


def _error(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _method_not_allowed(request: HttpRequest, allowed: list[str]) -> JsonResponse:
    response = _error(405, f"{request.method} is not allowed here; use {' or '.join(allowed)}")
    response["Allow"] = ", ".join(allowed)
    return response


def read_fields(request: HttpRequest) -> dict[str, Any]:
    """The submitted fields, from a JSON object or a form-encoded body."""
    try:
        # Refused before it is read when its Content-Length is over the limit.
        body = request.body
    except RequestDataTooBig as error:
        raise BadInput(f"the body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes", 413) from error
    if request.content_type == "application/json":
        try:
            data = json.loads(body)
        # ValueError covers bad JSON and bytes that are not UTF-8; the JSON
        # parser raises RecursionError for arrays or objects nested too deep.
        except (ValueError, RecursionError) as error:
            raise BadInput("the body is not valid JSON") from error
        if not isinstance(data, dict):
            raise BadInput("the body must be a JSON object")
        return data
    if request.content_type == "application/x-www-form-urlencoded":
        try:
            return request.POST.dict()
        except SuspiciousOperation as error:  # e.g. more fields than DATA_UPLOAD_MAX_NUMBER_FIELDS
            raise BadInput("the form body is malformed") from error
    raise BadInput("send the fields as application/json or application/x-www-form-urlencoded", 415)


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        raise BadInput(f"{name} is required")
    if not isinstance(value, str):
        raise BadInput(f"{name} must be a string")
    try:
        # JSON can carry lone surrogates ("\ud800"), which no database
        # column nor the password hasher can encode.
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadInput(f"{name} is not valid Unicode text") from error
    if "\x00" in value:
        raise BadInput(f"{name} must not contain NUL characters")
    return value


def validate_signup(data: dict[str, Any]) -> tuple[str, str, str]:
    """The username, email and password of a signup, normalized as User.objects.create_user would."""
    username = User.normalize_username(_text(data, "username"))
    if not 1 <= len(username) <= USERNAME_MAX_LENGTH:
        raise BadInput(f"username must be 1 to {USERNAME_MAX_LENGTH} characters")
    try:
        UnicodeUsernameValidator()(username)
    except ValidationError as error:
        raise BadInput(f"username: {' '.join(error.messages)}") from error
    email = _text(data, "email")
    if len(email) > EMAIL_MAX_LENGTH:
        raise BadInput(f"email must be at most {EMAIL_MAX_LENGTH} characters")
    try:
        validate_email(email)
    except ValidationError as error:
        raise BadInput("email is not a valid email address") from error
    email = User.objects.normalize_email(email)
    password = _text(data, "password")
    try:
        # AUTH_PASSWORD_VALIDATORS: at least 8 characters (see settings).
        password_validation.validate_password(password, User(username=username, email=email))
    except ValidationError as error:
        raise BadInput(f"password: {' '.join(error.messages)}") from error
    return username, email, password


def signup(request: HttpRequest) -> JsonResponse:
    """Create a user, then queue its welcome email and its analytics event."""
    if request.method != "POST":
        return _method_not_allowed(request, ["POST"])
    try:
        username, email, password = validate_signup(read_fields(request))
    except BadInput as error:
        return _error(error.status, str(error))

    user = User(username=username, email=email)
    # What User.objects.create_user does, split in two: the password is
    # hashed (PBKDF2, some 0.3 s of CPU on purpose) before the transaction,
    # because the transaction holds SQLite's write lock from its start
    # (transaction_mode IMMEDIATE) and every other signup waits for it.
    user.set_password(password)
    queued: dict[str, str] = {}

    def queue_after_commit() -> None:
        try:
            queued.update(publish.queue_welcome(user))
        except publish.BROKER_ERRORS as error:
            raise PublishFailed(str(error)) from error

    try:
        with transaction.atomic():
            user.save()
            # Runs once the user is committed, and not at all if the
            # transaction rolls back: no email for a user who does not exist.
            # robust=False: its failure propagates out of the atomic block
            # (after the commit) to the handler below.
            transaction.on_commit(queue_after_commit, robust=False)
    except IntegrityError:
        return _error(409, f"the username {username} is taken")
    except PublishFailed as error:
        # The user exists, but its welcome email (or its analytics event, the
        # second publish) is neither queued nor stored: the broker does not
        # take it and the outbox is full or unwritable (or not configured).
        logger.error("user %s created, but its tasks could not be queued: %s", username, error.__cause__)
        return _error(
            503,
            "the account was created, but the task queue is unavailable: its welcome email may not be sent",
            user=username,
        )
    except DatabaseError as error:  # locked past the timeout, disk full, file unreadable
        logger.warning("signup of %s failed in the database: %s", username, error)
        return _error(503, "the database is unavailable, try again later")
    return JsonResponse({"user": username, **queued}, status=201)


def task_state(request: HttpRequest, task_id: str) -> JsonResponse:
    """The state Celery has for a task id (PENDING for an id it does not know)."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request, ["GET"])
    if not TASK_ID_PATTERN.fullmatch(task_id):
        return _error(400, "not a task id")
    try:
        state = publish.task_state(task_id)
    except RESULT_STORE_ERRORS as error:
        logger.warning("result store unavailable: %s", error)
        return _error(503, "the result store is unavailable, try again later")
    return JsonResponse({"id": task_id, "state": state})


def healthz(request: HttpRequest) -> JsonResponse:
    """The producer is up and its database answers."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(request, ["GET"])
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as error:
        logger.warning("health check: database unavailable: %s", error)
        return _error(503, "the database is unavailable")
    return JsonResponse({"status": "ok"})
