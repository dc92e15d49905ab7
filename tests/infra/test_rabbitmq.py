"""RabbitMQ: durable topology, dead-lettering by policy, no default user."""

import json

from conftest import APP_QUEUES, DEAD_LETTER_QUEUE, VHOST, queue_argument, rabbitmq_queues


def test_app_queues_are_durable_classic_queues(rabbitmq):
    queues = rabbitmq_queues(rabbitmq)
    for name in APP_QUEUES:
        assert name in queues, f"queue {name} is missing"
        assert queues[name]["durable"] is True
        assert queues[name]["type"] == "classic"


def test_priority_queue_has_priorities(rabbitmq):
    arguments = rabbitmq_queues(rabbitmq)["priority"]["arguments"]
    assert queue_argument(arguments, "x-max-priority") == 10


def test_dead_letter_policy_applies_to_every_app_queue(rabbitmq):
    queues = rabbitmq_queues(rabbitmq)
    for name in APP_QUEUES:
        assert queues[name]["policy"] == "dead-letter", name
    policies = json.loads(rabbitmq.check_output("rabbitmqctl -q --formatter json list_policies -p %s", VHOST))
    definition = {p["name"]: p for p in policies}["dead-letter"]["definition"]
    if isinstance(definition, str):
        definition = json.loads(definition)
    assert definition["dead-letter-exchange"] == "dead-letter"


def test_dead_letter_queue_is_a_durable_quorum_queue_outside_the_policy(rabbitmq):
    queue = rabbitmq_queues(rabbitmq)[DEAD_LETTER_QUEUE]
    assert queue["durable"] is True
    assert queue["type"] == "quorum"
    assert queue["policy"] in ("", None)


def test_guest_user_is_gone_and_app_user_is_not_admin(rabbitmq):
    users = {
        u["user"]: u["tags"] for u in json.loads(rabbitmq.check_output("rabbitmqctl -q --formatter json list_users"))
    }
    assert "guest" not in users
    assert users["celery"] in ([], "", "[]")
    assert "administrator" in str(users["admin"])


def test_management_api_rejects_unauthenticated_requests(rabbitmq):
    status = rabbitmq.check_output("curl -s -o /dev/null -w %s http://127.0.0.1:15672/api/overview", "%{http_code}")
    assert status == "401"


def test_node_has_no_alarms(rabbitmq):
    assert rabbitmq.run("rabbitmq-diagnostics -q check_local_alarms").rc == 0
