"""The API's gate on a deployment: tokens, issuing and revoking them, limits.

The requests go from the controller to the api host's address (a local
deployment's Docker network is reachable from this machine), over HTTPS
when the deployment has TLS, with tokens read from the deployment's state
directory: no token is ever on a command line.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import conftest
import pytest
from conftest import converge, private_address, state_dir

NAME = "verify-suite"


@pytest.fixture(scope="module")
def api(api_host):
    """POST or GET on the api host's address; returns (status, JSON body, headers)."""
    if not (state_dir() / "api-tokens").is_dir():
        pytest.skip(
            f"no API tokens in {state_dir()}: the suite calls the API from the controller of a local deployment"
        )
    scheme = "https" if conftest.TLS_CA else "http"
    context = ssl.create_default_context(cafile=str(state_dir() / "ca" / "ca.crt")) if conftest.TLS_CA else None
    base = f"{scheme}://{private_address(api_host)}:8000"

    def call(method: str, path: str, token: str | None = None, body: dict | None = None):
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=20, context=context) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null"), response.headers
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null"), error.headers

    return call


def _token(name: str) -> str:
    return (state_dir() / "api-tokens" / name).read_text().strip()


def _tokens_playbook(pytestconfig, action: str, name: str, *extra: str) -> None:
    converge(
        pytestconfig,
        "-e",
        f"api_token_action={action}",
        "-e",
        f"api_token_name={name}",
        *extra,
        limit="all:localhost",
        timeout=600,
        playbook="playbooks/api-tokens.yml",
    )


ADD = {"task": "add", "args": [20, 22]}


def test_the_api_answers_nothing_but_its_health_without_a_valid_token(api):
    status, reply, headers = api("POST", "/tasks", body=ADD)
    assert status == 401, reply
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in reply["error"]
    wrong = "not-a-token-of-this-deployment"
    assert api("POST", "/tasks", token=wrong, body=ADD)[0] == 401
    assert api("GET", "/tasks/0b6b1d6e-3f6e-4d43-9a3c-2f1f0b8f3c11")[0] == 401
    assert api("GET", "/healthz")[0] == 200


def test_the_kits_own_token_submits(api):
    status, reply, _ = api("POST", "/tasks", token=_token("kit"), body=ADD)
    assert status == 202, reply


def test_an_issued_token_works_and_a_revoked_one_stops_at_once_without_a_restart(pytestconfig, api, api_host):
    main_pid = api_host.check_output("systemctl show --property=MainPID --value celery-api")
    _tokens_playbook(pytestconfig, "issue", NAME)
    try:
        token = _token(NAME)
        assert api("POST", "/tasks", token=token, body=ADD)[0] == 202
    finally:
        _tokens_playbook(pytestconfig, "revoke", NAME)
    assert not (state_dir() / "api-tokens" / NAME).exists()
    assert api("POST", "/tasks", token=token, body=ADD)[0] == 401
    assert api_host.check_output("systemctl show --property=MainPID --value celery-api") == main_pid


def test_a_token_past_its_burst_gets_429_and_another_token_does_not(pytestconfig, api):
    limits = json.dumps({"kit_api_token_limits": {NAME: {"rate": 0.2, "burst": 3}}})
    _tokens_playbook(pytestconfig, "issue", NAME, "-e", limits)
    try:
        token = _token(NAME)
        statuses = [api("GET", "/tasks/0b6b1d6e-3f6e-4d43-9a3c-2f1f0b8f3c11", token=token)[0] for _ in range(5)]
        status, reply, headers = api("POST", "/tasks", token=token, body=ADD)
        assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429], statuses
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert "too many requests" in reply["error"]
        assert api("POST", "/tasks", token=_token("kit"), body=ADD)[0] == 202
    finally:
        _tokens_playbook(pytestconfig, "revoke", NAME)


def test_the_hosts_hold_hashes_only(api_host):
    hashes = api_host.file("/etc/celery-app/api-tokens.json")
    assert hashes.mode == 0o640
    assert _token("kit") not in hashes.content_string
    assert api_host.file("/etc/celery-app/kit-api-auth.header").mode == 0o600
