"""Where the kit's processes reach Redis: one URL, a server or its Sentinels.

A deployment with one Redis host names the server, and the user the
client logs in as (the kit gives each client its own; without a user
name, Redis's default user)::

    redis://USER:PASSWORD@10.0.0.20:6379/1

A deployment with several (a primary, replicas and a Sentinel on each host)
names every Sentinel, as Celery's and kombu's sentinel transports read it
(";" between the Sentinels), and adds the group's name and how the client
logs in to the Sentinels as the URL's query: as its own user (the kit's
clients; the Sentinels know them too, and let them only ask where the
primary is)::

    sentinel://USER:PASSWORD@10.0.0.20:26379/1;sentinel://USER:PASSWORD@10.0.0.21:26379/1;...
        ?master_name=celery-kit&sentinel_user=USER

or with the Sentinels' own password (their default user)::

    sentinel://...;sentinel://...?master_name=celery-kit&sentinel_password=SECRET

USER and PASSWORD log in to Redis, and with sentinel_user to the Sentinels
too; SECRET to the Sentinels. Over TLS (the kit's default)
a server is named rediss://, and either form carries the deployment's
certificate authority, the only one the client trusts, in its query::

    rediss://USER:PASSWORD@10.0.0.20:6379/1?tls_ca=/etc/celery-kit/tls/ca.crt
    sentinel://...;sentinel://...?master_name=celery-kit&sentinel_user=USER&tls_ca=/etc/...

With tls_ca, the Sentinels and every Redis server are reached over TLS, and
a server's certificate must be signed by that CA and name the address the
client connects to (the primary's, as the Sentinels announce it).

The URL travels in files and on standard input only (the deployment file,
the tools' configurations), never on a command line. `connect` gives a
redis-py client of the current primary either way; `celery_url`,
`transport_options` and `ssl_options` split the URL into what Celery takes:
the URL without the kit's query, the transport options naming the group,
and the TLS options (redis_backend_use_ssl, broker_use_ssl).
"""

from __future__ import annotations

import inspect
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"
SENTINEL_PORT = 26379
# How long a question to a Sentinel may take: a Sentinel that does not
# answer is skipped for the next one.
SENTINEL_SOCKET_TIMEOUT = 2.0
# redis-py names itself to every server it connects to (CLIENT SETINFO).
# A client user of the Sentinels may only ask where the primary is, so to
# the Sentinels it does not try (a refused SETINFO would fill their ACL
# log); older redis-py releases take lib_name and lib_version instead.
NO_CLIENT_INFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)
QUERY_KEYS = ("master_name", "sentinel_user", "sentinel_password", "tls_ca")
SERVER_SCHEMES = ("redis", "rediss")


class RedisUrlError(ValueError):
    """A Redis URL the kit cannot read (the message never holds a password)."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names: a server, or a group behind its Sentinels."""

    url: str  # without the kit's query: what Celery and redis-py take
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_password: str | None = None
    sentinel_user: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls_ca: str | None = None

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)


def _parse_server(url: str) -> RedisTarget:
    """A redis:// or rediss:// URL; rediss:// needs tls_ca, the only query key the kit reads here."""
    parts = urlsplit(url)
    if parts.scheme not in SERVER_SCHEMES:
        # Not Redis (memory:// in tests, a developer's settings): as given.
        return RedisTarget(url=url)
    options = dict(parse_qsl(parts.query))
    if set(options) - {"tls_ca"}:
        raise RedisUrlError(f"unknown options in a Redis URL: {', '.join(sorted(set(options) - {'tls_ca'}))}")
    if (parts.scheme == "rediss") != ("tls_ca" in options):
        raise RedisUrlError("a rediss:// URL needs tls_ca=<CA file> in its query, and only a rediss:// URL takes it")
    return RedisTarget(url=urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), tls_ca=options.get("tls_ca"))


def parse(url: str) -> RedisTarget:
    """Read a redis://, rediss:// or the kit's sentinel:// URL (see the module's docstring)."""
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return _parse_server(url)
    chunks = [chunk for chunk in url.split(";") if chunk]
    options: dict[str, str] = {}
    plain: list[str] = []
    sentinels: list[tuple[str, int]] = []
    username = None
    password = None
    db = 0
    for chunk in chunks:
        base, _, query = chunk.partition("?")
        options.update(parse_qsl(query))
        parts = urlsplit(base)
        if parts.scheme != SENTINEL_SCHEME or not parts.hostname:
            raise RedisUrlError("every part of a sentinel URL must be sentinel://[[user]:password@]host[:port][/db]")
        sentinels.append((parts.hostname, parts.port or SENTINEL_PORT))
        if parts.password is not None:
            password = unquote(parts.password)
        if parts.username:
            username = unquote(parts.username)
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
    if options.get("sentinel_user") and options.get("sentinel_password"):
        raise RedisUrlError("a sentinel URL takes sentinel_user or sentinel_password, not both")
    return RedisTarget(
        url=";".join(plain),
        sentinels=tuple(sentinels),
        master_name=options["master_name"],
        sentinel_password=options.get("sentinel_password") or None,
        sentinel_user=options.get("sentinel_user") or None,
        username=username,
        password=password,
        db=db,
        tls_ca=options.get("tls_ca"),
    )


def ssl_options(url: str) -> dict[str, Any] | None:
    """Celery's redis_backend_use_ssl or broker_use_ssl (and redis-py's keywords): None without TLS.

    A server's certificate must be signed by the CA and name the address
    connected to (redis-py checks host names by default).
    """
    target = parse(url)
    if target.tls_ca is None:
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": target.tls_ca}


def sentinel_kwargs(target: RedisTarget) -> dict[str, Any]:
    """How a client talks to the Sentinels themselves: its login there, short timeouts.

    With sentinel_user, the client logs in as that user with its Redis
    password; else with the Sentinels' password, when there is one.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT,
        "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT,
    }
    if target.sentinel_user:
        kwargs.update(username=target.sentinel_user, password=target.password, **NO_CLIENT_INFO)
    elif target.sentinel_password:
        kwargs["password"] = target.sentinel_password
    if target.tls_ca is not None:
        kwargs.update(ssl=True, ssl_cert_reqs="required", ssl_ca_certs=target.tls_ca)
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


def connect(url: str, sentinel_options: dict[str, Any] | None = None, **kwargs: Any) -> redis.Redis:
    """A client of the server, or of the group's current primary (found again after a failover).

    kwargs go to every connection to Redis (socket timeouts, retry policy,
    client_name...); sentinel_options replace settings of the connections
    to the Sentinels themselves (their timeouts, their retry policy).
    """
    target = parse(url)
    tls = {} if target.tls_ca is None else {"ssl_cert_reqs": "required", "ssl_ca_certs": target.tls_ca}
    if not target.is_sentinel:
        return redis.Redis.from_url(target.url, **tls, **kwargs)
    sentinel = Sentinel(
        list(target.sentinels), sentinel_kwargs={**sentinel_kwargs(target), **(sentinel_options or {})}, **kwargs
    )
    if tls:
        tls["ssl"] = True
    return sentinel.master_for(
        target.master_name, username=target.username, password=target.password, db=target.db, **tls
    )


def primary_address(url: str) -> tuple[str, int] | None:
    """The primary the Sentinels name now (None for a single server URL)."""
    target = parse(url)
    if not target.is_sentinel:
        return None
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs(target))
    return sentinel.discover_master(target.master_name)
