"""TLS from an attacker's position: a container on the deployment's network that is not part of it.

Every service answers over TLS only: a plain AMQP, Redis, Sentinel, HTTP
client gets no service; the certificates are the deployment CA's and name
what they serve (every RabbitMQ node the cluster's name, every host its
address). The Erlang distribution refuses a peer without a certificate of
the CA. The kit's own clients refuse a host of the deployment that poses as
another service: trusting the CA is not enough, the name must match.

The attacker is a container of the hosts' image on the deployment's Docker
network (a local deployment: make deploy, molecule); it knows only the CA's
certificate, which is public.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid

import conftest
import pytest
from conftest import (
    APP_PYTHON,
    converge,
    curl_tls,
    private_address,
    under_counted_load,
)

IMAGE = "celery-kit-host:trixie-1"
CA_ON_ATTACKER = "/root/deployment-ca.crt"
RABBITMQ_NAME = "rabbitmq.celery-kit"

# A client that sends a plain request and reports what came back (at most
# 64 bytes, hex), or how the connection ended.
PLAIN_PROBE = """
import socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
try:
    sock = socket.create_connection((host, port), timeout=5)
except OSError as exc:
    print("refused", type(exc).__name__); sys.exit(0)
sock.sendall(payload)
try:
    print("reply", sock.recv(64).hex())
except OSError as exc:
    print("closed", type(exc).__name__)
"""

# A TLS client trusting the CA and checking the name; optionally with a
# certificate and key of its own. Prints ok, or the error, after a read (a
# TLS 1.3 server refuses a client's certificate after the handshake).
TLS_PROBE = """
import socket, ssl, sys
host, port, name, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.create_default_context(cafile=ca)
if len(sys.argv) > 6:
    context.load_cert_chain(sys.argv[5], sys.argv[6])
try:
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            tls.settimeout(2)
            try:
                tls.recv(1)
            except TimeoutError:
                pass
    print("ok")
except (OSError, ssl.SSLError) as exc:
    print("error", type(exc).__name__, str(exc)[:200])
"""


def _deployment() -> str:
    return os.environ.get("KIT_LOCAL_DEPLOYMENT", "local")


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=check)


@pytest.fixture(scope="module")
def attacker(group_hosts, tls_ca):
    """A container on the deployment's network, outside the deployment, holding the CA's certificate."""
    if not tls_ca:
        pytest.skip("this deployment runs without TLS (TLS=0)")
    network = f"celery-kit-{_deployment()}"
    if _docker("network", "inspect", network, check=False).returncode != 0:
        pytest.skip(f"no local Docker network {network}: the attacker's position needs a local deployment")
    name = f"ck-attacker-{uuid.uuid4().hex[:8]}"
    _docker("run", "-d", "--rm", "--name", name, "--network", network, "--entrypoint", "sleep", IMAGE, "900")
    try:
        ca = group_hosts("api")[0].file(tls_ca).content_string
        subprocess.run(
            ["docker", "exec", "-i", name, "sh", "-c", f"cat > {CA_ON_ATTACKER}"], input=ca, text=True, check=True
        )
        yield name
    finally:
        _docker("rm", "-f", name, check=False)


def _run(container: str, script: str, *args: str) -> str:
    result = _docker("exec", container, "python3", "-c", script, *args)
    return result.stdout.strip()


def _plain(attacker: str, host, port: int, payload: bytes) -> str:
    return _run(attacker, PLAIN_PROBE, private_address(host), str(port), payload.hex())


def _tls(attacker: str, address: str, port: int, name: str) -> str:
    return _run(attacker, TLS_PROBE, address, str(port), name, CA_ON_ATTACKER)


def _served_nothing(answer: str, *service_replies: bytes) -> bool:
    """The plain client got no service: refused, closed, or bytes that are a TLS alert, not the service's."""
    kind, _, rest = answer.partition(" ")
    if kind in ("refused", "closed"):
        return True
    reply = bytes.fromhex(rest)
    return not reply or (reply[:1] == b"\x15" and not any(reply.startswith(r) for r in service_replies))


def test_amqp_is_served_over_tls_only(attacker, rabbitmq_nodes):
    for node in rabbitmq_nodes:
        assert _plain(attacker, node, 5672, b"AMQP\x00\x00\x09\x01").startswith("refused")
        # The AMQP greeting on the TLS port gets no Connection.Start.
        answer = _plain(attacker, node, 5671, b"AMQP\x00\x00\x09\x01")
        assert _served_nothing(answer, b"\x01\x00\x00"), answer


def test_every_node_presents_the_deployments_certificate_with_the_clusters_name(attacker, rabbitmq_nodes):
    for node in rabbitmq_nodes:
        address = private_address(node)
        assert _tls(attacker, address, 5671, RABBITMQ_NAME) == "ok"
        assert _tls(attacker, address, 5671, address) == "ok"
        # Another service's name is not on a node's certificate.
        assert _tls(attacker, address, 5671, "api.celery-kit").startswith("error SSLCertVerificationError")


