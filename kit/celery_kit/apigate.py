"""The producer's gate: who may call the app's HTTP API, and how much.

celery_kit.wsgi wraps every app's WSGI callable in it when the deployment's
settings carry ``api_gate`` (the kit's default). Every request but those to
a public path must carry ``Authorization: Bearer <token>``; a missing,
malformed or unknown token gets a 401 with a JSON ``{"error": ...}`` and
``WWW-Authenticate: Bearer``. The api hosts hold only the tokens' SHA-256
hashes, in a file the gate reads again whenever it changes: a token issued
or revoked (make api-token, make api-token-revoke) counts from the next
request, no restart. A token replaced by make rotate-secrets keeps its old
value's hash for a while, with the time it stops ("expires", seconds since
the epoch), so its client can switch to the new one without a refusal.

Limits, per token (per client address on a public path), shared by every
gunicorn process of every api host through Redis (the locks database):

- rate: requests a second, with a burst (a token bucket: GCRA, one Lua
  script, Redis's own clock); past it, 429 with Retry-After;
- daily: submissions (POST, PUT, PATCH, DELETE) a UTC day; bounds what one
  token can store in Redis (results live result_expires);
- work: seconds of task time a second, with a burst, which the app charges
  per submission (``charge(seconds)``: the sample API charges a
  process_task its seconds), so one token cannot keep every worker busy.

A Redis that does not answer must not refuse a submission (the outbox
keeps accepting through a Redis outage): the gate then counts in the
process, each process at its share of the rate (rate / processes), skips
the daily quota, and asks Redis again after FALLBACK_SECONDS.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_kit import redisurl

log = logging.getLogger(__name__)

AUTHORIZATION_HEADER = "HTTP_AUTHORIZATION"
BUCKET_KEY = "celery-kit:gate:{}:{}"
QUOTA_KEY = "celery-kit:quota:{}:{}"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A bearer token: printable ASCII, at most this long (longer is refused
# before it is hashed).
MAX_TOKEN_CHARS = 256
# After Redis failed to answer, the gate counts in the process this long.
FALLBACK_SECONDS = 5.0
# The gate asks Redis once, with short timeouts and no retry, and falls back
# at once: redis-py's own default retries a failed command 10 times with
# backoff, and a Sentinel client asks every Sentinel with its own retries,
# which held a request past a client's 20 s timeout while a Redis primary's
# host was lost (molecule default's failover test).
REDIS_TIMEOUT_SECONDS = 0.25
FAIL_FAST = {
    "socket_timeout": REDIS_TIMEOUT_SECONDS,
    "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
    "retry": Retry(NoBackoff(), 0),
}

# One call per request: the bucket (rate or work) first, then, for a
# submission, the day's quota. Returns {0, ms to wait} when refused by the
# bucket, {2, seconds to midnight} by the quota, else {1}. GCRA: the bucket
# holds the theoretical arrival time of the next request (ms, Redis's clock).
LIMIT_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + cost * interval
if next_tat - tolerance > now then
  return {0, math.ceil(next_tat - tolerance - now)}
end
if KEYS[2] then
  local used = redis.call('INCR', KEYS[2])
  if used == 1 then redis.call('EXPIRE', KEYS[2], 172800) end
  if used > tonumber(ARGV[4]) then
    redis.call('DECR', KEYS[2])
    return {2, 86400 - (t[1] % 86400)}
  end
end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil(next_tat - now + tolerance) + 1000)
return {1}
"""


class GateError(ValueError):
    """The gate's settings or tokens file cannot be used."""


class LimitExceeded(Exception):
    """A request over a limit: the client should wait retry_after seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


@dataclass(frozen=True)
class Limits:
    """What one token (or one client address on a public path) may do."""

    rate: float = 20.0  # requests a second
    burst: int = 40  # requests at once above the rate
    daily: int = 200_000  # submissions a UTC day
    work_rate: float = 2.0  # task seconds charged a second
    work_burst: float = 120.0  # task seconds at once above the work rate

    @classmethod
    def parse(cls, values: dict[str, Any], where: str) -> Limits:
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise GateError(f"{where}: unknown limits {', '.join(unknown)}")
        limits = cls(**values)
        for name in cls.__dataclass_fields__:
            value = getattr(limits, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise GateError(f"{where}: {name} must be a positive number, not {value!r}")
        return limits


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: a token's name, or a client address on a public path."""

    name: str
    limits: Limits


