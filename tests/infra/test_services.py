"""Every service of the platform runs and starts at boot."""

import pytest

SERVICES = {
    "rabbitmq": ["rabbitmq-server"],
    "redis": ["redis-server"],
    "workers": ["celery-workers.target"],
    "api": ["celery-api", "celery-outbox-relay"],
}


@pytest.mark.parametrize("group", sorted(SERVICES))
def test_services_are_running_and_enabled(group_hosts, broker, group):
    if group == "rabbitmq" and broker != "rabbitmq":
        pytest.skip(f"this deployment's broker is {broker}, it may have no RabbitMQ")
    for host in group_hosts(group):
        for name in SERVICES[group]:
            service = host.service(name)
            assert service.is_running, f"{name} is not running on {host.backend.hostname}"
            assert service.is_enabled, f"{name} is not enabled on {host.backend.hostname}"


def test_app_services_run_unprivileged(group_hosts):
    for group in ("workers", "api"):
        for host in group_hosts(group):
            # The app's processes (the release's python: workers, gunicorn, the
            # outbox relay), not the load generator the fault tests run as root.
            users = host.check_output(
                "ps -eo user:32=,args= | awk '$2 ~ \"^/opt/celery-app/\" && !/celery_kit.loadgen/ {print $1}' | sort -u"
            ).split()
            assert users == ["celeryapp"], f"{host.backend.hostname} runs the app as {users}"
