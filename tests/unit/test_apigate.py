"""The producer's gate (celery_kit.apigate) in front of the sample API: tokens, limits, quotas.

The limits live in a real Redis server started on a free loopback port
(Debian's redis-server; .ci/run installs it); the fallback is tested
against a port nothing listens on.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import loopback
import pytest
from sample import deployment_settings, kit_app
from werkzeug.test import Client

from celery_kit import apigate, deployment
from taskapp.api import create_api

TOKEN = "ck-test-token-0123456789abcdef"  # noqa: S105 (a test value)
OTHER = "ck-other-token-9876543210fedcba"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    port = loopback.free_port()
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    with loopback.serving(loopback.redis_server_argv(port), port, log):
        yield f"redis://127.0.0.1:{port}/2"


def write_tokens(path: Path, tokens: dict[str, dict]) -> None:
    """The api role's tokens file: hashes only."""
    path.write_text(
        json.dumps(
            {apigate.token_hash(token): {"name": name, "limits": limits} for token, (name, limits) in tokens.items()}
        )
    )


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "api-tokens.json"
    write_tokens(path, {TOKEN: ("ci", {}), OTHER: ("other", {})})
    return path


def gated_client(tokens_file: Path, locks_url: str | None, **gate) -> Client:
    settings = deployment_settings(
        locks_url=locks_url,
        api_gate={"tokens_file": str(tokens_file), "public_paths": ["/healthz"], **gate},
    )
    deployment.validate(settings)
    app = kit_app(settings)
    return Client(apigate.wrap(create_api(app), app.conf.celery_kit))


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADD = {"task": "add", "args": [1, 2]}


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {TOKEN}",
        f"bearer{TOKEN}",
        "Bearer wrong-token",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN} extra",
        "Bearer " + "a" * 10_000,
        "Bearer t\u00e9st",
        "Bearer \x00abc",
        f"Token {TOKEN}",
    ],
)
def test_a_request_without_a_valid_token_gets_401_with_a_clear_message(tokens_file, redis_url, header):
    client = gated_client(tokens_file, redis_url)
    headers = {} if header is None else {"Authorization": header}
    try:
        reply = client.post("/tasks", json=ADD, headers=headers)
    except (UnicodeEncodeError, ValueError):
        pytest.skip("the HTTP client cannot send this header")  # never reaches a server
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in reply.json["error"]


def test_a_valid_token_reaches_the_app(tokens_file, redis_url):
    client = gated_client(tokens_file, redis_url)
    reply = client.post("/tasks", json=ADD, headers=auth())
    assert reply.status_code == 202, reply.json


def test_the_health_path_is_public(tokens_file, redis_url):
    assert gated_client(tokens_file, redis_url).get("/healthz").status_code == 200


def test_a_revoked_token_is_refused_at_once_and_a_new_one_accepted_without_a_restart(tokens_file, redis_url):
    client = gated_client(tokens_file, redis_url)
    assert client.get("/tasks/0b6b1d6e", headers=auth(OTHER)).status_code == 200
    time.sleep(0.01)  # a new modification time
    write_tokens(tokens_file, {TOKEN: ("ci", {}), "ck-new-token-aaaaaaaaaaaa": ("new", {})})
    assert client.get("/tasks/0b6b1d6e", headers=auth(OTHER)).status_code == 401
    assert client.get("/tasks/0b6b1d6e", headers=auth("ck-new-token-aaaaaaaaaaaa")).status_code == 200


def test_a_rotated_tokens_old_value_works_until_it_expires_and_the_new_one_at_once(tmp_path, redis_url):
    """make rotate-secrets: the old value's hash stays, with when it stops; both log in until then."""
    path = tmp_path / "api-tokens.json"
    entries = {
        apigate.token_hash(TOKEN): {"name": "ci", "limits": {}},
        apigate.token_hash(OTHER): {"name": "ci", "limits": {}, "expires": time.time() + 2},
    }
    path.write_text(json.dumps(entries))
    client = gated_client(path, redis_url)
    assert client.get("/tasks/0b6b1d6e", headers=auth(TOKEN)).status_code == 200
    assert client.get("/tasks/0b6b1d6e", headers=auth(OTHER)).status_code == 200
    time.sleep(2.1)  # the old value's time is up: refused, with no change to the file
    assert client.get("/tasks/0b6b1d6e", headers=auth(OTHER)).status_code == 401
    assert client.get("/tasks/0b6b1d6e", headers=auth(TOKEN)).status_code == 200


def test_a_tokens_file_with_a_bad_expiry_gets_503_and_the_log_names_it(tmp_path, redis_url, capsys):
    path = tmp_path / "api-tokens.json"
    path.write_text(json.dumps({apigate.token_hash(TOKEN): {"name": "ci", "expires": "tomorrow"}}))
    reply = gated_client(path, redis_url).post("/tasks", json=ADD, headers=auth())
    assert reply.status_code == 503
    assert "cannot check tokens" in reply.json["error"]
    assert "token ci: expires must be seconds since the epoch" in capsys.readouterr().out


def test_past_its_burst_a_token_gets_429_with_retry_after_and_other_tokens_do_not(tmp_path, redis_url):
    path = tmp_path / "tokens.json"
    write_tokens(path, {TOKEN: ("burst-a", {"rate": 0.5, "burst": 3}), OTHER: ("burst-b", {})})
    client = gated_client(path, redis_url)
    answers = [client.get("/tasks/0b6b1d6e", headers=auth()).status_code for _ in range(5)]
    # The burst: 3 at once, then one every 2 s.
    assert answers == [200, 200, 200, 429, 429]
    refused = client.get("/tasks/0b6b1d6e", headers=auth())
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "too many requests" in refused.json["error"]
    assert client.get("/tasks/0b6b1d6e", headers=auth(OTHER)).status_code == 200


