"""Every host installs Debian's security updates unattended, and holds back the broker and Redis."""

from __future__ import annotations

import re

GROUPS = ("rabbitmq", "redis", "workers", "api", "monitoring")
HELD = {"rabbitmq-server", "erlang-.*", "redis-server"}


def _apt_list(host, name: str) -> list[str]:
    """The entries of an apt configuration list, as apt itself reads it (every file of apt.conf.d)."""
    dumped = host.check_output(f"apt-config dump {name}")
    return re.findall(rf'^{re.escape(name)}:: "(.*)";$', dumped, re.M)


def _every_host(group_hosts):
    for group in GROUPS:
        yield from group_hosts(group, required=group not in ("rabbitmq", "monitoring"))


def test_every_host_upgrades_from_the_security_archive_only(group_hosts):
    for host in _every_host(group_hosts):
        name = host.backend.hostname
        assert host.package("unattended-upgrades").is_installed, name
        periodic = host.check_output("apt-config dump APT::Periodic")
        assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic, f"{name}: {periodic}"
        assert 'APT::Periodic::Update-Package-Lists "1";' in periodic, f"{name}: {periodic}"
        origins = _apt_list(host, "Unattended-Upgrade::Origins-Pattern")
        # Debian's own file adds the point releases; the kit's clears that list.
        assert origins and all("label=Debian-Security" in origin for origin in origins), f"{name}: {origins}"
        held = set(_apt_list(host, "Unattended-Upgrade::Package-Blacklist"))
        assert HELD <= held, f"{name} would upgrade {sorted(HELD - held)} unattended"
        timer = host.service("apt-daily-upgrade.timer")
        assert timer.is_enabled and timer.is_running, f"{name}: apt-daily-upgrade.timer is not active"


def test_unattended_upgrade_reads_the_settings(group_hosts):
    """A dry run of the tool itself: it names the security origins and holds RabbitMQ back."""
    host = group_hosts("api")[0]
    run = host.run("timeout 300 unattended-upgrade --dry-run --debug 2>&1")
    assert run.rc == 0, run.stdout[-2000:]
    assert re.search(r"Allowed origins are:.*Debian-Security", run.stdout), run.stdout[-2000:]
    assert "rabbitmq-server" in run.stdout, "the held packages are not listed"
