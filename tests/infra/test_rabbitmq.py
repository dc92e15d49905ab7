"""RabbitMQ: durable quorum queues, dead-lettering and a delivery limit by
policy, Celery's delayed delivery, limits and timeouts."""

import json
import shlex
import urllib.parse

import pytest
from conftest import (
    APP_PYTHON,
    APP_QUEUES,
    DEAD_LETTER_QUEUE,
    DEAD_LETTERED_QUEUES,
    VHOST,
    curl_tls,
    management_url,
    queue_argument,
    rabbitmq_queues,
    state_dir,
)

DELAY_LEVELS = 28


def test_app_queues_are_durable_quorum_queues(rabbitmq):
    queues = rabbitmq_queues(rabbitmq)
    for name in APP_QUEUES:
        assert name in queues, f"queue {name} is missing"
        assert queues[name]["durable"] is True
        assert queues[name]["type"] == "quorum"
        assert queue_argument(queues[name]["arguments"], "x-max-priority") is None


def _policies(rabbitmq):
    policies = json.loads(rabbitmq.check_output("rabbitmqctl -q --formatter json list_policies -p %s", VHOST))
    result = {}
    for policy in policies:
        definition = policy["definition"]
        result[policy["name"]] = json.loads(definition) if isinstance(definition, str) else definition
    return result


def test_dead_letter_policy_applies_to_every_dead_lettered_app_queue(rabbitmq):
    queues = rabbitmq_queues(rabbitmq)
    for name in DEAD_LETTERED_QUEUES:
        assert queues[name]["policy"] == "dead-letter", name
    assert queues["health"]["policy"] in ("", None), "health checks are not dead-lettered"


def test_dead_lettering_is_at_least_once_with_a_delivery_limit(rabbitmq):
    definition = _policies(rabbitmq)["dead-letter"]
    assert definition["dead-letter-exchange"] == "dead-letter"
    # At-least-once: a message leaves its queue only once the dead-letter
    # queue confirmed it; RabbitMQ requires reject-publish for it.
    assert definition["dead-letter-strategy"] == "at-least-once"
    assert definition["overflow"] == "reject-publish"
    assert definition["delivery-limit"] == 20


def test_dead_letter_queue_is_a_durable_quorum_queue_that_keeps_what_it_holds(rabbitmq):
    queue = rabbitmq_queues(rabbitmq)[DEAD_LETTER_QUEUE]
    assert queue["durable"] is True
    assert queue["type"] == "quorum"
    # Not dead-lettered itself, and no delivery limit: looking at a dead
    # letter (a get with requeue) must never drop it.
    assert queue["policy"] == "dead-letter-queue"
    assert _policies(rabbitmq)["dead-letter-queue"] == {"delivery-limit": -1}


def test_celery_delayed_delivery_topology_is_declared(rabbitmq):
    queues = rabbitmq_queues(rabbitmq)
    for level in range(DELAY_LEVELS):
        queue = queues[f"celery_delayed_{level}"]
        assert queue["type"] == "quorum"
        assert queue_argument(queue["arguments"], "x-message-ttl") == 2**level * 1000
        assert queue_argument(queue["arguments"], "x-dead-letter-strategy") == "at-least-once"
    bindings = json.loads(
        rabbitmq.check_output(
            "rabbitmqctl -q --formatter json list_bindings -p %s source_name destination_name routing_key", VHOST
        )
    )
    routes = {(b["source_name"], b["destination_name"], b["routing_key"]) for b in bindings}
    for name in APP_QUEUES:
        assert ("celery_delayed_delivery", "tasks", f"#.{name}") in routes
        assert ("tasks", name, f"#.{name}") in routes


def test_management_api_rejects_unauthenticated_requests(rabbitmq):
    status = rabbitmq.check_output(
        f"curl -s -o /dev/null -w %s {curl_tls()}%s", "%{http_code}", management_url(rabbitmq, "/api/overview")
    )
    assert status == "401"


def _open_files_limit(host, pid, which="soft"):
    limits = host.check_output(f"cat /proc/{pid}/limits")
    fields = next(line.split() for line in limits.splitlines() if line.startswith("Max open files"))
    return int(fields[3] if which == "soft" else fields[4])


def test_server_may_open_65536_files_or_as_many_as_the_machine_allows(rabbitmq_nodes):
    for host in rabbitmq_nodes:
        assert host.check_output("systemctl show -p LimitNOFILE --value rabbitmq-server") == "65536"
        # A container cannot exceed the limit it was started with (here, where
        # CAP_SYS_RESOURCE is not granted, the Docker daemon's own); on a VM the
        # ceiling is far above 65536.
        ceiling = _open_files_limit(host, 1, "hard")
        beam = host.check_output("pgrep -o beam.smp")
        assert _open_files_limit(host, beam) == min(65536, ceiling)


def test_consumer_timeout_covers_a_reserved_task_but_no_countdown(rabbitmq, api_host):
    config = json.loads(api_host.file("/etc/celery-app/deployment.json").content_string)
    answer = rabbitmq.check_output("rabbitmqctl -q eval 'application:get_env(rabbit, consumer_timeout).'")
    timeout_ms = int(answer.strip("{}").split(",")[1])
    # Per queue a worker process may reserve one round of tasks behind the
    # one it runs (see rabbitmq_consumer_timeout_ms in wiring.yml) ...
    assert timeout_ms >= (len(config["queues"]) + 1) * config["task_time_limit"] * 1000
    # ... but a countdown waits in the broker, so it no longer stretches it.
    assert timeout_ms < config["max_countdown"] * 1000


