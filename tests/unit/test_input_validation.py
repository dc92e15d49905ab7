"""Bad input stops a role or playbook before anything changes, naming the variable."""

from pathlib import Path

import pytest
from ansible_run import run_playbook

ROOT = Path(__file__).resolve().parents[2]
REDIS_USERS = ["admin", "app", "mover", "replica", "sentinel", "exporter"]
GOOD = {
    "rabbitmq": {
        "rabbitmq_erlang_cookie": "A" * 40,
        "rabbitmq_app_password": "app-secret",
        "rabbitmq_admin_password": "admin-secret",
        "rabbitmq_publisher_password": "publisher-secret",
        "rabbitmq_mover_password": "mover-secret",
    },
    "redis": {
        "redis_user_passwords": {user: f"{user}-secret-0123456789" for user in REDIS_USERS},
        "redis_bind_address": "127.0.0.1",
    },
    "node_exporter": {},
    "redis_exporter": {"redis_exporter_redis_password": "redis-secret"},
    "prometheus": {"prometheus_scrape_jobs": [{"name": "node", "targets": []}]},
    "alertmanager": {},
}
SCRAPE_TWICE = [{"name": "node", "targets": []}, {"name": "node", "targets": []}]


def _run(playbook: str, extra_vars: dict):
    return run_playbook(playbook, extra_vars, "--check")


@pytest.mark.parametrize(
    ("role", "bad", "named"),
    [
        ("rabbitmq", {"rabbitmq_vm_memory_high_watermark": "lots"}, "rabbitmq_vm_memory_high_watermark"),
        ("rabbitmq", {"rabbitmq_admin_password": None}, "rabbitmq_admin_password"),
        ("rabbitmq", {"rabbitmq_publisher_password": None}, "rabbitmq_publisher_password"),
        ("rabbitmq", {"rabbitmq_mover_password": None}, "rabbitmq_mover_user"),
        ("rabbitmq", {"rabbitmq_mover_user": "celery"}, "rabbitmq_mover_user"),
        ("rabbitmq", {"rabbitmq_queues": [{"name": "p", "max_priority": 300}]}, "max_priority"),
        ("rabbitmq", {"rabbitmq_queues": [{"name": "q", "type": "stream"}]}, "type"),
        # A quorum queue (the default type) has no x-max-priority.
        ("rabbitmq", {"rabbitmq_queues": [{"name": "p", "max_priority": 5}]}, "max_priority"),
        ("rabbitmq", {"rabbitmq_cluster_hosts": ["localhost", "elsewhere"]}, "rabbitmq_cluster_hosts"),
        ("rabbitmq", {"rabbitmq_delivery_limit": 0}, "rabbitmq_delivery_limit"),
        ("rabbitmq", {"rabbitmq_plugins": ["prometheus"]}, "rabbitmq_plugins"),
        # The management firewall takes IPv4 addresses and networks only.
        ("rabbitmq", {"rabbitmq_management_allowed_sources": ["10.0.0.0/33"]}, "rabbitmq_management_allowed_sources"),
        ("rabbitmq", {"rabbitmq_management_allowed_sources": ["ops.example"]}, "rabbitmq_management_allowed_sources"),
        ("redis", {"redis_appendfsync": "sometimes"}, "redis_appendfsync"),
        ("redis", {"redis_maxmemory_policy": "allkeys-lru-ish"}, "redis_maxmemory_policy"),
        # Sentinel needs 3 hosts and its password.
        ("redis", {"redis_sentinel_hosts": ["127.0.0.1", "10.0.0.2"]}, "redis_sentinel_hosts"),
        ("redis", {"redis_sentinel_hosts": ["127.0.0.1", "10.0.0.2", "10.0.0.3"]}, "redis_sentinel_password"),
        # Every Redis user needs a password; "default" is the role's to turn off.
        ("redis", {"redis_user_passwords": None}, "redis_user_passwords"),
        ("redis", {"redis_user_passwords": {"admin": "admin-secret-0123456789"}}, "redis_user_passwords"),
        ("redis", {"redis_users": {"default": "+@all", "admin": "+@all"}}, "redis_users"),
        ("redis", {"redis_admin_user": "root"}, "redis_admin_user"),
        # A rotation's old passwords: for users the role has, as long as new ones.
        ("redis", {"redis_user_previous_passwords": {"nobody": "x" * 20}}, "redis_user_previous_passwords"),
        ("redis", {"redis_user_previous_passwords": {"app": "short"}}, "redis_user_previous_passwords"),
        # The Sentinels' client users are Redis users of the role.
        ("redis", {"redis_sentinel_client_users": ["app", "intruder"]}, "redis_sentinel_client_users"),
        # A hold of the writes as long as the Sentinels' down-after would make them fail over.
        ("redis", {"redis_handover_pause_milliseconds": 3000}, "redis_handover_pause_milliseconds"),
        ("node_exporter", {"node_exporter_port": "ninety"}, "node_exporter_port"),
        ("redis_exporter", {"redis_exporter_redis_password": None}, "redis_exporter_redis_password"),
        ("prometheus", {"prometheus_scrape_jobs": None}, "prometheus_scrape_jobs"),
        ("prometheus", {"prometheus_scrape_jobs": SCRAPE_TWICE}, "prometheus_scrape_jobs"),
        ("prometheus", {"prometheus_external_labels": "prod"}, "prometheus_external_labels"),
        ("alertmanager", {"alertmanager_route": {"receiver": "ops"}}, "alertmanager_receivers"),
    ],
)
def test_bad_role_input_fails_before_any_change(role, bad, named):
    extra = dict(GOOD[role], role_under_test=role, **bad)
    extra = {key: value for key, value in extra.items() if value is not None}
    result = _run("tests/unit/playbooks/include-role.yml", extra)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert named in output
    assert "changed=0" in output


