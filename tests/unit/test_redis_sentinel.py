"""Several Redis hosts: every client reaches Redis through Sentinel; one host: nothing changes."""

import importlib.util
from pathlib import Path

import pytest
from redis.sentinel import SentinelConnectionPool
from sample import deployment_settings, kit_app

from celery_kit import redisurl
from celery_kit.settings import SENTINEL_PUBLISH_RETRY_POLICY

ROOT = Path(__file__).resolve().parents[2]
_SPEC = importlib.util.spec_from_file_location("kit_urls", ROOT / "plugins/filter/kit_urls.py")
kit_urls = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(kit_urls)
SENTINELS = ["10.0.0.20", "10.0.0.21", "10.0.0.22"]
REDIS_PASSWORD = "pa/ss"  # noqa: S105 (a test value)
SENTINEL_PASSWORD = "s3cret"  # noqa: S105


def _urls(sentinels):
    """The URLs the celery_app role writes (the kit_redis_urls filter, plugins/filter/kit_urls.py), by database."""
    return kit_urls.kit_redis_urls(REDIS_PASSWORD, "10.0.0.20", 6379, sentinels, 26379, "celery-kit", SENTINEL_PASSWORD)


def test_the_role_names_every_sentinel_the_group_and_both_passwords():
    target = redisurl.parse(_urls(SENTINELS)[1])
    assert target.sentinels == tuple((address, 26379) for address in SENTINELS)
    assert (target.master_name, target.sentinel_password, target.password, target.db) == (
        "celery-kit",
        SENTINEL_PASSWORD,
        REDIS_PASSWORD,
        1,
    )
    assert "?" not in target.url and SENTINEL_PASSWORD not in target.url
    assert target.url.count("sentinel://") == 3


def test_one_redis_host_keeps_its_plain_url():
    url = _urls([])[2]
    assert url == "redis://:pa%2Fss@10.0.0.20:6379/2"
    assert redisurl.parse(url).is_sentinel is False
    assert redisurl.transport_options(url) == {}


def test_results_go_through_sentinel_with_the_groups_name_and_the_sentinel_password():
    urls = _urls(SENTINELS)
    app = kit_app(deployment_settings(result_backend=urls[1], locks_url=urls[2]))
    assert app.conf.result_backend == redisurl.celery_url(urls[1])
    options = app.conf.result_backend_transport_options
    assert options["master_name"] == "celery-kit"
    assert options["sentinel_kwargs"]["password"] == SENTINEL_PASSWORD
    assert type(app.backend).__name__ == "SentinelBackend"
    # Results keep their retries through a failover.
    assert app.conf.result_backend_always_retry is True


def test_the_redis_broker_goes_through_sentinel_and_retries_a_publish_through_a_failover():
    urls = _urls(SENTINELS)
    app = kit_app(deployment_settings(broker="redis", broker_url=urls[0], result_backend=urls[1]))
    assert app.conf.broker_url == redisurl.celery_url(urls[0])
    options = app.conf.broker_transport_options
    assert options["master_name"] == "celery-kit"
    assert options["sentinel_kwargs"]["password"] == SENTINEL_PASSWORD
    assert options["visibility_timeout"] > 3600
    policy = app.conf.task_publish_retry_policy
    assert policy == SENTINEL_PUBLISH_RETRY_POLICY
    waits = [min(policy["interval_start"] + n * policy["interval_step"], policy["interval_max"]) for n in range(12)]
    # Longer than Sentinel's down-after-milliseconds (3 s) plus the promotion.
    assert sum(waits[: policy["max_retries"]]) > 8
    with app.connection_for_write() as connection:
        assert connection.transport_cls == "sentinel"


def test_a_single_redis_broker_keeps_its_short_publish_retry():
    app = kit_app(deployment_settings(broker="redis", broker_url="redis://:pw@10.0.0.20:6379/0"))
    assert app.conf.task_publish_retry_policy["max_retries"] == 1
    assert "master_name" not in app.conf.broker_transport_options


def test_kit_clients_ask_the_sentinels_for_the_primary():
    client = redisurl.connect(_urls(SENTINELS)[2], socket_timeout=5)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "celery-kit"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == REDIS_PASSWORD
    assert pool.connection_kwargs["socket_timeout"] == 5
    sentinel = pool.sentinel_manager.sentinels[0]
    assert sentinel.connection_pool.connection_kwargs["password"] == SENTINEL_PASSWORD


def test_every_client_logs_in_as_its_redis_user():
    """The user of the URLs (the app's, the mover's) reaches the servers; the Sentinels are asked without it."""
    urls = kit_urls.kit_redis_urls(
        REDIS_PASSWORD, "10.0.0.20", 6379, SENTINELS, 26379, "celery-kit", SENTINEL_PASSWORD, user="app"
    )
    assert redisurl.parse(urls[1]).username == "app"
    pool = redisurl.connect(urls[2]).connection_pool
    assert (pool.connection_kwargs["username"], pool.connection_kwargs["password"]) == ("app", REDIS_PASSWORD)
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs.get("username") is None
    app = kit_app(deployment_settings(broker="redis", broker_url=urls[0], result_backend=urls[1], locks_url=urls[2]))
    assert app.backend.connparams["username"] == "app"
    with app.connection_for_write() as connection:
        assert connection.userid == "app"
    single = kit_urls.kit_redis_urls(REDIS_PASSWORD, "10.0.0.20", 6379, [], 26379, "celery-kit", "", user="mover")
    assert single[0] == "redis://mover:pa%2Fss@10.0.0.20:6379/0"
    assert redisurl.connect(single[0]).connection_pool.connection_kwargs["username"] == "mover"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sentinel://:pw@10.0.0.20:26379/1", "master_name"),
        ("sentinel://:pw@10.0.0.20:26379/x?master_name=a", "must be a number"),
        ("sentinel://:pw@10.0.0.20:26379/1?master_name=a&colour=red", "unknown options"),
        ("sentinel://:pw@10.0.0.20/1;redis://:pw@h/1?master_name=a", "every part"),
    ],
)
def test_a_bad_sentinel_url_is_refused_without_showing_the_password(url, message):
    with pytest.raises(redisurl.RedisUrlError, match=message) as raised:
        redisurl.parse(url)
    assert "pw" not in str(raised.value)
