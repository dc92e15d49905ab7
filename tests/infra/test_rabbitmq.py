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


def _open_files_limit(host, pid, which="soft"):
    limits = host.check_output(f"cat /proc/{pid}/limits")
    fields = next(line.split() for line in limits.splitlines() if line.startswith("Max open files"))
    return int(fields[3] if which == "soft" else fields[4])


def test_server_may_open_65536_files_or_as_many_as_the_machine_allows(rabbitmq):
    assert rabbitmq.check_output("systemctl show -p LimitNOFILE --value rabbitmq-server") == "65536"
    # A container cannot exceed the limit it was started with (here, where
    # CAP_SYS_RESOURCE is not granted, the Docker daemon's own); on a VM the
    # ceiling is far above 65536.
    ceiling = _open_files_limit(rabbitmq, 1, "hard")
    beam = rabbitmq.check_output("pgrep -o beam.smp")
    assert _open_files_limit(rabbitmq, beam) == min(65536, ceiling)


def test_consumer_timeout_outlasts_the_longest_countdown_and_run(rabbitmq, api_host):
    config = json.loads(api_host.file("/etc/taskapp/config.json").content_string)
    answer = rabbitmq.check_output("rabbitmqctl -q eval 'application:get_env(rabbit, consumer_timeout).'")
    timeout_ms = int(answer.strip("{}").split(",")[1])
    assert timeout_ms > (config["max_countdown"] + config["task_time_limit"]) * 1000


def test_memory_and_disk_watermarks_are_set(rabbitmq):
    memory = rabbitmq.check_output("rabbitmqctl -q eval 'application:get_env(rabbit, vm_memory_high_watermark).'")
    disk = rabbitmq.check_output("rabbitmqctl -q eval 'application:get_env(rabbit, disk_free_limit).'")
    assert memory == "{ok,0.4}"
    assert disk.startswith("{ok,") and disk != "{ok,50000000}"
