#!/usr/bin/env python3
"""make deploy ENV=aws and make destroy ENV=aws.

deploy: check the settings, terraform init and plan, apply after the user
confirmed (or AUTO_APPROVE=1), wait until every instance passes its EC2
status checks (a boto3 waiter), then run site.yml and summary.yml over SSH
through the bastion, with the inventory plugin reading the same tags. When
the plan removes RabbitMQ nodes (a lower count, a replaced instance), they
leave the cluster first (drained, their queue members moved, forgotten),
one at a time, before Terraform terminates them.

destroy: check the settings, show what terraform would destroy, destroy
after confirmation, then remove the deployment's generated secrets (here
and in SSM).

deploy and exec share the deployment's state directory (its secrets and
records) through SSM Parameter Store (celery_kit.shared_state): pulled
before anything runs, pushed after, so a second operator deploys with the
same secrets.

exec COMMAND...: run a command (make verify, status, migrate) with the
environment the aws inventory reads (region, tags, bastion address).

The settings come from the environment (the Makefile exports them) and from
terraform/terraform.tfvars, Terraform's own settings file:

  AWS_REGION (or AWS_DEFAULT_REGION, or the profile's region)
  AWS credentials: anything boto3 and the AWS provider accept
  OPERATOR_CIDR or operator_cidr in terraform.tfvars
  KEY_NAME or key_name in terraform.tfvars
  AWS_ENVIRONMENT (default dev): Environment tag and Terraform workspace
  PROJECT (default celery-kit): Project tag

Every missing or wrong setting is reported before Terraform runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions

from celery_kit import shared_state

# The repository (the kit runs these on the controller, from its checkout).
ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = [str(ROOT / "scripts" / "terraform.sh")]
TFVARS = ROOT / "terraform" / "terraform.tfvars"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,20}$")
# make exports the -e arguments of the settings given on its command line.
SETTINGS_ENV = "KIT_ANSIBLE_SETTINGS"
WAIT_DELAY_SECONDS = 15
WAIT_MAX_ATTEMPTS = 40


class SettingsError(Exception):
    """A setting is missing or wrong; nothing has been changed."""


@dataclass(frozen=True)
class Settings:
    region: str
    environment: str
    project: str

    @property
    def kit_environment(self) -> str:
        """Name of the deployment's state directory (.state/<name>)."""
        return f"aws-{self.project}-{self.environment}"


def state_dir(settings: Settings) -> Path:
    """The deployment's state directory on this controller."""
    return ROOT / ".state" / settings.kit_environment


def tfvars_value(name: str, text: str) -> str | None:
    """A string variable from terraform.tfvars (name = "value" lines)."""
    match = re.search(rf'^\s*{re.escape(name)}\s*=\s*"([^"]*)"', text, re.MULTILINE)
    return match.group(1) if match else None


def check_operator_cidr(value: str) -> None:
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise SettingsError(f"operator CIDR {value!r} is not a CIDR such as 203.0.113.7/32") from None
    if network.prefixlen == 0:
        raise SettingsError(
            f"operator CIDR {value} would open SSH and the API to the whole internet; "
            "give your own address range, e.g. your public address with /32"
        )


def read_settings(environ: dict[str, str], tfvars_text: str, boto3_session) -> Settings:
    """Check every setting; raise SettingsError naming the first problem."""
    problems = []
    # terraform.tfvars wins over TF_VAR_* variables, as in Terraform.
    region = (
        tfvars_value("region", tfvars_text)
        or environ.get("AWS_REGION")
        or environ.get("AWS_DEFAULT_REGION")
        or boto3_session.region_name
    )
    if not region:
        problems.append("no AWS region: set AWS_REGION (e.g. make deploy ENV=aws AWS_REGION=eu-west-1)")
    try:
        credentials = boto3_session.get_credentials()
    except botocore.exceptions.BotoCoreError as error:
        problems.append(f"the AWS credentials are unusable: {error}")
        credentials = True
    if credentials is None:
        problems.append(
            "no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or run aws configure / aws sso login"
        )
    operator_cidr = tfvars_value("operator_cidr", tfvars_text) or environ.get("TF_VAR_operator_cidr")
    if not operator_cidr:
        problems.append(
            "no operator CIDR: set OPERATOR_CIDR to the address range allowed to reach SSH and the API "
            "(e.g. OPERATOR_CIDR=203.0.113.7/32), or operator_cidr in terraform/terraform.tfvars"
        )
    else:
        try:
            check_operator_cidr(operator_cidr)
        except SettingsError as error:
            problems.append(str(error))
    if not (tfvars_value("key_name", tfvars_text) or environ.get("TF_VAR_key_name")):
        problems.append(
            "no EC2 key pair: set KEY_NAME to the name of a key pair in the region whose private key "
            "your ssh-agent (or SSH_KEY) holds, or key_name in terraform/terraform.tfvars"
        )
    environment = tfvars_value("environment", tfvars_text) or environ.get("TF_VAR_environment") or "dev"
    project = tfvars_value("project", tfvars_text) or environ.get("TF_VAR_project") or "celery-kit"
    for label, value in (("AWS_ENVIRONMENT", environment), ("PROJECT", project)):
        if not NAME_PATTERN.match(value):
            problems.append(f"{label}={value!r}: use lower-case letters, digits and dashes, starting with a letter")
    if problems:
        raise SettingsError("\n".join(f"  - {problem}" for problem in problems))
    return Settings(region=region, environment=environment, project=project)


