"""make deploy ENV=aws refuses incomplete settings before Terraform runs.

The script runs for real (subprocess) with a controlled environment: no
credentials file, no instance metadata lookup, no terraform.tfvars.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(action: str, tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        **settings,
    }
    return subprocess.run(
        [sys.executable, "-m", "celery_kit.cli", "aws", action],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


COMPLETE = {
    "AWS_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "example",
    "TF_VAR_operator_cidr": "203.0.113.7/32",
    "TF_VAR_key_name": "ops",
}


@pytest.fixture(autouse=True)
def no_user_tfvars():
    if (ROOT / "terraform" / "terraform.tfvars").exists():
        pytest.skip("terraform/terraform.tfvars exists on this machine; these checks need the repository's defaults")


def test_complete_settings_are_accepted(tmp_path):
    result = run("check", tmp_path, **COMPLETE)
    assert result.returncode == 0, result.stderr
    assert "celery-kit/dev in eu-west-1" in result.stdout


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("AWS_REGION", "no AWS region: set AWS_REGION"),
        ("AWS_ACCESS_KEY_ID", "no AWS credentials"),
        ("AWS_SECRET_ACCESS_KEY", "AWS credentials are unusable"),
        ("TF_VAR_operator_cidr", "no operator CIDR: set OPERATOR_CIDR"),
        ("TF_VAR_key_name", "no EC2 key pair: set KEY_NAME"),
    ],
)
def test_deploy_names_the_missing_setting_before_terraform_runs(tmp_path, missing, message):
    settings = {name: value for name, value in COMPLETE.items() if name != missing}
    result = run("deploy", tmp_path, **settings)
    assert result.returncode == 2
    assert message in result.stderr
    assert "nothing was changed" in result.stderr
    assert "Terraform" not in result.stdout


def test_everything_missing_is_reported_at_once(tmp_path):
    result = run("destroy", tmp_path)
    assert result.returncode == 2
    for message in ("no AWS region", "no AWS credentials", "no operator CIDR", "no EC2 key pair"):
        assert message in result.stderr


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "not-a-cidr", "10.0.0.0/33"])
def test_open_or_malformed_operator_cidr_is_refused(tmp_path, cidr):
    result = run("deploy", tmp_path, **{**COMPLETE, "TF_VAR_operator_cidr": cidr})
    assert result.returncode == 2
    assert "operator CIDR" in result.stderr
    assert "Terraform" not in result.stdout


def test_environment_names_are_checked(tmp_path):
    result = run("deploy", tmp_path, **{**COMPLETE, "TF_VAR_environment": "Prod_1"})
    assert result.returncode == 2
    assert "AWS_ENVIRONMENT='Prod_1'" in result.stderr


def _module():
    from celery_kit import aws  # noqa: PLC0415

    return aws


def test_provision_only_is_an_option_of_deploy_and_exec_passes_everything_on():
    aws_deploy = _module()
    deploy = aws_deploy.parse_arguments(["deploy", "--provision-only"])
    assert (deploy.action, deploy.provision_only) == ("deploy", True)
    command = aws_deploy.parse_arguments(["exec", "ansible-playbook", "-i", "inventories/aws", "--provision-only"])
    assert command.action == "exec"
    assert command.command == ["ansible-playbook", "-i", "inventories/aws", "--provision-only"]


def _instance(key: str, role: str, actions: list[str]) -> dict:
    name = f"celery-kit-dev-{key}"
    return {
        "address": f'aws_instance.host["{key}"]',
        "type": "aws_instance",
        "change": {
            "actions": actions,
            "before": {"tags": {"Name": name, "Role": role}} if actions != ["create"] else None,
            "after": {"tags": {"Name": name, "Role": role}} if actions != ["delete"] else None,
        },
    }


def test_the_rabbitmq_nodes_a_plan_removes_or_replaces_leave_the_cluster_first():
    # 5 -> 3 nodes removes rabbitmq-4 and -5; a replaced node leaves too; a
    # removed worker or a new node is none of its business.
    plan = {
        "resource_changes": [
            _instance("rabbitmq-1", "rabbitmq", ["no-op"]),
            _instance("rabbitmq-2", "rabbitmq", ["delete", "create"]),
            _instance("rabbitmq-4", "rabbitmq", ["delete"]),
            _instance("rabbitmq-5", "rabbitmq", ["delete"]),
            _instance("rabbitmq-6", "rabbitmq", ["create"]),
            _instance("workers-3", "workers", ["delete"]),
        ]
    }
    assert _module().leaving_brokers(plan) == [
        "celery-kit-dev-rabbitmq-2",
        "celery-kit-dev-rabbitmq-4",
        "celery-kit-dev-rabbitmq-5",
    ]


def _brokers(*actions: list[str]) -> dict:
    return {
        "resource_changes": [_instance(f"rabbitmq-{n}", "rabbitmq", a) for n, a in enumerate(actions, 1)]
        + [_instance("workers-1", "workers", ["delete"])]
    }


def test_a_plan_that_takes_a_cluster_down_to_one_node_is_refused_before_anything_applies():
    refusal = _module().broker_shrink_refusal(_brokers(["no-op"], ["delete"], ["delete"]))
    assert refusal and "from 3 nodes to 1" in refusal
    assert _module().broker_shrink_refusal(_brokers(["no-op"], ["no-op"], ["no-op"], ["delete"], ["delete"])) is None
    assert _module().broker_shrink_refusal(_brokers(["no-op"], ["create"], ["create"])) is None  # 1 -> 3
    assert _module().broker_shrink_refusal(_brokers(["no-op"], ["delete", "create"], ["no-op"])) is None  # replaced
    assert _module().broker_shrink_refusal(_brokers(["no-op"])) is None  # a single node stays one
