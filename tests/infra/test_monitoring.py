"""Monitoring: Prometheus scrapes every host, RabbitMQ node and exporter, the
counters move when tasks run, and a queue left without consumers fires an
alert that reaches Alertmanager (and clears when the workers are back).

The tests ask Prometheus's and Alertmanager's HTTP APIs on the monitoring
host, at the private address each listens on.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import urllib.parse
from typing import Any

import conftest
import pytest
from conftest import Load, dead_letters, fault_report, submit, wait_for_result, wait_until

RULES = "/etc/prometheus/rules/celery-kit.yml"


def _listen_address(host, service: str) -> str:
    """host:port from the --web.listen-address of a service's command line (/etc/default)."""
    args = host.file(f"/etc/default/{service}").content_string
    match = re.search(r"--web\.listen-address=(\S+?)[\"\s]", args)
    assert match, f"{service} has no --web.listen-address"
    return match.group(1)


def _get(host, url: str) -> Any:
    return json.loads(host.check_output(f"curl -sf -m 10 {conftest.curl_tls()}{shlex.quote(url)}"))


def _scheme() -> str:
    """Prometheus and Alertmanager serve HTTPS with TLS (the kit's default)."""
    return "https" if conftest.TLS_CA else "http"


def prometheus(host, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    reply = _get(host, f"{_scheme()}://{_listen_address(host, 'prometheus')}/api/v1/{path}?{query}")
    assert reply["status"] == "success", reply
    return reply["data"]


def metric(host, expression: str) -> float | None:
    """The value of an expression that yields one number (or None: no series)."""
    result = prometheus(host, "query", query=expression)["result"]
    return float(result[0]["value"][1]) if result else None


def prometheus_alerts(host, name: str) -> list[dict[str, Any]]:
    """The alerts of one rule that Prometheus holds (pending or firing)."""
    return [alert for alert in prometheus(host, "alerts")["alerts"] if alert["labels"].get("alertname") == name]


def alertmanager_alerts(host, name: str) -> list[dict[str, Any]]:
    alerts = _get(host, f"{_scheme()}://{_listen_address(host, 'prometheus-alertmanager')}/api/v2/alerts")
    return [alert for alert in alerts if alert["labels"].get("alertname") == name]


def _seconds(duration: str) -> float:
    """A Prometheus duration of one unit (15s, 2m, 1h) in seconds."""
    number, unit = re.fullmatch(r"(\d+)([smh])", duration).groups()
    return int(number) * {"s": 1, "m": 60, "h": 3600}[unit]


def _intervals(host) -> tuple[float, float]:
    """Scrape and evaluation intervals of the server, in seconds."""
    config = prometheus(host, "status/config")["yaml"]
    scrape = re.search(r"scrape_interval: (\S+)", config).group(1)
    evaluation = re.search(r"evaluation_interval: (\S+)", config).group(1)
    return _seconds(scrape), _seconds(evaluation)


def test_prometheus_scrapes_every_host_node_and_exporter_and_all_are_up(monitoring_host, group_hosts):
    def names(group: str) -> set[str]:
        return {host.backend.hostname for host in group_hosts(group, required=False)}

    expected = {
        "node": names("all"),
        "rabbitmq": names("rabbitmq"),
        "rabbitmq-queues": names("rabbitmq"),
        "redis": names("redis"),
        "flower": names("monitoring"),
    }
    scrape, _ = _intervals(monitoring_host)

    def targets() -> dict[str, dict[str, str]] | None:
        seen: dict[str, dict[str, str]] = {}
        for target in prometheus(monitoring_host, "targets", state="active")["activeTargets"]:
            seen.setdefault(target["labels"]["job"], {})[target["labels"]["host"]] = target["health"]
        return seen if all(health == "up" for job in seen.values() for health in job.values()) else None

    # A target restarted by an earlier test may wait for its next scrape.
    seen = wait_until("every target up", 4 * scrape + 30, targets)
    assert {job: set(hosts) for job, hosts in seen.items()} == expected


def test_a_submitted_task_moves_the_counters(monitoring_host, api_host, broker):
    scrape, _ = _intervals(monitoring_host)
    received = "sum(rabbitmq_global_messages_received_total)"
    results = 'sum(redis_db_keys{db="db1"})'
    before = {name: metric(monitoring_host, name) or 0 for name in (received, results)}
    ids = [submit(api_host, {"task": "add", "args": [i, 100]}) for i in range(20)]
    for task_id in ids:
        assert wait_for_result(api_host, task_id)["state"] == "SUCCESS"

    # 20 results more in Redis db 1 (the result store), and with RabbitMQ as
    # the broker 20 messages more received.
    watched = [results] + ([received] if broker == "rabbitmq" else [])
    wait_until(
        f"{watched} grew by 20",
        3 * scrape + 30,
        lambda: all((metric(monitoring_host, name) or 0) >= before[name] + 20 for name in watched),
    )


def test_a_queue_left_without_consumers_fires_an_alert_and_loses_no_task(
    monitoring_host, api_host, group_hosts, rabbitmq
):
    rules = monitoring_host.file(RULES).content_string
    hold = _seconds(re.search(r"alert: QueueWithoutConsumers\n.*?\n\s+for: (\S+)", rules, re.S).group(1))
    scrape, evaluation = _intervals(monitoring_host)
    workers = group_hosts("workers")
    load = Load(api_host, "monitoring-alert")
    dead_before = dead_letters(rabbitmq)
    for host in workers:
        host.check_output("systemctl stop celery-workers.target")
    stopped = time.monotonic()
    try:
        # Accepted while nobody consumes: they wait in the queue.
        load.submit([{"task": "add", "args": [i, 1]} for i in range(20)])
        firing = wait_until(
            "QueueWithoutConsumers firing in Alertmanager",
            hold + 3 * (scrape + evaluation) + 60,
            lambda: [
                alert
                for alert in alertmanager_alerts(monitoring_host, "QueueWithoutConsumers")
                if alert["status"]["state"] == "active"
            ],
        )
        fired_after = round(time.monotonic() - stopped, 1)
    finally:
        for host in workers:
            host.check_output("systemctl start celery-workers.target")
    queues = {alert["labels"]["queue"] for alert in firing}
    print(f"QueueWithoutConsumers reached Alertmanager {fired_after} s after the workers stopped, for {sorted(queues)}")
    # The queue that holds the 20 tasks; an empty one (health) stalls nothing.
    assert "default" in queues and "health" not in queues, queues
    assert fired_after >= hold, "the alert fired before its 'for' had passed"

    report = load.wait_until_all_ran(timeout=180)
    counts = fault_report(
        "every worker stopped until the alert fired",
        {"accepted": 20, "refused": 0},
        report,
        dead_letters(rabbitmq) - dead_before,
    )
    assert counts["lost"] == 0 and counts["dead_lettered"] == 0 and counts["run_twice"] == 0, counts

    # Consumers again: the alert clears at the next evaluation.
    wait_until(
        "QueueWithoutConsumers cleared in Prometheus",
        3 * (scrape + evaluation) + 30,
        lambda: not prometheus_alerts(monitoring_host, "QueueWithoutConsumers"),
    )


# Each rule and a series it reads: a rule over a metric nobody exports
# would never fire.
RULE_INPUTS = {
    "QueueWithoutConsumers": 'rabbitmq_detailed_queue_consumers{queue="default"}',
    "DeadLetterQueueGrowing": 'rabbitmq_detailed_queue_messages{queue="dead-letter"}',
    "RabbitMQMemoryAlarm": "rabbitmq_alarms_memory_used_watermark",
    "RabbitMQDiskAlarm": "rabbitmq_alarms_free_disk_space_watermark",
    "RedisPersistenceFailing": "redis_aof_last_write_status",
    "RedisDown": "redis_up",
    "TargetDown": 'up{job="node"}',
}


# What a healthy deployment may show: every rule inactive, but for the
# dead-letter queue's, which an earlier dead-lettered task (the suite's own
# poison task) rightly keeps firing for its window.
MAY_FIRE_ON_A_HEALTHY_DEPLOYMENT = {"DeadLetterQueueGrowing"}


@pytest.mark.parametrize("rule", sorted(RULE_INPUTS))
def test_every_alert_rule_is_loaded_and_reads_a_metric_that_exists(monitoring_host, rabbitmq, rule):
    rules = [r for group in prometheus(monitoring_host, "rules")["groups"] for r in group["rules"]]
    (found,) = [r for r in rules if r["name"] == rule]
    assert found["health"] == "ok", found
    if rule not in MAY_FIRE_ON_A_HEALTHY_DEPLOYMENT:
        assert found["state"] == "inactive", f"{rule} is {found['state']} on a healthy deployment: {found['alerts']}"
    assert prometheus(monitoring_host, "query", query=RULE_INPUTS[rule])["result"], f"no series {RULE_INPUTS[rule]}"


def test_a_dead_lettered_task_fires_dead_letter_queue_growing(monitoring_host, api_host, rabbitmq):
    scrape, evaluation = _intervals(monitoring_host)
    before = dead_letters(rabbitmq)
    task_id = submit(api_host, {"task": "poison"})
    assert wait_for_result(api_host, task_id)["state"] == "FAILURE"
    wait_until("the poison task in the dead-letter queue", 30, lambda: dead_letters(rabbitmq) > before)

    (alert,) = wait_until(
        "DeadLetterQueueGrowing firing",
        3 * (scrape + evaluation) + 30,
        lambda: [a for a in prometheus_alerts(monitoring_host, "DeadLetterQueueGrowing") if a["state"] == "firing"],
    )
    assert alert["labels"]["queue"] == "dead-letter"