def step(message: str) -> None:
    print(f"\n=== {message}", flush=True)


def run(command: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=ROOT, check=check)


def terraform_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TF_VAR_region=settings.region,
        TF_VAR_environment=settings.environment,
        TF_VAR_project=settings.project,
        TF_IN_AUTOMATION="1",
    )
    # TLS as the deployment recorded it (playbooks/tasks/controller.yml),
    # unless make was given TLS=: the security groups open the ports in use.
    record = state_dir(settings) / "tls"
    if "TF_VAR_tls" not in env and record.exists():
        env["TF_VAR_tls"] = "false" if record.read_text().strip() == "off" else "true"
    return env


def select_workspace(settings: Settings, env: dict[str, str]) -> None:
    """One Terraform workspace (and state) per environment."""
    run([*TERRAFORM, "init", "-input=false"], env)
    run([*TERRAFORM, "workspace", "select", "-or-create=true", settings.environment], env)


def confirmed(question: str, auto_approve: bool) -> bool:
    if auto_approve:
        print(f"{question} yes (AUTO_APPROVE=1)")
        return True
    if not sys.stdin.isatty():
        raise SettingsError(f"{question} needs an answer: run in a terminal, or set AUTO_APPROVE=1")
    return input(f"{question} Type yes to go on: ").strip() == "yes"


