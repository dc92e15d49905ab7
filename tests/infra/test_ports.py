"""Each host listens where it should, and only there."""


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


def _private_address(host):
    return host.check_output("ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'")


def test_redis_listens_on_loopback_and_private_address_only(redis_host):
    addresses = {address for address, port in _listening(redis_host) if port == 6379}
    assert addresses == {"127.0.0.1", _private_address(redis_host)}


def test_rabbitmq_listens_for_amqp_management_and_clustering(rabbitmq):
    ports = _ports(rabbitmq)
    assert {5672, 15672, 4369, 25672} <= ports
    assert 6379 not in ports and 8000 not in ports


def test_api_listens_on_its_port(api_host):
    ports = _ports(api_host)
    assert 8000 in ports
    assert not ports & {5672, 6379, 15672}


def test_workers_listen_on_no_service_port(group_hosts):
    for host in group_hosts("workers"):
        assert not _ports(host) & {5672, 6379, 8000, 15672}, host.backend.hostname
