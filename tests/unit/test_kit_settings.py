"""The app's Celery settings are the safe ones, and match the broker topology."""

import json
from pathlib import Path

import pytest
import yaml
from sample import deployment_settings, kit_app

from celery_kit import deployment
from celery_kit.deployment import broker_urls
from celery_kit.settings import longest_hold_seconds
from celery_kit.topology import broker_priority, build_queues

ROOT = Path(__file__).resolve().parents[2]


def _config(**overrides):
    return deployment_settings(**overrides)


def build_settings(config):
    """The settings a worker of the sample runs with, on this deployment."""
    return kit_app(config).conf


def test_delivery_safety_settings_are_on():
    settings = build_settings(_config())
    assert settings["task_acks_late"] is True
    assert settings["task_reject_on_worker_lost"] is True
    assert settings["task_acks_on_failure_or_timeout"] is False
    assert settings["worker_prefetch_multiplier"] == 1
    assert settings["broker_transport_options"] == {"confirm_publish": True}
    assert settings["result_expires"] == 86400
    assert settings["task_create_missing_queues"] is False


def _kit():
    return yaml.safe_load((ROOT / "playbooks/group_vars/all/kit.yml").read_text())


def test_queues_are_declared_as_the_rabbitmq_role_declares_them():
    queues = {queue.name: queue for queue in build_queues(_kit()["kit_sample_queues"])}
    assert set(queues) == {"default", "emails", "priority"}
    for queue in queues.values():
        assert queue.durable is True
        assert queue.exchange.name == "tasks"
        assert queue.exchange.durable is True
        assert queue.routing_key == queue.name
        # Replicated on every node; quorum queues refuse x-max-priority.
        assert queue.queue_arguments == {"x-queue-type": "quorum"}


def test_a_publish_only_producer_declares_nothing():
    """The api hosts' Celery (declare false): kombu skips every queue, exchange and binding declaration."""
    declared = []

    def publish_once(settings):
        app = kit_app(settings)
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            for method in ("queue_declare", "exchange_declare", "queue_bind"):
                real = getattr(channel, method)
                setattr(
                    channel, method, lambda *a, _real=real, _name=method, **k: declared.append(_name) or _real(*a, **k)
                )
            with app.producer_or_acquire(connection.Producer()) as producer:
                app.send_task("add", (1, 2), queue="default", producer=producer)

    publish_once(deployment_settings(declare=False))
    assert declared == [], "a publish-only producer declared"
    publish_once(deployment_settings())
    assert "queue_declare" in declared, "the workers' side declares its queue on the first publish"


def test_exchanges_are_topic_exchanges_as_native_delayed_delivery_needs():
    # Celery only delays in the broker through topic (or fanout) exchanges;
    # with a direct one a countdown task would wait in a worker's memory.
    for queue in build_queues(_kit()["kit_sample_queues"]):
        assert queue.exchange.type == "topic"
    settings = build_settings(_config())
    assert settings["task_default_exchange_type"] == "topic"


def test_a_queue_without_a_type_is_a_quorum_queue_as_in_the_role():
    role_defaults = yaml.safe_load((ROOT / "roles/rabbitmq/defaults/main.yml").read_text())
    (queue,) = build_queues([{"name": "reports"}])
    assert role_defaults["rabbitmq_queue_type"] == "quorum"
    assert queue.queue_arguments == {"x-queue-type": "quorum"}


def test_a_classic_priority_queue_keeps_its_priorities():
    (queue,) = build_queues([{"name": "reports", "type": "classic", "max_priority": 10}])
    assert queue.queue_arguments == {"x-max-priority": 10}


def test_a_quorum_queue_with_max_priority_is_refused():
    with pytest.raises(deployment.DeploymentError, match="max_priority applies to classic queues"):
        deployment.validate(_config(queues=[{"name": "p", "max_priority": 10}], default_queue="p"))


def test_quorum_queues_switch_on_per_consumer_prefetch_and_quorum_delay_queues():
    settings = build_settings(_config())
    assert settings["worker_detect_quorum_queues"] is True
    assert settings["broker_native_delayed_delivery_queue_type"] == "quorum"


def test_a_countdown_task_is_published_to_the_broker_delay_exchange():
    # Celery routes a countdown through kombu's delay levels: the exchange
    # celery_delayed_27 and a routing key carrying the delay's 28 bits, then
    # the queue's key.
    app = kit_app(_config(broker_url="amqp://user:secret@127.0.0.1:1/%2Fcelery"))
    sent = {}

    def capture(producer, name, message, **options):
        sent.update(options)

    app.amqp.send_task_message = capture
    app.send_task("add", args=(1, 2), countdown=5)
    assert sent["exchange"].name == "celery_delayed_27"
    assert sent["routing_key"] == ".".join(f"{5:028b}") + ".default"


