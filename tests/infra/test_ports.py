"""Each host listens where it should, and only there: with TLS (the kit's default) AMQP on 5671 and the
management API on 15671 only, the plain 5672 and 15672 closed."""

import conftest
from conftest import private_address


def _listening(host):
    """Set of (address, port) of the host's listening TCP sockets."""
    sockets = set()
    for line in host.check_output("ss -Htln").splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        sockets.add((address.strip("[]"), int(port)))
    return sockets


def _ports(host):
    return {port for _, port in _listening(host)}


def test_redis_listens_on_loopback_and_private_address_only(redis_host):
    addresses = {address for address, port in _listening(redis_host) if port == 6379}
    assert addresses == {"127.0.0.1", private_address(redis_host)}


def _service_ports():
    """AMQP and management ports the deployment uses, and the plain ones that must be closed with TLS."""
    if conftest.TLS_CA:
        return {5671, 15671}, {5672, 15672}
    return {5672, 15672}, set()


def test_rabbitmq_listens_for_amqp_management_and_clustering(rabbitmq):
    used, closed = _service_ports()
    ports = _ports(rabbitmq)
    assert used | {4369, 25672} <= ports
    assert not ports & closed, f"plain ports open: {ports & closed}"
    assert 6379 not in ports and 8000 not in ports


def test_management_listens_on_the_private_address_only(rabbitmq):
    used, _ = _service_ports()
    management = max(used)
    addresses = {address for address, port in _listening(rabbitmq) if port == management}
    assert addresses == {private_address(rabbitmq)}


def test_api_listens_on_its_port(api_host):
    used, closed = _service_ports()
    ports = _ports(api_host)
    assert 8000 in ports
    assert not ports & (used | closed | {6379})


def test_workers_listen_on_no_service_port(group_hosts):
    used, closed = _service_ports()
    for host in group_hosts("workers"):
        assert not _ports(host) & (used | closed | {6379, 8000}), host.backend.hostname
