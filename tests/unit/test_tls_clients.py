"""Clients over TLS: every URL the roles write names the deployment's CA, and every client built from
one trusts that CA only and checks the name of what it reaches (RabbitMQ: the name all nodes carry;
Redis: the address connected to). Without TLS the URLs and clients stay plain."""

import importlib.util
import ssl
from pathlib import Path

import pytest
from redis.connection import SSLConnection
from redis.sentinel import SentinelConnectionPool
from sample import deployment_settings, kit_app

from celery_kit import amqpurl, rabbit, redisurl

ROOT = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location("kit_urls", ROOT / "plugins/filter/kit_urls.py")
kit_urls = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(kit_urls)
CA = "/etc/celery-kit/tls/ca.crt"
SERVER_NAME = "rabbitmq.celery-kit"
NODES = ["10.0.0.10", "10.0.0.11", "10.0.0.12"]
SENTINELS = ["10.0.0.20", "10.0.0.21", "10.0.0.22"]


def amqp_urls(tls: bool = True) -> list[str]:
    """The AMQP URLs the celery_app role writes (the kit_amqp_urls filter)."""
    return kit_urls.kit_amqp_urls(
        NODES, "celery", "p/w", 5671 if tls else 5672, "/celery", CA if tls else "", SERVER_NAME if tls else ""
    )


def redis_urls(sentinels: list[str], tls: bool = True) -> list[str]:
    """The Redis URLs the celery_app role writes (the kit_redis_urls filter), by database."""
    return kit_urls.kit_redis_urls("pw", "10.0.0.20", 6379, sentinels, 26379, "celery-kit", "spw", CA if tls else "")


def test_every_rabbitmq_node_is_reached_over_amqps_with_the_ca_and_the_nodes_name():
    urls = amqp_urls()
    assert [amqpurl.parse(url).port for url in urls] == [5671, 5671, 5671]
    assert all(url.startswith("amqps://celery:p%2Fw@") for url in urls)
    options = amqpurl.ssl_options(";".join(urls))
    assert options["ca_certs"] == CA
    assert options["cert_reqs"] == ssl.CERT_REQUIRED
    # One name for every node: kombu keeps one set of options across failovers.
    assert options["server_hostname"] == SERVER_NAME
    assert options["tls_minimum_version"] == ssl.TLSVersion.TLSv1_2


def test_celery_gets_the_urls_without_the_kits_query_and_the_tls_options_apart():
    urls = ";".join(amqp_urls())
    app = kit_app(deployment_settings(broker_url=urls))
    assert app.conf.broker_url == ";".join(f"amqps://celery:p%2Fw@{node}:5671/%2Fcelery" for node in NODES)
    assert app.conf.broker_use_ssl["server_hostname"] == SERVER_NAME
    assert app.conf.broker_use_ssl["cert_reqs"] == ssl.CERT_REQUIRED
    connection = app.connection_for_write()
    assert connection.ssl["ca_certs"] == CA
    assert connection.transport_cls in ("amqps", "amqp")


def test_the_kits_own_amqp_client_checks_the_certificate_too():
    params = rabbit.amqp_params(amqp_urls()[1])
    assert params["host"] == "10.0.0.11:5671"
    assert params["password"] == "p/w"  # noqa: S105
    assert params["ssl"]["server_hostname"] == SERVER_NAME
    assert params["ssl"]["ca_certs"] == CA


def test_without_tls_the_amqp_urls_and_clients_stay_plain():
    urls = amqp_urls(tls=False)
    assert all(url.startswith("amqp://") and url.endswith(":5672/%2Fcelery") for url in urls)
    assert amqpurl.ssl_options(";".join(urls)) is False
    app = kit_app(deployment_settings(broker_url=";".join(urls)))
    assert not app.conf.broker_use_ssl


def test_one_redis_server_is_reached_over_rediss_checking_its_address():
    url = redis_urls([])[1]
    assert url == f"rediss://:pw@10.0.0.20:6379/1?tls_ca={CA.replace('/', '%2F')}"
    client = redisurl.connect(url)
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is SSLConnection
    assert kwargs["ssl_ca_certs"] == CA
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs.get("ssl_check_hostname", True) is True


