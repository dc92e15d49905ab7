"""The aws inventory (inventories/aws) against deployments made by terraform/.

Run by tests/terraform/moto-apply.sh, which applies terraform/ twice into one moto
server (environments "ci" and "other"), runs the tests marked deployed
while ci is up and those marked destroyed after its destroy, and sets:

  KIT_TF_TEST_EXPECT  JSON file: project, environment, vpc_cidr, counts per
                      group, az_count, Terraform's outputs of both
                      deployments
  AWS_ENDPOINT_URL and credentials of the moto server

Nothing here connects to an instance: the inventory is only listed, and the
connection settings are rendered on localhost.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "aws"
GROUPS = ("rabbitmq", "redis", "workers", "api", "monitoring")
BASTION = "198.51.100.10"  # a documentation address: never dialled

if "KIT_TF_TEST_EXPECT" not in os.environ:
    pytest.skip("run by tests/terraform/moto-apply.sh (needs its moto server and deployments)", allow_module_level=True)

EXPECT = json.loads(Path(os.environ["KIT_TF_TEST_EXPECT"]).read_text())
# tests/terraform/moto-apply.sh selects the tests of each stage with -m.
deployed = pytest.mark.deployed
destroyed = pytest.mark.destroyed


def output(name: str, deployment: dict = EXPECT) -> object:
    return deployment["outputs"][name]["value"]


def plain(value: object) -> object:
    """ansible-inventory marks untrusted strings as {"__ansible_unsafe": ...}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def ansible_env(environment: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        KIT_PROJECT=EXPECT["project"],
        KIT_AWS_ENVIRONMENT=environment,
        KIT_BASTION_HOST=BASTION,
        ANSIBLE_DEPRECATION_WARNINGS="false",
    )
    return env