@dataclass
class Settings:
    tokens_file: str
    public_paths: tuple[str, ...] = ()
    public_limits: Limits = field(default_factory=Limits)
    processes: int = 1

    @classmethod
    def parse(cls, values: dict[str, Any]) -> Settings:
        if not isinstance(values, dict) or not isinstance(values.get("tokens_file"), str):
            raise GateError("api_gate must be an object naming its tokens_file")
        paths = values.get("public_paths", [])
        if not isinstance(paths, list) or not all(isinstance(path, str) and path.startswith("/") for path in paths):
            raise GateError("api_gate.public_paths must be a list of paths starting with /")
        return cls(
            tokens_file=values["tokens_file"],
            public_paths=tuple(paths),
            public_limits=Limits.parse(values.get("public_limits", {}), "api_gate.public_limits"),
            processes=max(1, int(values.get("processes", 1))),
        )

    def is_public(self, path: str) -> bool:
        """A public path: exactly, or below it when it ends with /."""
        return any(path == public or (public.endswith("/") and path.startswith(public)) for public in self.public_paths)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """The tokens file: {sha256 hex: {"name": ..., "limits": {...}, "expires": ...}}, read again when it changes.

    "expires" (optional; a rotated token's old value) is when the hash
    stops being accepted, in seconds since the epoch.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[float, int] | None = None
        self._callers: dict[str, Caller] = {}
        self._expiries: dict[str, float] = {}
        self._lock = threading.Lock()

    def _load(self) -> None:
        stat = os.stat(self.path)
        seen = (stat.st_mtime, stat.st_size)
        if seen == self._seen:
            return
        with open(self.path, encoding="utf-8") as tokens_file:
            entries = json.load(tokens_file)
        if not isinstance(entries, dict):
            raise GateError(f"{self.path} must hold a JSON object of token hashes")
        callers = {}
        expiries = {}
        for digest, entry in entries.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise GateError(f"{self.path}: every token needs a name")
            callers[digest] = Caller(entry["name"], Limits.parse(entry.get("limits", {}), f"token {entry['name']}"))
            expires = entry.get("expires")
            if expires is not None:
                if isinstance(expires, bool) or not isinstance(expires, (int, float)):
                    raise GateError(f"{self.path}: token {entry['name']}: expires must be seconds since the epoch")
                expiries[digest] = float(expires)
        self._callers, self._expiries, self._seen = callers, expiries, seen

    def find(self, token: str) -> Caller | None:
        with self._lock:
            self._load()
            digest = token_hash(token)
            if time.time() >= self._expiries.get(digest, math.inf):
                return None
            return self._callers.get(digest)


class LocalBuckets:
    """The fallback while Redis does not answer: GCRA buckets in this process, at its share of the rate."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self, key: str, *, rate: float, burst: float, cost: float) -> float:
        """0 when allowed, else the seconds to wait."""
        interval = self.processes / rate
        tolerance = interval * burst
        with self._lock:
            now = time.monotonic()
            tat = max(self._tat.get(key, now), now)
            next_tat = tat + cost * interval
            if next_tat - tolerance > now:
                return next_tat - tolerance - now
            self._tat[key] = next_tat
            return 0.0