def test_results_over_tls_get_celerys_ssl_options_and_the_url_without_the_query():
    url = redis_urls([])[1]
    app = kit_app(deployment_settings(result_backend=url))
    assert app.conf.result_backend == "rediss://:pw@10.0.0.20:6379/1"
    assert app.conf.redis_backend_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": CA}
    assert app.backend.connparams["ssl_ca_certs"] == CA
    assert app.backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_the_sentinels_and_the_primary_are_reached_over_tls():
    url = redis_urls(SENTINELS)[2]
    target = redisurl.parse(url)
    assert target.tls_ca == CA and "tls_ca" not in target.url
    client = redisurl.connect(url, socket_timeout=5)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert issubclass(pool.connection_class, SSLConnection)
    assert pool.connection_kwargs["ssl_ca_certs"] == CA
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool
    assert issubclass(sentinel.connection_class, SSLConnection)
    assert sentinel.connection_kwargs["ssl_ca_certs"] == CA
    assert sentinel.connection_kwargs["ssl_cert_reqs"] == "required"


def test_celery_reaches_results_through_sentinels_over_tls():
    url = redis_urls(SENTINELS)[1]
    app = kit_app(deployment_settings(result_backend=url))
    sentinel_kwargs = app.conf.result_backend_transport_options["sentinel_kwargs"]
    assert (sentinel_kwargs["ssl"], sentinel_kwargs["ssl_ca_certs"]) == (True, CA)
    assert app.conf.redis_backend_use_ssl["ssl_ca_certs"] == CA


def test_the_redis_broker_over_tls_gets_redis_ssl_options():
    urls = redis_urls(SENTINELS)
    app = kit_app(deployment_settings(broker="redis", broker_url=urls[0], result_backend=urls[1]))
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": CA}
    assert app.conf.broker_transport_options["sentinel_kwargs"]["ssl"] is True


def test_without_tls_the_redis_urls_stay_plain():
    assert redis_urls([], tls=False)[0] == "redis://:pw@10.0.0.20:6379/0"
    assert "tls_ca" not in redis_urls(SENTINELS, tls=False)[0]
    assert redisurl.ssl_options(redis_urls(SENTINELS, tls=False)[0]) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqps://u:pw@h:5671/%2Fcelery", "needs tls_ca"),
        ("amqps://u:pw@h:5671/%2Fcelery?tls_ca=/ca.crt", "tls_server_name"),
        ("amqp://u:pw@h:5672/%2Fcelery?tls_ca=/ca.crt", "only an amqps"),
        ("amqps://u:pw@h:5671/%2Fcelery?tls_ca=/ca.crt&tls_server_name=r&verify=no", "unknown options"),
        ("redis://u:pw@h:5672/", "look like"),
    ],
)
def test_a_bad_amqp_url_is_refused_without_showing_the_password(url, message):
    with pytest.raises(amqpurl.AmqpUrlError, match=message) as raised:
        amqpurl.parse(url)
    assert "pw" not in str(raised.value)


def test_a_failover_list_with_plain_and_tls_nodes_is_refused():
    mixed = amqp_urls()[0] + ";" + amqp_urls(tls=False)[1]
    with pytest.raises(amqpurl.AmqpUrlError, match="same TLS options"):
        amqpurl.split(mixed)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("rediss://:pw@h:6379/1", "needs tls_ca"),
        ("redis://:pw@h:6379/1?tls_ca=/ca.crt", "only a rediss"),
        ("rediss://:pw@h:6379/1?tls_ca=/ca.crt&ssl_cert_reqs=none", "unknown options"),
    ],
)
def test_a_bad_redis_url_is_refused_without_showing_the_password(url, message):
    with pytest.raises(redisurl.RedisUrlError, match=message) as raised:
        redisurl.parse(url)
    assert "pw" not in str(raised.value)