def terraform_outputs(env: dict[str, str]) -> dict:
    output = subprocess.run(
        [*TERRAFORM, "output", "-json"], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return {name: value["value"] for name, value in json.loads(output).items()}


def wait_for_status_checks(instance_ids: list[str], region: str) -> None:
    """Block until every instance passes both EC2 status checks."""
    step(f"Waiting for {len(instance_ids)} instances to pass their status checks")
    waiter = boto3.client("ec2", region_name=region).get_waiter("instance_status_ok")
    waiter.wait(
        InstanceIds=instance_ids,
        IncludeAllInstances=True,
        WaiterConfig={"Delay": WAIT_DELAY_SECONDS, "MaxAttempts": WAIT_MAX_ATTEMPTS},
    )
    print("all instances passed their status checks")


def ansible_env(settings: Settings, outputs: dict) -> dict[str, str]:
    env = dict(os.environ)
    # ssh pins the bastion's host key in the deployment's state directory.
    state_dir(settings).mkdir(mode=0o700, parents=True, exist_ok=True)
    env.update(
        # An inventory that cannot be read is an error, not an empty list.
        ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
        AWS_REGION=settings.region,
        KIT_PROJECT=settings.project,
        KIT_AWS_ENVIRONMENT=settings.environment,
        KIT_BASTION_HOST=outputs["bastion_public_ip"],
    )
    return env


def leaving_brokers(plan: dict) -> list[str]:
    """Inventory names (tag Name) of the RabbitMQ instances a Terraform plan removes or replaces."""
    names = []
    for change in plan.get("resource_changes", []):
        before = change.get("change", {}).get("before") or {}
        tags = before.get("tags") or {}
        if (
            change.get("type") == "aws_instance"
            and "delete" in change["change"]["actions"]
            and tags.get("Role") == "rabbitmq"
        ):
            names.append(tags["Name"])
    return sorted(names)


def _role(change: dict) -> str | None:
    state = change.get("change", {}).get("before") or change.get("change", {}).get("after") or {}
    return (state.get("tags") or {}).get("Role")


def broker_shrink_refusal(plan: dict) -> str | None:
    """Why the plan must not run when it takes a cluster of 3 or more nodes
    down to one: the nodes leave one at a time, and with 2 left every quorum
    queue they share stops when the second leaves."""
    brokers = [
        change["change"]["actions"]
        for change in plan.get("resource_changes", [])
        if change.get("type") == "aws_instance" and _role(change) == "rabbitmq"
    ]
    now = sum(1 for actions in brokers if actions != ["create"])
    after = sum(1 for actions in brokers if actions != ["delete"])
    if now >= 3 and after == 1:
        return (
            f"the plan takes the RabbitMQ cluster from {now} nodes to 1: the nodes leave one at a time, "
            "and with 2 left every quorum queue stops when the second leaves. Keep hosts.rabbitmq.count "
            "at 3 or more; to run on one node, deploy another environment and move the tasks to it."
        )
    return None


def shown_plan(env: dict[str, str], plan_file: Path) -> dict:
    shown = subprocess.run(
        [*TERRAFORM, "show", "-json", str(plan_file)], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(shown.stdout)


def let_brokers_leave(settings: Settings, env: dict[str, str], plan: dict) -> None:
    """Drain and forget the RabbitMQ nodes the plan removes, while they still run."""
    leaving = leaving_brokers(plan)
    if not leaving:
        return
    step(f"RabbitMQ: {', '.join(leaving)} leave the cluster before Terraform removes them")
    ansible = ansible_env(settings, terraform_outputs(env))
    extra = json.dumps({"rabbitmq_leaving": leaving})
    run(["ansible-playbook", "-i", "inventories/aws", "-e", extra, "playbooks/rabbitmq-leave.yml"], ansible)


def ssm_client(settings: Settings) -> Any:
    return boto3.client("ssm", region_name=settings.region)


def ssm_prefix(settings: Settings) -> str:
    """Where the deployment's shared state lives in SSM."""
    return shared_state.prefix(settings.project, settings.environment)


def pull_state(settings: Settings) -> None:
    """The deployment's shared state, before anything reads it (see celery_kit.shared_state)."""
    name_prefix = ssm_prefix(settings)
    report = shared_state.pull(ssm_client(settings), name_prefix, state_dir(settings))
    step(f"Shared state from SSM {name_prefix}: " + report.summary("files fetched", "removed here, as in SSM"))


def push_state(settings: Settings) -> None:
    """What this run made or deleted in the state directory, shared with the other operators."""
    name_prefix = ssm_prefix(settings)
    report = shared_state.push(ssm_client(settings), name_prefix, state_dir(settings))
    step(f"Shared state to SSM {name_prefix}: " + report.summary("files stored", "deleted"))


def sharing_state(settings: Settings, action: Callable[[], int]) -> int:
    """Run action between a pull and a push of the shared state (pushed also when it failed)."""
    pull_state(settings)
    try:
        return action()
    finally:
        push_state(settings)


def deploy(settings: Settings, auto_approve: bool, provision_only: bool) -> int:
    env = terraform_env(settings)
    step(f"Terraform: workspace {settings.environment} in {settings.region}")
    select_workspace(settings, env)
    plan_file = ROOT / ".cache" / f"aws-{settings.environment}.tfplan"
    plan_file.parent.mkdir(exist_ok=True)
    step("Terraform: plan")
    plan = run(
        [*TERRAFORM, "plan", "-input=false", "-detailed-exitcode", f"-out={plan_file}"],
        env,
        check=False,
    )
    if plan.returncode == 1:
        return 1
    if plan.returncode == 2:
        planned = shown_plan(env, plan_file)
        refusal = broker_shrink_refusal(planned)
        if refusal:
            print(f"celery-kit aws: refused: {refusal} Nothing applied.", file=sys.stderr)
            return 2
        if not confirmed("Apply this plan?", auto_approve):
            print("Nothing applied.")
            return 1
        if not provision_only:
            let_brokers_leave(settings, env, planned)
        step("Terraform: apply")
        run([*TERRAFORM, "apply", "-input=false", str(plan_file)], env)
    else:
        print("The infrastructure matches the configuration; nothing to apply.")
    outputs = terraform_outputs(env)
    wait_for_status_checks(outputs["instance_ids"], settings.region)
    if provision_only:
        return 0
    env = ansible_env(settings, outputs)
    inventory = ["-i", "inventories/aws"]
    # The user's settings from make's command line (BROKER=, APP=, ...): the
    # same -e arguments make passes to the local playbooks.
    settings_args = shlex.split(os.environ.get(SETTINGS_ENV, ""))
    step(f"Ansible: waiting for SSH through the bastion {outputs['bastion_public_ip']}")
    run(["ansible", *inventory, "all", "-m", "ansible.builtin.wait_for_connection", "-a", "timeout=600"], env)
    step("Ansible: site.yml")
    run(["ansible-playbook", *inventory, *settings_args, "playbooks/site.yml"], env)
    run(["ansible-playbook", *inventory, *settings_args, "playbooks/summary.yml"], env)
    return 0


def destroy(settings: Settings, auto_approve: bool) -> int:
    env = terraform_env(settings)
    step(f"Terraform: workspace {settings.environment} in {settings.region}")
    select_workspace(settings, env)
    step("Terraform: what destroy removes")
    plan = run([*TERRAFORM, "plan", "-destroy", "-input=false", "-detailed-exitcode"], env, check=False)
    if plan.returncode == 1:
        return 1
    if plan.returncode == 2:
        if not confirmed(f"Destroy every resource of {settings.project}/{settings.environment}?", auto_approve):
            print("Nothing destroyed.")
            return 1
        run([*TERRAFORM, "apply", "-destroy", "-input=false", "-auto-approve"], env)
    removed = shared_state.remove(ssm_client(settings), ssm_prefix(settings))
    print(f"removed {removed} parameters of the deployment's shared state from SSM")
    directory = state_dir(settings)
    if directory.exists():
        shutil.rmtree(directory)
        print(f"removed {directory.relative_to(ROOT)} (the deployment's generated secrets)")
    return 0


def run_with_inventory_env(settings: Settings, command: list[str]) -> int:
    """Run a command (verify, status, migrate) with the inventory's settings."""
    env = terraform_env(settings)
    subprocess.run([*TERRAFORM, "init", "-input=false"], env=env, cwd=ROOT, check=True, capture_output=True)
    subprocess.run(
        [*TERRAFORM, "workspace", "select", settings.environment], env=env, cwd=ROOT, check=True, capture_output=True
    )
    outputs = terraform_outputs(env)
    if "bastion_public_ip" not in outputs:
        raise SettingsError(f"  - {settings.project}/{settings.environment} is not deployed: run make deploy ENV=aws")
    return subprocess.run(command, env=ansible_env(settings, outputs), cwd=ROOT, check=False).returncode


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The action and its options; after exec, everything is the command."""
    if argv[:1] == ["exec"]:
        return argparse.Namespace(action="exec", provision_only=False, command=argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["check", "deploy", "destroy", "exec"])
    parser.add_argument(
        "--provision-only", action="store_true", help="deploy: Terraform and the status-check wait, no Ansible"
    )
    return parser.parse_args(argv)


def run_action(args: argparse.Namespace, settings: Settings, auto_approve: bool) -> int:
    if args.action == "check":
        return 0
    if args.action == "exec":
        return sharing_state(settings, lambda: run_with_inventory_env(settings, args.command))
    if args.action == "deploy":
        return sharing_state(settings, lambda: deploy(settings, auto_approve, args.provision_only))
    return destroy(settings, auto_approve)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    auto_approve = os.environ.get("AUTO_APPROVE", "") in ("1", "yes", "true")
    try:
        tfvars_text = TFVARS.read_text() if TFVARS.exists() else ""
        settings = read_settings(dict(os.environ), tfvars_text, boto3.Session())
        print(f"AWS deployment {settings.project}/{settings.environment} in {settings.region}")
        return run_action(args, settings, auto_approve)
    except SettingsError as error:
        print(f"error: the AWS settings are incomplete; nothing was changed:\n{error}", file=sys.stderr)
        return 2
    except shared_state.SharedStateError as error:
        print(f"error: the deployment's shared state: {error}", file=sys.stderr)
        return 2
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        print(f"error: AWS refused or did not answer: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"error: {' '.join(error.cmd)} failed (exit {error.returncode})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