def test_a_two_node_cluster_is_refused_before_any_host_is_created():
    result = _run("playbooks/local-hosts.yml", {"local_rabbitmq_hosts": 2, "kit_environment": "input-validation"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "RABBITMQ_HOSTS=2 (local_rabbitmq_hosts) is refused" in output
    assert "changed=0" in output


def test_two_redis_hosts_are_refused_before_any_host_is_created():
    result = _run("playbooks/local-hosts.yml", {"local_redis_hosts": 2, "kit_environment": "input-validation"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "REDIS_HOSTS=2 (local_redis_hosts) is refused" in output
    assert "changed=0" in output


def test_a_second_monitoring_host_is_refused_before_any_host_is_created():
    result = _run("playbooks/local-hosts.yml", {"local_monitoring_hosts": 2, "kit_environment": "input-validation"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "1 monitoring host" in output
    assert "changed=0" in output


def test_unknown_broker_stops_site_yml_on_the_controller():
    result = _run("playbooks/site.yml", {"celery_broker": "kafka", "kit_environment": "input-validation"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "celery_broker must be rabbitmq or redis" in output
    assert not (ROOT / ".state" / "input-validation").exists()


def test_rotating_a_token_never_issued_stops_before_any_secret_changes():
    result = _run(
        "playbooks/rotate-secrets.yml", {"rotate_api_tokens": "ci, nobody", "kit_environment": "input-validation"}
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "No API token named ci, nobody" in output
    assert not (ROOT / ".state" / "input-validation").exists()


def test_a_pool_on_a_group_without_hosts_stops_site_yml_on_the_controller():
    pools = [{"name": "reports", "queues": [], "processes": 1, "concurrency": 1, "hosts": "workers_reports"}]
    result = _run("playbooks/site.yml", {"kit_worker_pools": pools, "kit_environment": "input-validation"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Worker pool reports runs on the hosts of group workers_reports, and the inventory has none" in output
    assert "changed=0" in output


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"bench_tasks": "many"}, "bench_tasks must be a whole number"),
        ({"bench_threads": 0}, "bench_threads must be a whole number of at least 1"),
        ({"bench_paced_rate": -5}, "bench_paced_rate must be a positive number"),
        ({"bench_configs": ["kafka"]}, "bench_configs must list some of redis, quorum, classic"),
    ],
)
def test_bad_bench_settings_stop_make_bench_before_it_touches_a_host(bad, named):
    result = _run("playbooks/bench.yml", {"kit_environment": "input-validation", **bad})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert named in output
    assert "changed=0" in output