def test_redis_and_sentinel_are_served_over_tls_only(attacker, group_hosts):
    for host in group_hosts("redis"):
        ports = [6379] + ([26379] if len(group_hosts("redis")) >= 3 else [])
        for port in ports:
            answer = _plain(attacker, host, port, b"PING\r\n")
            assert _served_nothing(answer, b"+PONG", b"-NOAUTH", b"-ERR"), f"{port}: {answer}"
            assert _tls(attacker, private_address(host), port, private_address(host)) == "ok"


def test_the_management_ui_and_the_api_are_served_over_https_only(attacker, rabbitmq_nodes, api_host):
    node_host = rabbitmq_nodes[0]
    node = private_address(node_host)
    api = private_address(api_host)

    def status(url: str, *options: str) -> str:
        result = _docker(
            "exec",
            attacker,
            "curl",
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            *options,
            url,
            check=False,
        )
        return result.stdout.strip()

    def status_on_the_node(url: str, *options: str) -> str:
        command = f"curl -s -m 5 -o /dev/null -w %{{http_code}} {' '.join(options)} {url}"
        return node_host.run(command).stdout.strip()

    # The attacker does not reach the management port at all (its firewall,
    # tests/infra/test_ports.py): not in plain HTTP, not in HTTPS.
    assert status(f"http://{node}:15672/api/overview") == "000"
    assert status(f"https://{node}:15671/api/overview", "--cacert", CA_ON_ATTACKER) == "000"
    # Where it may (on the node itself): HTTPS only, with the CA's certificate.
    assert status_on_the_node(f"http://{node}:15672/api/overview") == "000"
    assert status_on_the_node(f"http://{node}:15671/api/overview") in ("000", "400")
    # Trusting another CA only (a public one), the certificate is refused.
    public_ca = "/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt"
    assert status_on_the_node(f"https://{node}:15671/api/overview", "--cacert", public_ca) == "000"
    assert status_on_the_node(f"https://{node}:15671/api/overview", "--cacert", conftest.TLS_CA) == "401"
    assert status(f"http://{api}:8000/healthz") == "000"
    assert status(f"https://{api}:8000/healthz", "--cacert", CA_ON_ATTACKER) == "200"


def _attacker_status(attacker: str, url: str, *options: str) -> str:
    """curl's HTTP status from the attacker's container ("000": no HTTP answer)."""
    result = _docker(
        "exec", attacker, "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", *options, url, check=False
    )
    return result.stdout.strip()


def test_the_exporters_prometheus_alertmanager_and_flower_are_served_over_https_only(attacker, group_hosts):
    monitoring = group_hosts("monitoring", required=False)
    if not monitoring:
        pytest.skip("this deployment has no monitoring host (MONITORING_HOSTS=0): no exporter runs")
    endpoints = [(host, 9100, "/metrics") for host in group_hosts("all")]
    endpoints += [(host, 9121, "/metrics") for host in group_hosts("redis")]
    endpoints += [(monitoring[0], 9090, "/-/ready"), (monitoring[0], 9093, "/-/ready")]
    endpoints += [(monitoring[0], 5555, "/healthcheck")]
    answers = {}
    for host, port, path in endpoints:
        address = private_address(host)
        answers[f"{host.backend.hostname}:{port}"] = (
            _attacker_status(attacker, f"http://{address}:{port}{path}"),
            _attacker_status(attacker, f"https://{address}:{port}{path}", "--cacert", CA_ON_ATTACKER),
        )
    # Plain HTTP gets no answer, or Go's 400 ("an HTTP request to an HTTPS
    # server"); HTTPS with the CA's certificate gets the page.
    wrong = {name: pair for name, pair in answers.items() if pair[0] not in ("000", "400") or pair[1] != "200"}
    assert not wrong, f"(plain HTTP, HTTPS) answers: {wrong}"


def test_the_erlang_distribution_refuses_a_peer_without_a_certificate_of_the_ca(attacker, rabbitmq_nodes, tls_ca):
    node = rabbitmq_nodes[0]
    address = private_address(node)
    refused = _tls(attacker, address, 25672, RABBITMQ_NAME)
    assert refused.startswith("error"), refused
    # The same client with the node's own certificate and key is let in:
    # the refusal above is the missing certificate, not a broken listener.
    allowed = node.check_output(
        "python3 -c %s %s 25672 %s %s /etc/celery-kit/tls/host.crt /etc/celery-kit/tls/host.key",
        TLS_PROBE,
        address,
        RABBITMQ_NAME,
        tls_ca,
    )
    assert allowed == "ok"