class Limiter:
    """The limits in Redis, or in the process while Redis does not answer."""

    def __init__(self, locks_url: str | None, processes: int) -> None:
        self.client = redisurl.connect(locks_url, sentinel_options=FAIL_FAST, **FAIL_FAST) if locks_url else None
        self.local = LocalBuckets(processes)
        self._script = self.client.register_script(LIMIT_SCRIPT) if self.client else None
        self._redis_back_at = 0.0

    def take(
        self, caller: Caller, bucket: str, *, rate: float, burst: float, cost: float, daily: int | None = None
    ) -> None:
        """Take cost from the caller's bucket (and a submission from its day's quota); raise LimitExceeded."""
        if self._script is not None and time.monotonic() >= self._redis_back_at:
            keys = [BUCKET_KEY.format(caller.name, bucket)]
            if daily is not None:
                keys.append(QUOTA_KEY.format(caller.name, time.strftime("%Y%m%d", time.gmtime())))
            try:
                answer = self._script(keys=keys, args=[1000 / rate, 1000 / rate * burst, cost, daily or 0])
            except (redis.exceptions.RedisError, OSError) as exc:
                self._redis_back_at = time.monotonic() + FALLBACK_SECONDS
                log.warning("the gate counts in this process for %.0f s; Redis: %r", FALLBACK_SECONDS, exc)
            else:
                if answer[0] == 0:
                    raise LimitExceeded(f"{caller.name}: over its {bucket} limit", math.ceil(answer[1] / 1000))
                if answer[0] == 2:
                    raise LimitExceeded(f"{caller.name}: its {daily} submissions of the day are used", answer[1])
                return
        wait = self.local.take(f"{caller.name}:{bucket}", rate=rate, burst=burst, cost=cost)
        if wait:
            raise LimitExceeded(f"{caller.name}: over its {bucket} limit", math.ceil(wait))


_current: contextvars.ContextVar[tuple[Limiter, Caller] | None] = contextvars.ContextVar(
    "celery_kit_gate", default=None
)


def charge(seconds: float) -> None:
    """Charge the current request's caller seconds of task time; raise LimitExceeded past its work limit.

    Outside a gated request (a worker, a test without the gate) nothing is charged.
    """
    current = _current.get()
    if current is None or seconds <= 0:
        return
    limiter, caller = current
    limiter.take(caller, "work", rate=caller.limits.work_rate, burst=caller.limits.work_burst, cost=seconds)


def _answer(
    start_response: Callable, status: str, message: str, headers: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    body = json.dumps({"error": message}).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers],
    )
    return [body]


def bearer_token(environ: dict[str, Any]) -> str | None:
    """The request's bearer token, or None when it carries none that could be one."""
    header = environ.get(AUTHORIZATION_HEADER, "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        return None
    if not token.isascii() or not token.isprintable() or " " in token:
        return None
    return token


class Gate:
    """WSGI middleware: authentication and limits in front of the app."""

    def __init__(self, app: Callable, settings: Settings, locks_url: str | None) -> None:
        self.app = app
        self.settings = settings
        self.tokens = Tokens(settings.tokens_file)
        self.limiter = Limiter(locks_url, settings.processes)

    def caller(self, environ: dict[str, Any]) -> Caller | None:
        if self.settings.is_public(environ.get("PATH_INFO", "")):
            return Caller(f"address-{environ.get('REMOTE_ADDR', 'unknown')}", self.settings.public_limits)
        token = bearer_token(environ)
        return self.tokens.find(token) if token else None

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        try:
            caller = self.caller(environ)
        except (OSError, ValueError) as exc:
            # The tokens file cannot be read: no request is let through.
            print(f"celery-kit gate: cannot read the tokens file {self.settings.tokens_file}: {exc}", flush=True)
            return _answer(start_response, "503 Service Unavailable", "the API cannot check tokens now; try again")
        if caller is None:
            return _answer(
                start_response,
                "401 Unauthorized",
                "send a valid token: Authorization: Bearer <token> (make api-token issues one)",
                [("WWW-Authenticate", 'Bearer realm="celery-kit"')],
            )
        limits = caller.limits
        daily = limits.daily if environ.get("REQUEST_METHOD", "GET") in UNSAFE_METHODS else None
        try:
            self.limiter.take(caller, "rate", rate=limits.rate, burst=limits.burst, cost=1, daily=daily)
        except LimitExceeded as exc:
            return too_many(start_response, exc)
        token = _current.set((self.limiter, caller))
        try:
            return self.app(environ, start_response)
        finally:
            _current.reset(token)


def too_many(start_response: Callable, exc: LimitExceeded) -> list[bytes]:
    """A 429 for a request over a limit, with Retry-After."""
    return _answer(
        start_response,
        "429 Too Many Requests",
        f"too many requests: {exc}; retry after {exc.retry_after} s",
        [("Retry-After", str(exc.retry_after))],
    )


def wrap(app: Callable, deployment: dict[str, Any]) -> Callable:
    """The app behind the gate when the deployment's settings configure one, else the app itself."""
    gate = deployment.get("api_gate")
    if not gate:
        return app
    return Gate(app, Settings.parse(gate), deployment.get("locks_url"))
