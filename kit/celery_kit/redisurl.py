"""Where the kit's processes reach Redis: one URL, a server or its Sentinels.

A deployment with one Redis host names the server::

    redis://:PASSWORD@10.0.0.20:6379/1

A deployment with several (a primary, replicas and a Sentinel on each host)
names every Sentinel, as Celery's and kombu's sentinel transports read it
(";" between the Sentinels), and adds the group's name and the Sentinels'
own password as the URL's query::

    sentinel://:PASSWORD@10.0.0.20:26379/1;sentinel://:PASSWORD@10.0.0.21:26379/1;...
        ?master_name=celery-kit&sentinel_password=SECRET

PASSWORD is Redis's, SECRET the Sentinels'. The URL travels in files and on
standard input only (the deployment file, the tools' configurations), never
on a command line. `connect` gives a redis-py client of the current primary
either way; `celery_settings` splits the URL into what Celery takes: the
URL without the query, and the transport options naming the group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"
SENTINEL_PORT = 26379
# How long a question to a Sentinel may take: a Sentinel that does not
# answer is skipped for the next one.
SENTINEL_SOCKET_TIMEOUT = 2.0
QUERY_KEYS = ("master_name", "sentinel_password")


class RedisUrlError(ValueError):
    """A Redis URL the kit cannot read (the message never holds a password)."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names: a server, or a group behind its Sentinels."""

    url: str  # without the kit's query: what Celery and redis-py take
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_password: str | None = None
    password: str | None = None
    db: int = 0

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)


def parse(url: str) -> RedisTarget:
    """Read a redis:// or the kit's sentinel:// URL (see the module's docstring)."""
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return RedisTarget(url=url)
    chunks = [chunk for chunk in url.split(";") if chunk]
    options: dict[str, str] = {}
    plain: list[str] = []
    sentinels: list[tuple[str, int]] = []
    password = None
    db = 0
    for chunk in chunks:
        base, _, query = chunk.partition("?")
        options.update(parse_qsl(query))
        parts = urlsplit(base)
        if parts.scheme != SENTINEL_SCHEME or not parts.hostname:
            raise RedisUrlError("every part of a sentinel URL must be sentinel://[:password@]host[:port][/db]")
        sentinels.append((parts.hostname, parts.port or SENTINEL_PORT))
        if parts.password is not None:
            password = unquote(parts.password)
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise RedisUrlError(f"the database of a sentinel URL must be a number, not {path!r}")
            db = int(path)
        plain.append(base)
    unknown = sorted(set(options) - set(QUERY_KEYS))
    if unknown:
        raise RedisUrlError(f"unknown options in a sentinel URL: {', '.join(unknown)}")
    if not options.get("master_name"):
        raise RedisUrlError("a sentinel URL needs master_name=<group> in its query")
    return RedisTarget(
        url=";".join(plain),
        sentinels=tuple(sentinels),
        master_name=options["master_name"],
        sentinel_password=options.get("sentinel_password") or None,
        password=password,
        db=db,
    )


def sentinel_kwargs(target: RedisTarget) -> dict[str, Any]:
    """How a client talks to the Sentinels themselves: their password, short timeouts."""
    kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT,
        "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT,
    }
    if target.sentinel_password:
        kwargs["password"] = target.sentinel_password
    return kwargs


def transport_options(url: str) -> dict[str, Any]:
    """Celery's and kombu's transport options for url: the group's name and Sentinel settings; {} for a server."""
    target = parse(url)
    if not target.is_sentinel:
        return {}
    return {"master_name": target.master_name, "sentinel_kwargs": sentinel_kwargs(target)}


def celery_url(url: str) -> str:
    """url as Celery and kombu take it (without the kit's query)."""
    return parse(url).url


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client of the server, or of the group's current primary (found again after a failover).

    kwargs go to every connection to Redis (socket timeouts, client_name...).
    """
    target = parse(url)
    if not target.is_sentinel:
        return redis.Redis.from_url(url, **kwargs)
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs(target), **kwargs)
    return sentinel.master_for(target.master_name, password=target.password, db=target.db)


def primary_address(url: str) -> tuple[str, int] | None:
    """The primary the Sentinels name now (None for a single server URL)."""
    target = parse(url)
    if not target.is_sentinel:
        return None
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs(target))
    return sentinel.discover_master(target.master_name)