@cache
def inventory(environment: str) -> dict:
    """ansible-inventory --list of the aws inventory for one environment."""
    result = subprocess.run(
        ["ansible-inventory", "-i", str(INVENTORY), "--list"],
        env=ansible_env(environment),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "Failed to parse" not in result.stderr, result.stderr
    return plain(json.loads(result.stdout))


def hosts(listing: dict, group: str = "all") -> set[str]:
    if group == "all":
        return set(listing["_meta"]["hostvars"])
    return set(listing.get(group, {}).get("hosts", []))


@deployed
def test_groups_hold_exactly_the_deployments_hosts():
    listing = inventory(EXPECT["environment"])
    for group in GROUPS:
        assert len(hosts(listing, group)) == EXPECT["counts"][group], (group, hosts(listing, group))
    assert hosts(listing) == set().union(*(hosts(listing, group) for group in GROUPS))
    assert len(hosts(listing)) == sum(EXPECT["counts"].values())


@deployed
def test_worker_groups_are_inventory_groups_that_pools_can_name():
    # other: hosts.workers (1) and worker_groups.reports (2 t3.medium).
    other = EXPECT["other"]
    listing = inventory(other["environment"])
    prefix = f"{EXPECT['project']}-{other['environment']}-"
    assert hosts(listing, "workers_default") == {f"{prefix}workers-1"}
    assert hosts(listing, "workers_reports") == {f"{prefix}workers-reports-1", f"{prefix}workers-reports-2"}
    # They are workers like the others (security group, the workers roles).
    assert hosts(listing, "workers") == hosts(listing, "workers_default") | hosts(listing, "workers_reports")
    hostvars = listing["_meta"]["hostvars"]
    assert {hostvars[host]["ec2_instance_type"] for host in hosts(listing, "workers_reports")} == {"t3.medium"}
    # No other host is in a workers_ group.
    worker_groups = [group for group in listing if group.startswith("workers_")]
    assert sorted(worker_groups) == ["workers_default", "workers_reports"]


@deployed
def test_a_deployment_without_monitoring_has_no_monitoring_host():
    # other: hosts.monitoring.count = 0.
    other = EXPECT["other"]
    assert hosts(inventory(other["environment"]), "monitoring") == set()
    assert output("private_ips", other)["monitoring"] == []
    assert len(hosts(inventory(EXPECT["environment"]), "monitoring")) == 1


@deployed
def test_hosts_are_named_by_their_name_tag():
    listing = inventory(EXPECT["environment"])
    prefix = f"{EXPECT['project']}-{EXPECT['environment']}-"
    for group in GROUPS:
        expected = {f"{prefix}{group}-{index}" for index in range(1, EXPECT["counts"][group] + 1)}
        assert hosts(listing, group) == expected


@deployed
def test_each_group_takes_turns_over_the_availability_zones():
    """The rabbitmq nodes (3 by default) each in a zone of their own, so the
    cluster keeps a majority when a zone is lost; the other groups spread too."""
    listing = inventory(EXPECT["environment"])
    hostvars = listing["_meta"]["hostvars"]
    zones = {}
    for group in GROUPS:
        zones[group] = [hostvars[host]["ec2_placement"]["availability_zone"] for host in sorted(hosts(listing, group))]
        assert len(set(zones[group])) == min(EXPECT["counts"][group], EXPECT["az_count"]), (group, zones[group])
    assert len(set(zones["rabbitmq"])) == len(zones["rabbitmq"]) == EXPECT["counts"]["rabbitmq"] >= 3, zones["rabbitmq"]
    assert len(set().union(*map(set, zones.values()))) == EXPECT["az_count"], zones


@deployed
def test_the_bastion_is_no_inventory_host():
    listing = inventory(EXPECT["environment"])
    roles = {listing["_meta"]["hostvars"][host]["ec2_tags"]["Role"] for host in hosts(listing)}
    assert roles == set(GROUPS)
    assert "bastion" not in listing


@deployed
def test_another_environment_stays_out():
    listing = inventory(EXPECT["environment"])
    hostvars = listing["_meta"]["hostvars"]
    other = EXPECT["other"]
    assert not {hostvars[host]["ec2_instance_id"] for host in hostvars} & set(output("instance_ids", other))
    assert {hostvars[host]["ec2_tags"]["Environment"] for host in hostvars} == {EXPECT["environment"]}
    assert {hostvars[host]["ec2_tags"]["Project"] for host in hostvars} == {EXPECT["project"]}
    # ...and the other deployment is there, in its own inventory.
    other_listing = inventory(other["environment"])
    assert hosts(other_listing, "workers")
    assert not hosts(other_listing) & hosts(listing)


@deployed
def test_ansible_host_is_the_private_address():
    listing = inventory(EXPECT["environment"])
    hostvars = listing["_meta"]["hostvars"]
    vpc = ipaddress.ip_network(EXPECT["vpc_cidr"])
    public = set(output("api_public_ips")) | {output("bastion_public_ip")}
    public |= {hostvars[host].get("ec2_public_ip_address") for host in hostvars} - {None}
    assert output("api_public_ips"), "the api hosts have public addresses: the test would prove nothing"
    for host, variables in hostvars.items():
        address = variables["ansible_host"]
        assert address == variables["ec2_private_ip_address"], host
        assert ipaddress.ip_address(address) in vpc, (host, address)
        assert address not in public, (host, address)
    for group in GROUPS:
        addresses = {hostvars[host]["ansible_host"] for host in hosts(listing, group)}
        assert addresses == set(output("private_ips")[group]), group


@deployed
def test_connection_goes_through_the_bastion():
    """Render the connection variables on localhost; no host is contacted."""
    listing = inventory(EXPECT["environment"])
    host = sorted(hosts(listing, "workers"))[0]
    names = ["ansible_user", "ansible_ssh_common_args", "kit_environment", "redis_set_overcommit_memory"]
    expression = "{{ dict(names | zip(names | map('extract', hostvars[host]))) | to_json }}"
    result = subprocess.run(
        [
            "ansible",
            "localhost",
            "-i",
            str(INVENTORY),
            "-m",
            "ansible.builtin.debug",
            "-a",
            f"msg={expression}",
            "-e",
            json.dumps({"names": names, "host": host}),
            "-o",
        ],
        env=ansible_env(EXPECT["environment"]),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = json.loads(result.stdout.split("=>", 1)[1])["msg"]
    if isinstance(rendered, str):
        rendered = json.loads(rendered)
    kit_environment = f"aws-{EXPECT['project']}-{EXPECT['environment']}"
    assert rendered["kit_environment"] == kit_environment
    assert rendered["ansible_user"] == "admin"
    assert rendered["redis_set_overcommit_memory"] is True
    args = rendered["ansible_ssh_common_args"]
    assert f"-W %h:%p admin@{BASTION}" in args
    assert f"UserKnownHostsFile={ROOT}/.state/{kit_environment}/known_hosts" in args


@destroyed
def test_inventory_is_empty_after_destroy():
    listing = inventory(EXPECT["environment"])
    assert hosts(listing) == set()
    for group in GROUPS:
        assert not hosts(listing, group)


@destroyed
def test_destroy_left_the_other_environment_alone():
    other = EXPECT["other"]
    hostvars = inventory(other["environment"])["_meta"]["hostvars"]
    host_ids = output("instance_ids", other)[:-1]  # the hosts, then the bastion (terraform/outputs.tf)
    assert {variables["ec2_instance_id"] for variables in hostvars.values()} == set(host_ids)
