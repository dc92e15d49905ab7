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


# The units that run the app, per group (a worker unit per process: the first).
APP_UNITS = {"api": ["celery-api", "celery-outbox-relay"], "workers": ["celery-worker-*"]}
# Outside its data directory an app process may write nothing, even with
# root's rights (an escalation): tried from inside its unit's sandbox (its
# mount namespace), where root may write these in the host's own.
READ_ONLY_PATHS = ["/etc", "/usr/local", "/opt/celery-app"]


def _main_pid(host, pattern: str) -> tuple[str, int]:
    units = host.check_output(
        f"systemctl list-units --type=service --state=running --no-legend --plain '{pattern}.service'"
        " | awk '{print $1}'"
    ).split()
    assert units, f"no running unit {pattern} on {host.backend.hostname}"
    return units[0], int(host.check_output(f"systemctl show -p MainPID --value {units[0]}"))


@pytest.mark.parametrize("group", sorted(APP_UNITS))
def test_app_units_are_sandboxed(group_hosts, group):
    for host in group_hosts(group):
        for pattern in APP_UNITS[group]:
            unit, pid = _main_pid(host, pattern)
            shown = host.check_output(
                f"systemctl show -p NoNewPrivileges,ProtectSystem,PrivateTmp,CapabilityBoundingSet {unit}"
            )
            settings = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
            assert settings == {
                "NoNewPrivileges": "yes",
                "ProtectSystem": "strict",
                "PrivateTmp": "yes",
                "CapabilityBoundingSet": "",
            }, (unit, settings)
            inside = f"nsenter --target {pid} --mount"
            for path in READ_ONLY_PATHS:
                result = host.run(f"{inside} touch {path}/.celery-kit-sandbox-test")
                assert result.rc != 0, f"{unit} on {host.backend.hostname} may write to {path}"
                assert "Read-only file system" in result.stderr, result.stderr
            # Its own data directory stays writable, for its user.
            as_app = f"{inside} setpriv --reuid celeryapp --regid celeryapp --clear-groups"
            assert host.run(f"{as_app} touch /var/lib/celery-app/.sandbox-test").rc == 0, unit
            host.run("rm -f /var/lib/celery-app/.sandbox-test")
            exposure = host.check_output(f"systemd-analyze security --no-pager {unit} | tail -n 1")
            print(f"{host.backend.hostname} {unit}: {exposure.strip()}")
