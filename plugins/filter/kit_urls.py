"""Filters building the URLs the kit's hosts reach RabbitMQ and Redis with (one place for their form).

The celery_app role writes them into the app's settings, and the playbooks
give the kit's tools the same ones (playbooks/group_vars/all/wiring.yml).
Their form is what celery_kit.amqpurl and celery_kit.redisurl read:

    {{ hosts | kit_amqp_urls(user, password, port, vhost, tls_ca, tls_server_name) }}
        one URL per RabbitMQ node, in the order given (the app fails over
        from one to the next): amqps://user:password@host:port/%2Fvhost
        ?tls_ca=<CA file>&tls_server_name=<name on every node's certificate>
        over TLS, amqp://user:password@host:port/%2Fvhost without (tls_ca '')
    {{ password | kit_redis_urls(host, port, sentinels, sentinel_port,
                                 master_name, sentinel_password, tls_ca, user=user) }}
        sixteen URLs, by database number: rediss://user:password@host:port/db
        ?tls_ca=<CA file> for one server (redis://... without TLS), or, with
        sentinels, every Sentinel joined by ";" with the group's name, the
        client's login to the Sentinels and the CA in the query
        (sentinel://user:password@s1:26379/db;...?master_name=..&sentinel_user=user&tls_ca=..)
        The user is the Redis user (ACL) the client logs in as; without
        one, the URL names none (the default user). The client logs in to
        the Sentinels as that user too (sentinel_user), or, when
        sentinel_password is given, with the Sentinels' own password.

Filters rather than templates: a role variable built by a template lookup
finds its template only inside the role, and playbooks read these
variables outside it too (make bench writes its own settings from them).
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

REDIS_DATABASES = 16


def _quoted(value: object) -> str:
    return quote(str(value), safe="")


def kit_amqp_urls(  # noqa: PLR0917 (a Jinja filter takes its arguments by position)
    hosts: list[str],
    user: str,
    password: str,
    port: int,
    vhost: str,
    tls_ca: str = "",
    tls_server_name: str = "",
) -> list[str]:
    scheme = "amqps" if tls_ca else "amqp"
    query = "?" + urlencode({"tls_ca": tls_ca, "tls_server_name": tls_server_name}) if tls_ca else ""
    return [f"{scheme}://{_quoted(user)}:{_quoted(password)}@{host}:{port}/{_quoted(vhost)}{query}" for host in hosts]


def kit_redis_urls(  # noqa: PLR0917 (a Jinja filter takes its arguments by position)
    password: str,
    host: str,
    port: int,
    sentinels: list[str],
    sentinel_port: int,
    master_name: str,
    sentinel_password: str,
    tls_ca: str = "",
    user: str = "",
) -> list[str]:
    urls = []
    tls = {"tls_ca": tls_ca} if tls_ca else {}
    login = f"{_quoted(user)}:{_quoted(password)}"
    for db in range(REDIS_DATABASES):
        if sentinels:
            parts = ";".join(f"sentinel://{login}@{sentinel}:{sentinel_port}/{db}" for sentinel in sentinels)
            login_there = {"sentinel_password": sentinel_password} if sentinel_password else {"sentinel_user": user}
            query = urlencode({"master_name": master_name, **login_there, **tls})
            urls.append(f"{parts}?{query}")
        else:
            scheme = "rediss" if tls_ca else "redis"
            urls.append(f"{scheme}://{login}@{host}:{port}/{db}" + ("?" + urlencode(tls) if tls else ""))
    return urls


class FilterModule:
    def filters(self) -> dict:
        return {"kit_amqp_urls": kit_amqp_urls, "kit_redis_urls": kit_redis_urls}