def test_memory_and_disk_watermarks_are_set(rabbitmq):
    memory = rabbitmq.check_output("rabbitmqctl -q eval 'application:get_env(rabbit, vm_memory_high_watermark).'")
    disk = rabbitmq.check_output("rabbitmqctl -q eval 'application:get_env(rabbit, disk_free_limit).'")
    assert memory == "{ok,0.4}"
    assert disk.startswith("{ok,") and disk != "{ok,50000000}"


# Run with the app's Python on a host, logged in with the broker URL given
# as its argument: what those credentials could do to the broker. Prints,
# per operation, "ok" or the AMQP reply code RabbitMQ refused it with.
PROBE = """
import json, sys
import amqp
from celery_kit import amqpurl
url = sys.argv[1]
answers = {}
operations = {
    "publish": lambda ch: ch.basic_publish(amqp.Message("probe"), exchange="tasks", routing_key="nothing.bound"),
    "publish to a queue": lambda ch: ch.basic_publish(amqp.Message("probe"), exchange="", routing_key="no-such-queue"),
    "count": lambda ch: ch.queue_declare("default", passive=True),
    "declare": lambda ch: ch.queue_declare("attacker-queue", durable=True, auto_delete=False),
    "declare an exchange": lambda ch: ch.exchange_declare("attacker-exchange", "topic", durable=True),
    "delete": lambda ch: ch.queue_delete("default"),
    "delete an exchange": lambda ch: ch.exchange_delete("tasks"),
    "purge": lambda ch: ch.queue_purge("default"),
    "read": lambda ch: ch.basic_get("health"),
    "bind": lambda ch: ch.queue_bind("default", exchange="tasks", routing_key="#"),
}
for name in sys.argv[2:]:
    connection = amqp.Connection(**amqpurl.amqp_params(url))
    try:
        connection.connect()
        operations[name](connection.channel())
        answers[name] = "ok"
    except amqp.exceptions.AMQPError as error:
        answers[name] = getattr(error, "reply_code", type(error).__name__)
    finally:
        connection.collect()
print(json.dumps(answers))
"""
REFUSED = 403  # ACCESS_REFUSED


def _probe(host, url: str, *operations: str) -> dict[str, object]:
    result = host.run(f"{APP_PYTHON} -c {shlex.quote(PROBE)} {shlex.quote(url)} {shlex.join(operations)}")
    # Not the command in the message: its URL holds a password.
    assert result.rc == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def _broker_url(host) -> str:
    """The first broker URL the app on a host logs in with."""
    return json.loads(host.file("/etc/celery-app/deployment.json").content_string)["broker_url"].split(";")[0]


def _as_user(url: str, user: str, password: str) -> str:
    """The same broker URL with another user's credentials."""
    parts = urllib.parse.urlsplit(url)
    login = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return parts._replace(netloc=f"{login}@{parts.netloc.rpartition('@')[2]}").geturl()


def test_the_apis_broker_user_may_publish_but_not_declare_delete_purge_read_or_bind(group_hosts, broker):
    if broker != "rabbitmq":
        pytest.skip("the api hosts publish to Redis on this deployment")
    api = group_hosts("api")[0]
    answers = _probe(api, _broker_url(api), "publish", "declare", "delete", "purge", "read", "bind")
    assert answers.pop("publish") == "ok"
    assert answers == dict.fromkeys(answers, REFUSED), answers


def test_the_movers_broker_user_may_read_count_and_publish_but_not_declare_delete_or_bind(group_hosts, broker):
    """The kit's tools (make migrate, rollback-broker, dlq-replay) log in as celery-mover."""
    if broker != "rabbitmq":
        pytest.skip("no RabbitMQ on this deployment")
    worker = group_hosts("workers")[0]
    url = _as_user(_broker_url(worker), "celery-mover", (state_dir() / "rabbitmq_mover_password").read_text().strip())
    allowed = ("publish", "publish to a queue", "count", "read")
    refused = ("declare", "declare an exchange", "delete", "delete an exchange", "bind")
    answers = _probe(worker, url, *allowed, *refused)
    assert answers == {**dict.fromkeys(allowed, "ok"), **dict.fromkeys(refused, REFUSED)}, answers


def test_the_administrator_has_the_management_interface_and_no_amqp_login(rabbitmq, group_hosts, broker):
    if broker != "rabbitmq":
        pytest.skip("no RabbitMQ on this deployment")
    password = (state_dir() / "rabbitmq_admin_password").read_text().strip()
    worker = group_hosts("workers")[0]
    answers = _probe(worker, _as_user(_broker_url(worker), "admin", password), "count")
    # 530 NOT_ALLOWED: access to the vhost refused (the administrator has no
    # rights on any vhost).
    assert answers == {"count": 530}, answers
    curl = f"curl -s -o /dev/null -w %{{http_code}} {curl_tls()}-u admin:{shlex.quote(password)}"
    queues = management_url(rabbitmq, "/api/queues/%2Fcelery?columns=name")
    assert rabbitmq.run(f"{curl} {shlex.quote(queues)}").stdout == "200"
    # What acts on messages needs rights on the vhost: 401 for the UI's Get.
    get = management_url(rabbitmq, "/api/queues/%2Fcelery/health/get")
    body = shlex.quote(json.dumps({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"}))
    assert rabbitmq.run(f"{curl} -H content-type:application/json -d {body} {shlex.quote(get)}").stdout == "401"