def test_the_limit_is_shared_by_every_process_and_host(tmp_path, redis_url):
    path = tmp_path / "tokens.json"
    write_tokens(path, {TOKEN: ("shared", {"rate": 0.5, "burst": 3})})
    first, second = gated_client(path, redis_url), gated_client(path, redis_url)
    answers = [client.get("/tasks/0b6b1d6e", headers=auth()).status_code for client in (first, second) * 3]
    assert answers.count(200) == 3, answers


def test_a_tokens_daily_submissions_are_bounded_and_reads_are_not_counted(tmp_path, redis_url):
    path = tmp_path / "tokens.json"
    write_tokens(path, {TOKEN: ("daily", {"daily": 3, "rate": 100, "burst": 100})})
    client = gated_client(path, redis_url)
    assert [client.post("/tasks", json=ADD, headers=auth()).status_code for _ in range(3)] == [202] * 3
    refused = client.post("/tasks", json=ADD, headers=auth())
    assert refused.status_code == 429
    assert "submissions of the day" in refused.json["error"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 86400
    assert client.get("/tasks/0b6b1d6e", headers=auth()).status_code == 200


def test_long_tasks_are_charged_against_the_work_limit(tmp_path, redis_url):
    path = tmp_path / "tokens.json"
    write_tokens(path, {TOKEN: ("work", {"work_rate": 1, "work_burst": 100, "rate": 100, "burst": 100})})
    client = gated_client(path, redis_url)
    long_task = {"task": "process_task", "args": [{"seconds": 45}]}
    assert client.post("/tasks", json=long_task, headers=auth()).status_code == 202
    assert client.post("/tasks", json=long_task, headers=auth()).status_code == 202
    refused = client.post("/tasks", json=long_task, headers=auth())
    assert refused.status_code == 429, refused.json
    assert int(refused.headers["Retry-After"]) >= 1
    # Quick tasks cost nothing against it.
    assert client.post("/tasks", json=ADD, headers=auth()).status_code == 202


def test_public_paths_are_limited_per_client_address(tokens_file, redis_url):
    client = gated_client(tokens_file, redis_url, public_limits={"rate": 0.5, "burst": 2})
    answers = [client.get("/healthz", environ_base={"REMOTE_ADDR": "192.0.2.9"}).status_code for _ in range(4)]
    assert answers == [200, 200, 429, 429]
    assert client.get("/healthz", environ_base={"REMOTE_ADDR": "192.0.2.10"}).status_code == 200


def test_an_unreachable_redis_refuses_nothing_and_delays_nothing(tokens_file):
    client = gated_client(tokens_file, f"redis://127.0.0.1:{loopback.free_port()}/2")
    started = time.monotonic()
    answers = [client.post("/tasks", json=ADD, headers=auth()).status_code for _ in range(10)]
    assert answers == [202] * 10
    assert time.monotonic() - started < 3


def test_an_unreachable_redis_still_limits_each_process_at_its_share(tmp_path):
    path = tmp_path / "tokens.json"
    write_tokens(path, {TOKEN: ("fallback", {"rate": 1, "burst": 4})})
    client = gated_client(path, f"redis://127.0.0.1:{loopback.free_port()}/2", processes=2)
    answers = [client.get("/tasks/0b6b1d6e", headers=auth()).status_code for _ in range(6)]
    assert answers.count(429) >= 2, answers


def test_an_unreadable_tokens_file_gets_503_not_500(tmp_path, redis_url):
    client = gated_client(tmp_path / "missing.json", redis_url)
    reply = client.post("/tasks", json=ADD, headers=auth())
    assert reply.status_code == 503
    assert "cannot check tokens" in reply.json["error"]


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ({"public_paths": ["/healthz"]}, "tokens_file"),
        ({"tokens_file": "/t.json", "public_paths": ["healthz"]}, "public_paths"),
        ({"tokens_file": "/t.json", "public_limits": {"rate": 0}}, "positive"),
        ({"tokens_file": "/t.json", "public_limits": {"speed": 1}}, "unknown limits"),
    ],
)
def test_bad_gate_settings_are_refused_naming_the_key(gate, message):
    with pytest.raises(deployment.DeploymentError, match=message):
        deployment.validate(deployment_settings(api_gate=gate))


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never answers (a hung or vanished Redis host)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield listener.getsockname()[1]
    listener.close()


@pytest.mark.parametrize("kind", ["server", "sentinels"])
def test_a_redis_that_never_answers_delays_a_submission_by_a_second_at_most(tokens_file, silent_port, kind):
    """No retries, no backoff: the gate falls back at once, so a client's timeout is never reached."""
    url = (
        f"redis://127.0.0.1:{silent_port}/2"
        if kind == "server"
        else f"sentinel://127.0.0.1:{silent_port}/2;sentinel://127.0.0.1:{silent_port}/2?master_name=celery-kit"
    )
    client = gated_client(tokens_file, url)
    started = time.monotonic()
    first = client.post("/tasks", json=ADD, headers=auth())
    first_seconds = time.monotonic() - started
    answers = [client.post("/tasks", json=ADD, headers=auth()).status_code for _ in range(5)]
    assert first.status_code == 202
    assert first_seconds < 1.5, f"the first submission waited {first_seconds:.1f} s"
    assert answers == [202] * 5
    assert time.monotonic() - started < 2.5
