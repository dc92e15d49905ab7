"""The rabbitmq role declares Celery's delayed-delivery topology exactly as
kombu declares it, so workers starting later find what they expect (a
different argument would make RabbitMQ refuse their declaration)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_run import run_playbook
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from celery_kit.topology import build_queues

ROOT = Path(__file__).resolve().parents[2]
KIT_QUEUES = yaml.safe_load((ROOT / "playbooks/group_vars/all/kit.yml").read_text())["kit_sample_queues"]


class RecordingChannel:
    """Stands in for an AMQP channel: records what kombu declares and binds."""

    def __init__(self) -> None:
        self.exchanges: dict[str, str] = {}
        self.queues: dict[str, dict[str, Any]] = {}
        self.bindings: set[tuple[str, str, str, str]] = set()

    def exchange_declare(self, exchange, type, **_):
        self.exchanges[exchange] = type

    def prepare_queue_arguments(self, arguments, **_):
        return arguments

    def queue_declare(self, queue, arguments=None, **_):
        self.queues[queue] = dict(arguments or {})
        return queue, 0, 0

    def queue_bind(self, queue, exchange, routing_key, **_):
        self.bindings.add((exchange, queue, "queue", routing_key))

    def exchange_bind(self, destination, source, routing_key, **_):
        self.bindings.add((source, destination, "exchange", routing_key))

    def __getattr__(self, name):  # anything else kombu may touch on a channel
        return lambda *args, **kwargs: None


class RecordingConnection:
    def __init__(self) -> None:
        self.recorder = RecordingChannel()

    def channel(self) -> RecordingChannel:
        return self.recorder


@pytest.fixture(scope="module")
def role(tmp_path_factory) -> dict[str, Any]:
    rendered = tmp_path_factory.mktemp("role") / "rendered.json"
    extra = {"rendered_file": str(rendered), "rabbitmq_queues": KIT_QUEUES}
    result = run_playbook("tests/unit/playbooks/render-rabbitmq-vars.yml", extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(rendered.read_text())


@pytest.fixture(scope="module")
def kombu() -> RecordingChannel:
    connection = RecordingConnection()
    declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
    for queue in build_queues(KIT_QUEUES):
        bind_queue_to_native_delayed_delivery_exchange(connection, queue)
    return connection.recorder


def test_the_role_declares_kombus_delay_exchanges(role, kombu):
    assert {e["name"]: e["type"] for e in role["delayed"]["exchanges"]} == kombu.exchanges


def test_the_role_declares_kombus_delay_queues_with_the_same_arguments(role, kombu):
    assert {q["name"]: q["arguments"] for q in role["delayed"]["queues"]} == kombu.queues


def test_the_role_binds_what_kombu_binds(role, kombu):
    rendered = {
        (b["source"], b["destination"], b["destination_type"], b["routing_key"]) for b in role["delayed"]["bindings"]
    }
    assert rendered == kombu.bindings


def test_dead_lettering_is_at_least_once_and_never_touches_the_health_or_delay_queues(role):
    assert role["dead_letter_policy"]["dead-letter-strategy"] == "at-least-once"
    assert role["dead_letter_policy"]["overflow"] == "reject-publish"
    assert role["dead_letter_pattern"] == "^(default|emails|priority)$"


def test_a_leaving_node_names_the_seed_from_the_seeds_facts_alone(tmp_path):
    # A node leaving a 5-node cluster once failed here: naming the seed read
    # the facts of every staying node, and only the seed's had been gathered.
    rendered = tmp_path / "seed"
    result = run_playbook("tests/unit/playbooks/render-rabbitmq-seed.yml", {"rendered_file": str(rendered)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert rendered.read_text() == f"rabbit@{socket.gethostname().split('.')[0]}"
