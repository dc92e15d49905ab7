"""Where the kit's processes reach RabbitMQ: AMQP URLs, over TLS by default.

A deployment with TLS (the default) names every node as::

    amqps://USER:PASSWORD@10.0.0.10:5671/%2Fcelery?tls_ca=/etc/celery-kit/tls/ca.crt&tls_server_name=rabbitmq.celery-kit

tls_ca is the deployment's certificate authority, the only one a client
trusts; tls_server_name is the name every RabbitMQ node's certificate
carries, which a client checks whichever node of the cluster it reaches
(kombu keeps one set of TLS options for all the nodes it fails over
between, so the name cannot be each node's own). Without TLS::

    amqp://USER:PASSWORD@10.0.0.10:5672/%2Fcelery

The broker setting lists one URL per node joined by ";" (failover). Celery
and kombu get the URLs without the kit's query, and the TLS options
apart (broker_use_ssl, Connection(ssl=...)); py-amqp the same options.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

SCHEMES = {"amqp": 5672, "amqps": 5671}
QUERY_KEYS = ("tls_ca", "tls_server_name")


class AmqpUrlError(ValueError):
    """An AMQP URL the kit cannot read (the message never holds a password)."""


@dataclass(frozen=True)
class AmqpTarget:
    """What one AMQP URL names: a node, and how to check its certificate."""

    url: str  # without the kit's query: what kombu takes
    host: str
    port: int
    userid: str
    password: str
    virtual_host: str
    tls_ca: str | None = None
    tls_server_name: str | None = None

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None


def parse(url: str) -> AmqpTarget:
    """Read one amqp:// or amqps:// URL (see the module's docstring)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise AmqpUrlError("an AMQP URL must look like amqps://user:password@host:5671/%2Fvhost")
    options = dict(parse_qsl(parts.query))
    unknown = sorted(set(options) - set(QUERY_KEYS))
    if unknown:
        raise AmqpUrlError(f"unknown options in an AMQP URL: {', '.join(unknown)}")
    tls = parts.scheme == "amqps"
    if tls != ("tls_ca" in options):
        raise AmqpUrlError("an amqps:// URL needs tls_ca=<CA file> in its query, and only an amqps:// URL takes it")
    if tls and not options.get("tls_server_name"):
        raise AmqpUrlError("an amqps:// URL needs tls_server_name=<name on the nodes' certificates> in its query")
    return AmqpTarget(
        url=urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
        host=parts.hostname,
        port=parts.port or SCHEMES[parts.scheme],
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
        tls_ca=options.get("tls_ca"),
        tls_server_name=options.get("tls_server_name"),
    )


def split(urls: str) -> list[AmqpTarget]:
    """Every node of a ";"-joined failover list; they must agree on TLS."""
    targets = [parse(url) for url in urls.split(";") if url]
    if not targets:
        raise AmqpUrlError("no AMQP URL given")
    if len({(target.tls_ca, target.tls_server_name) for target in targets}) > 1:
        raise AmqpUrlError("every node of an AMQP failover list must have the same TLS options")
    return targets


def kombu_url(urls: str) -> str:
    """The failover list as kombu and Celery take it (without the kit's query)."""
    return ";".join(target.url for target in split(urls))


def ssl_options(urls: str) -> dict[str, Any] | bool:
    """kombu's Connection(ssl=...), Celery's broker_use_ssl and py-amqp's ssl: False without TLS.

    The certificate must be signed by the deployment's CA and name
    tls_server_name; TLS 1.2 at least.
    """
    target = split(urls)[0]
    if not target.tls:
        return False
    return {
        "ca_certs": target.tls_ca,
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": target.tls_server_name,
        "tls_minimum_version": ssl.TLSVersion.TLSv1_2,
    }


def amqp_params(url: str) -> dict[str, Any]:
    """py-amqp connection parameters of one node."""
    target = parse(url)
    return {
        "host": f"{target.host}:{target.port}",
        "userid": target.userid,
        "password": target.password,
        "virtual_host": target.virtual_host,
        "ssl": ssl_options(url),
        "connect_timeout": 5,
        "read_timeout": 60,
        "write_timeout": 60,
    }
