"""Each host listens where it should, and only there: with TLS (the kit's default) AMQP on 5671 and the
management API on 15671 only, the plain 5672 and 15672 closed. The management port answers the RabbitMQ
nodes and the operator only (the rabbitmq role's firewall): a worker or an api host gets a reset."""

import os
import subprocess
import time

import conftest
import pytest
from conftest import management_url, private_address


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


def _management_status(run, url: str) -> tuple[str, float]:
    """HTTP status of the management API's /api/overview without credentials, as seen by run, and how long it took."""
    started = time.monotonic()
    status = run(f"curl -s -m 10 -o /dev/null -w %{{http_code}} {conftest.curl_tls()}{url}")
    return status.strip(), time.monotonic() - started


def test_the_management_port_answers_the_nodes_and_the_operator_but_no_other_host(group_hosts, rabbitmq_nodes):
    others = group_hosts("workers") + group_hosts("api")
    for node in rabbitmq_nodes:
        url = management_url(node, "/api/overview")
        # Its own node (and every node) gets the login prompt: 401 without credentials.
        for peer in rabbitmq_nodes:
            assert _management_status(lambda command, h=peer: h.run(command).stdout, url)[0] == "401"
        # A worker or an api host is refused at once (a TCP reset, not a timeout).
        for host in others:
            status, took = _management_status(lambda command, h=host: h.run(command).stdout, url)
            assert status == "000", f"{host.backend.hostname} reached {url}: {status}"
            assert took < 5, f"{host.backend.hostname} waited {took:.1f} s for {url}: dropped, not refused"


def test_the_operators_machine_reaches_the_management_port(rabbitmq_nodes, api_host, tmp_path):
    # Locally the operator is this machine, on the deployment's Docker network
    # (its gateway); on AWS an SSH tunnel that ends on the node itself.
    network = f"celery-kit-{os.environ.get('KIT_LOCAL_DEPLOYMENT', 'local')}"
    if subprocess.run(["docker", "network", "inspect", network], capture_output=True, check=False).returncode:
        pytest.skip(f"no local Docker network {network}: on AWS the operator reaches the UI through a tunnel")
    options = []
    if conftest.TLS_CA:
        ca = tmp_path / "ca.crt"
        ca.write_text(api_host.file(conftest.TLS_CA).content_string)
        options = ["--cacert", str(ca)]
    for node in rabbitmq_nodes:
        url = management_url(node, "/api/overview")
        status = subprocess.run(
            ["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", *options, url],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        assert status == "401", f"this machine got {status!r} from {url}"