def test_every_rabbitmq_node_is_a_failover_url_and_each_is_tried_before_a_refusal():
    urls = ";".join(f"amqp://u:p@10.0.0.{n}:5672/%2Fcelery" for n in (1, 2, 3))
    config = _config(broker_url=urls)
    assert broker_urls(config) == urls.split(";")
    settings = build_settings(config)
    assert settings["broker_url"] == urls
    assert settings["broker_failover_strategy"] == "round-robin"
    assert settings["task_publish_retry_policy"]["max_retries"] == 3


def test_workers_wait_for_redis_to_store_results_instead_of_failing_the_task():
    settings = build_settings(_config())
    assert settings["result_backend_always_retry"] is True


def test_redis_broker_visibility_outlasts_the_longest_countdown():
    settings = build_settings(_config(broker="redis", broker_url="redis://", max_countdown=7200, task_time_limit=600))
    options = settings["broker_transport_options"]
    assert options["visibility_timeout"] > 7200 + 600
    assert options["priority_steps"] == list(range(10))


def test_rabbitmq_consumer_timeout_follows_the_time_limit_not_the_countdown():
    kit = _kit()
    wiring = (ROOT / "playbooks/group_vars/all/wiring.yml").read_text()
    # The formula of rabbitmq_consumer_timeout_ms: a worker process reserves a
    # round of tasks per queue, each round at most the time limit.
    assert (
        'rabbitmq_consumer_timeout_ms: "{{ (kit_broker_queues | length + 1)'
        ' * (kit_task_time_limit | int + 30) * 1000 }}"' in wiring
    )
    queues = len(kit["kit_sample_queues"]) + 1  # the kit's health queue in front
    timeout_seconds = (queues + 1) * (kit["kit_task_time_limit"] + 30)
    assert timeout_seconds > (queues + 1) * kit["kit_task_time_limit"]
    assert "kit_max_countdown" not in wiring.split("rabbitmq_consumer_timeout_ms:")[1].splitlines()[0]


def test_redis_broker_workers_hold_a_countdown_no_longer_than_its_visibility_timeout():
    config = _config(broker="redis", broker_url="redis://", max_countdown=7200, task_time_limit=600)
    assert build_settings(config)["broker_transport_options"]["visibility_timeout"] == longest_hold_seconds(config)


@pytest.mark.parametrize(("priority", "rabbitmq", "redis"), [(0, 0, 9), (9, 9, 0), (5, 5, 4)])
def test_priority_is_translated_for_each_broker(priority, rabbitmq, redis):
    assert broker_priority(priority, "rabbitmq") == rabbitmq
    assert broker_priority(priority, "redis") == redis


@pytest.mark.parametrize(("priority", "urgent"), [(0, False), (4, False), (5, True), (9, True)])
def test_api_priorities_5_to_9_are_the_urgent_level_of_a_quorum_queue(priority, urgent):
    # RabbitMQ 4.0 quorum queues: a priority above 4 is high, the rest normal.
    assert (broker_priority(priority, "rabbitmq") > 4) is urgent


def test_priority_out_of_range_is_refused():
    with pytest.raises(ValueError):
        broker_priority(10, "rabbitmq")


def test_config_file_with_unknown_key_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"brokr": "redis"}))
    with pytest.raises(deployment.DeploymentError, match="unknown keys: brokr"):
        deployment.load(path)


def test_config_file_with_foreign_default_queue_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"default_queue": "nowhere"}))
    with pytest.raises(deployment.DeploymentError, match="default_queue"):
        deployment.load(path)


def test_unreadable_config_names_the_file(tmp_path):
    with pytest.raises(deployment.DeploymentError, match=r"missing\.json"):
        deployment.load(tmp_path / "missing.json")


@pytest.mark.parametrize(("broker", "expected"), [("rabbitmq", 0), ("redis", 9)])
def test_a_task_without_priority_is_the_least_urgent_on_either_broker(broker, expected):
    config = _config(broker=broker)
    assert build_settings(config)["task_default_priority"] == expected


def test_workers_send_task_events_only_when_the_deployment_has_a_dashboard():
    assert kit_app(deployment_settings()).conf.worker_send_task_events is False
    assert kit_app(deployment_settings(task_events=True)).conf.worker_send_task_events is True
    with pytest.raises(deployment.DeploymentError, match="task_events must be true or false"):
        deployment.validate({**deployment.DEFAULTS, "task_events": "yes"})


@pytest.mark.parametrize(
    ("outbox", "message"),
    [
        ({"path": "relative/outbox.sqlite3"}, "absolute path"),
        ({"path": "/var/lib/x.sqlite3", "max_entries": 0}, "max_entries must be a positive integer"),
        ({"path": "/var/lib/x.sqlite3", "max_bytes": True}, "max_bytes must be a positive integer"),
        ({"path": "/var/lib/x.sqlite3", "size": 3}, "outbox must be an object"),
        ("yes", "outbox must be an object"),
    ],
)
def test_a_bad_outbox_setting_is_refused_naming_it(tmp_path, outbox, message):
    path = tmp_path / "deployment.json"
    path.write_text(json.dumps({"outbox": outbox}))
    with pytest.raises(deployment.DeploymentError, match=message):
        deployment.load(path)
