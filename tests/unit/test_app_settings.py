"""The app's Celery settings are the safe ones, and match the broker topology."""

import json
from pathlib import Path

import pytest
import yaml
from taskapp import config as config_module
from taskapp.app import broker_priority, build_queues, build_settings, longest_hold_seconds

ROOT = Path(__file__).resolve().parents[2]


def _config(**overrides):
    return dict(config_module.DEFAULTS, **overrides)


def test_delivery_safety_settings_are_on():
    settings = build_settings(_config())
    assert settings["task_acks_late"] is True
    assert settings["task_reject_on_worker_lost"] is True
    assert settings["task_acks_on_failure_or_timeout"] is False
    assert settings["worker_prefetch_multiplier"] == 1
    assert settings["broker_transport_options"] == {"confirm_publish": True}
    assert settings["result_expires"] == 86400
    assert settings["task_create_missing_queues"] is False


def test_queues_are_declared_as_the_rabbitmq_role_declares_them():
    kit = yaml.safe_load((ROOT / "playbooks/group_vars/all/kit.yml").read_text())
    queues = {queue.name: queue for queue in build_queues(_config(queues=kit["kit_queues"]))}
    assert set(queues) == {"default", "emails", "priority"}
    for queue in queues.values():
        assert queue.durable is True
        assert queue.exchange.name == "tasks"
        assert queue.exchange.type == "direct"
        assert queue.exchange.durable is True
        assert queue.routing_key == queue.name
    assert queues["priority"].queue_arguments == {"x-max-priority": 10}
    assert queues["default"].queue_arguments is None


def test_quorum_queue_is_declared_with_its_type():
    (queue,) = build_queues(_config(queues=[{"name": "reports", "type": "quorum"}]))
    assert queue.queue_arguments == {"x-queue-type": "quorum"}


def test_redis_broker_visibility_outlasts_the_longest_countdown():
    settings = build_settings(_config(broker="redis", broker_url="redis://", max_countdown=7200, task_time_limit=600))
    options = settings["broker_transport_options"]
    assert options["visibility_timeout"] > 7200 + 600
    assert options["priority_steps"] == list(range(10))


def test_rabbitmq_consumer_timeout_covers_the_longest_hold():
    kit = yaml.safe_load((ROOT / "playbooks/group_vars/all/kit.yml").read_text())
    # Same formula as rabbitmq_consumer_timeout_ms in playbooks/group_vars/all/wiring.yml.
    timeout_seconds = kit["kit_max_countdown"] + kit["kit_task_time_limit"] + 120
    config = _config(max_countdown=kit["kit_max_countdown"], task_time_limit=kit["kit_task_time_limit"])
    assert timeout_seconds > longest_hold_seconds(config)


@pytest.mark.parametrize(("priority", "rabbitmq", "redis"), [(0, 0, 9), (9, 9, 0), (5, 5, 4)])
def test_priority_is_translated_for_each_broker(priority, rabbitmq, redis):
    assert broker_priority(priority, "rabbitmq") == rabbitmq
    assert broker_priority(priority, "redis") == redis


def test_priority_out_of_range_is_refused():
    with pytest.raises(ValueError):
        broker_priority(10, "rabbitmq")


def test_config_file_with_unknown_key_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"brokr": "redis"}))
    with pytest.raises(config_module.ConfigError, match="unknown keys: brokr"):
        config_module.load(path)


def test_config_file_with_foreign_default_queue_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"default_queue": "nowhere"}))
    with pytest.raises(config_module.ConfigError, match="default_queue"):
        config_module.load(path)


def test_unreadable_config_names_the_file(tmp_path):
    with pytest.raises(config_module.ConfigError, match=r"missing\.json"):
        config_module.load(tmp_path / "missing.json")


@pytest.mark.parametrize(("broker", "expected"), [("rabbitmq", 0), ("redis", 9)])
def test_a_task_without_priority_is_the_least_urgent_on_either_broker(broker, expected):
    config = dict(config_module.DEFAULTS, broker=broker)
    assert build_settings(config)["task_default_priority"] == expected