def test_the_kits_clients_refuse_a_deployment_host_posing_as_the_broker(group_hosts, api_host):
    """A worker's AMQP client, pointed at the api host (its certificate is the CA's, with another name), refuses it."""
    worker = group_hosts("workers")[0]
    url = f"amqps://celery:x@{private_address(api_host)}:8000/%2Fcelery?tls_ca={conftest.TLS_CA}&tls_server_name={RABBITMQ_NAME}"
    script = (
        "import amqp, sys\n"
        "from celery_kit import amqpurl\n"
        "connection = amqp.Connection(**amqpurl.amqp_params(sys.argv[1]))\n"
        "try:\n"
        "    connection.connect()\n"
        "    print('connected')\n"
        "except Exception as exc:\n"
        "    print('refused', type(exc).__name__, exc)\n"
    )
    answer = worker.check_output(f"{APP_PYTHON} -c {shlex.quote(script)} {shlex.quote(url)}")
    assert answer.startswith("refused SSLCertVerificationError"), answer
    assert "rabbitmq.celery-kit" in answer or "hostname" in answer.lower()


def test_curl_on_the_hosts_trusts_the_deployments_ca(api_host):
    """The kit's own checks (and an operator on a host) reach the API with the CA file the suite uses."""
    assert (
        api_host.check_output(f"curl -s -o /dev/null -w %{{http_code}} {curl_tls()}https://127.0.0.1:8000/healthz")
        == "200"
    )


def _certificate_serials(hosts) -> dict[str, str]:
    return {
        host.backend.hostname: host.check_output("openssl x509 -noout -serial -in /etc/celery-kit/tls/host.crt")
        for host in hosts
    }


def _served_serial(attacker: str, address: str, port: int) -> str:
    command = (
        f"openssl s_client -connect {address}:{port} -CAfile {CA_ON_ATTACKER} </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial"
    )
    return _docker("exec", attacker, "sh", "-c", command).stdout.strip()


def _main_pids(host, *units: str) -> dict[str, str]:
    return {unit: host.check_output(f"systemctl show --property=MainPID --value {unit}") for unit in units}


def test_renewing_every_certificate_under_load_restarts_nothing_and_loses_nothing(  # noqa: PLR0917 (fixtures)
    pytestconfig, attacker, group_hosts, rabbitmq, rabbitmq_nodes, api_host
):
    """make renew-certs: new certificates everywhere, served at once, no refused submission, no lost task."""
    hosts = group_hosts("all")
    redis_hosts = group_hosts("redis")
    before = _certificate_serials(hosts)
    pids = {
        **{f"{node.backend.hostname} rabbitmq": _main_pids(node, "rabbitmq-server") for node in rabbitmq_nodes},
        **{f"{host.backend.hostname} redis": _main_pids(host, "redis-server") for host in redis_hosts},
        "api": _main_pids(api_host, "celery-api"),
    }
    run = under_counted_load(
        api_host,
        rabbitmq,
        "renew-certs",
        "every host's certificate renewed (make renew-certs, {seconds} s)",
        lambda: converge(pytestconfig, limit="all", timeout=1200, playbook="playbooks/renew-certs.yml"),
    )
    after = _certificate_serials(hosts)
    assert all(after[name] != before[name] for name in before), "a certificate was not replaced"
    # Every service serves its new certificate, and none restarted for it
    # (Sentinel restarts, by design).
    for node in rabbitmq_nodes:
        assert _served_serial(attacker, private_address(node), 5671) == after[node.backend.hostname]
    for host in redis_hosts:
        assert _served_serial(attacker, private_address(host), 6379) == after[host.backend.hostname]
    assert _served_serial(attacker, private_address(api_host), 8000) == after[api_host.backend.hostname]
    # The exporters, Prometheus, Alertmanager (each reads its certificate
    # at every new connection) and Flower (Tornado loads it at every
    # handshake), where a monitoring host runs them.
    monitoring = group_hosts("monitoring", required=False)
    monitored = [(host, 9100) for host in hosts] + [(host, 9121) for host in redis_hosts] if monitoring else []
    monitored += [(host, port) for host in monitoring for port in (9090, 9093, 5555)]
    for host, port in monitored:
        assert _served_serial(attacker, private_address(host), port) == after[host.backend.hostname], port
    assert {
        **{f"{node.backend.hostname} rabbitmq": _main_pids(node, "rabbitmq-server") for node in rabbitmq_nodes},
        **{f"{host.backend.hostname} redis": _main_pids(host, "redis-server") for host in redis_hosts},
        "api": _main_pids(api_host, "celery-api"),
    } == pids
    assert run.counts["refused"] == 0, run.steady
    assert run.counts["lost"] == 0, run.report
    assert run.counts["dead_lettered"] == 0
