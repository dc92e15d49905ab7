"""The deployment's state shared through SSM Parameter Store (ENV=aws), against moto on loopback.

Two operators, each with a state directory of their own on their
controller, deploy the same AWS deployment: the second one gets the
first one's secrets, a token one revokes is revoked for the other, a
secret made twice is refused before anything changes, and destroy leaves
no parameter. moto_server runs on a free loopback port; no AWS account, no
network.
"""

from __future__ import annotations

import stat
from pathlib import Path

import boto3
import loopback
import pytest

from celery_kit import aws, shared_state

PREFIX = shared_state.prefix("celery-kit", "ci")
SECRETS = {
    "redis_admin_password": "a" * 40,
    "rabbitmq_erlang_cookie": "C" * 40,
    "api-tokens/kit": "k" * 43,
    "ca/ca.key": "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI...\n-----END EC PRIVATE KEY-----\n",
    "broker": "rabbitmq\n",
    "migration": "",
}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    server = loopback.program("moto_server", "make venv installs it")
    port = loopback.free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with loopback.serving([server, "-H", "127.0.0.1", "-p", str(port)], port, log, timeout=60):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def ssm(endpoint, monkeypatch):
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("ssm", region_name="eu-west-1")
    yield client
    shared_state.remove(client, PREFIX)


def write(directory: Path, files: dict[str, str]) -> None:
    for name, value in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)


def test_a_second_operator_deploys_with_the_first_ones_secrets(ssm, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write(first, SECRETS)
    pushed = shared_state.push(ssm, PREFIX, first)
    assert sorted(pushed.written) == sorted(SECRETS)
    stored = ssm.get_parameter(Name=PREFIX + "redis_admin_password", WithDecryption=False)["Parameter"]
    assert stored["Type"] == "SecureString"

    pulled = shared_state.pull(ssm, PREFIX, second)
    assert sorted(pulled.written) == sorted(SECRETS)
    assert shared_state.local_files(second) == SECRETS
    for name in SECRETS:
        assert stat.S_IMODE((second / name).stat().st_mode) == 0o600, name
    # Nothing new on either side: nothing to do.
    assert shared_state.push(ssm, PREFIX, second).summary("stored", "deleted") == "nothing to do"
    assert shared_state.pull(ssm, PREFIX, first).summary("fetched", "removed") == "nothing to do"


def test_a_token_revoked_by_one_operator_is_revoked_for_the_other(ssm, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write(first, {**SECRETS, "api-tokens/ci": "t" * 43})
    shared_state.push(ssm, PREFIX, first)
    shared_state.pull(ssm, PREFIX, second)

    (first / "api-tokens" / "ci").unlink()  # make api-token-revoke NAME=ci, on the first controller
    assert shared_state.push(ssm, PREFIX, first).removed == ["api-tokens/ci"]
    pulled = shared_state.pull(ssm, PREFIX, second)
    assert pulled.removed == ["api-tokens/ci"]
    assert not (second / "api-tokens" / "ci").exists()
    # A token issued on the second controller (never shared yet) is kept and shared.
    write(second, {"api-tokens/reports": "r" * 43})
    assert shared_state.pull(ssm, PREFIX, second).removed == []
    assert shared_state.push(ssm, PREFIX, second).written == ["api-tokens/reports"]


def test_secrets_made_twice_are_refused_before_anything_changes(ssm, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write(first, SECRETS)
    shared_state.push(ssm, PREFIX, first)
    other = {"redis_admin_password": "b" * 40, "broker": "rabbitmq\n"}
    write(second, other)
    with pytest.raises(shared_state.SharedStateError) as refused:
        shared_state.pull(ssm, PREFIX, second)
    message = str(refused.value)
    assert "redis_admin_password" in message and "broker" not in message
    assert "a" * 40 not in message and "b" * 40 not in message, "a secret in the message"
    assert shared_state.local_files(second) == other, "the refused pull changed files"


def test_destroy_leaves_no_parameter(ssm, tmp_path):
    write(tmp_path, SECRETS)
    shared_state.push(ssm, PREFIX, tmp_path)
    assert shared_state.remove(ssm, PREFIX) == len(SECRETS)
    assert shared_state.shared_files(ssm, PREFIX) == {}


def test_aws_commands_pull_before_and_push_after_even_when_they_fail(ssm, tmp_path, monkeypatch):
    """celery-kit aws deploy and exec: the state a failed run made is shared all the same."""
    settings = aws.Settings(region="eu-west-1", environment="ci", project="celery-kit")
    monkeypatch.setattr(aws, "state_dir", lambda _settings: tmp_path / "state")
    write(tmp_path / "elsewhere", SECRETS)
    shared_state.push(ssm, PREFIX, tmp_path / "elsewhere")

    def failing_run() -> int:
        assert shared_state.local_files(tmp_path / "state") == SECRETS, "the run started before the pull"
        write(tmp_path / "state", {"redis_app_password": "p" * 40})
        return 2

    assert aws.sharing_state(settings, failing_run) == 2
    assert shared_state.shared_files(ssm, PREFIX)["redis_app_password"] == "p" * 40


def test_a_file_ssm_cannot_hold_is_named(ssm, tmp_path):
    write(tmp_path, {"known_hosts": "x" * 9000})
    with pytest.raises(shared_state.SharedStateError, match="known_hosts"):
        shared_state.push(ssm, PREFIX, tmp_path)
