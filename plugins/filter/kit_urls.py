"""Filters building the URLs the kit's hosts reach RabbitMQ and Redis with (one place for their form).

The celery_app role writes them into the app's settings, and the playbooks
give the kit's tools the same ones (playbooks/group_vars/all/wiring.yml).
Their form is what celery_kit.amqpurl and celery_kit.redisurl read:

    {{ hosts | kit_amqp_urls(user, password, port, vhost) }}
        one amqp://user:password@host:port/%2Fvhost per RabbitMQ node, in
        the order given (the app fails over from one to the next)
    {{ password | kit_redis_urls(host, port, sentinels, sentinel_port,
                                 master_name, sentinel_password) }}
        sixteen URLs, by database number: redis://:password@host:port/db
        for one server, or, with sentinels, every Sentinel joined by ";"
        with the group's name and the Sentinels' password in the query
        (sentinel://:password@s1:26379/db;...?master_name=..&sentinel_password=..)

Filters rather than templates: a role variable built by a template lookup
finds its template only inside the role, and playbooks read these
variables outside it too (make bench writes its own settings from them).
"""

from __future__ import annotations

from urllib.parse import quote

REDIS_DATABASES = 16


def _quoted(value: object) -> str:
    return quote(str(value), safe="")


def kit_amqp_urls(hosts: list[str], user: str, password: str, port: int, vhost: str) -> list[str]:
    return [f"amqp://{_quoted(user)}:{_quoted(password)}@{host}:{port}/{_quoted(vhost)}" for host in hosts]


def kit_redis_urls(  # noqa: PLR0917 (a Jinja filter takes its arguments by position)
    password: str,
    host: str,
    port: int,
    sentinels: list[str],
    sentinel_port: int,
    master_name: str,
    sentinel_password: str,
) -> list[str]:
    urls = []
    for db in range(REDIS_DATABASES):
        if sentinels:
            parts = ";".join(
                f"sentinel://:{_quoted(password)}@{sentinel}:{sentinel_port}/{db}" for sentinel in sentinels
            )
            urls.append(f"{parts}?master_name={_quoted(master_name)}&sentinel_password={_quoted(sentinel_password)}")
        else:
            urls.append(f"redis://:{_quoted(password)}@{host}:{port}/{db}")
    return urls


class FilterModule:
    def filters(self) -> dict:
        return {"kit_amqp_urls": kit_amqp_urls, "kit_redis_urls": kit_redis_urls}
