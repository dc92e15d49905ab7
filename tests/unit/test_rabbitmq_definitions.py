"""The rabbitmq role decides from the broker's definitions what it still has
to declare (roles/rabbitmq/filter_plugins/definitions.py): a redeploy that
changes nothing declares nothing, and anything missing or different is
declared, or refused when RabbitMQ cannot change it in place."""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_run import run_playbook

from celery_kit.topology import build_queues

ROOT = Path(__file__).resolve().parents[2]
VHOST = "/celery"
KIT_QUEUES = yaml.safe_load((ROOT / "playbooks/group_vars/all/kit.yml").read_text())["kit_sample_queues"]

_spec = importlib.util.spec_from_file_location("definitions", ROOT / "roles/rabbitmq/filter_plugins/definitions.py")
definitions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(definitions)

# A user RabbitMQ 4.0.5 created with `rabbitmqctl add_user fixture 'correct
# horse'`, as GET /api/definitions reports it.
RABBITMQ_USER = {
    "name": "fixture",
    "password_hash": "ROIlmKmogKpFwrzMnaIJTzgw07tMA91YD1FR+YnUNoewCuoZ",
    "hashing_algorithm": "rabbit_password_hashing_sha256",
    "tags": [],
    "limits": {},
}


def broker_with(users=(), permissions=()) -> dict[str, Any]:
    return {"users": list(users), "permissions": list(permissions)}


def full_rights(user: str) -> dict[str, str]:
    return {"user": user, "vhost": VHOST, "configure": ".*", "write": ".*", "read": ".*"}


def test_the_password_hash_rabbitmq_stored_is_recognised():
    assert definitions.password_matches(
        RABBITMQ_USER["password_hash"], "correct horse", RABBITMQ_USER["hashing_algorithm"]
    )
    assert not definitions.password_matches(
        RABBITMQ_USER["password_hash"], "correct horse!", RABBITMQ_USER["hashing_algorithm"]
    )
    assert not definitions.password_matches(RABBITMQ_USER["password_hash"], "correct horse", "unknown")
    assert not definitions.password_matches("not base64!", "correct horse", RABBITMQ_USER["hashing_algorithm"])


def test_a_sha512_hash_is_recognised_too():
    salt = b"\x01\x02\x03\x04"
    stored = base64.b64encode(salt + hashlib.sha512(salt + b"pw").digest()).decode()
    assert definitions.password_matches(stored, "pw", "rabbit_password_hashing_sha512")


FULL = {"vhost": VHOST, "configure_priv": ".*", "write_priv": ".*", "read_priv": ".*"}
PUBLISH_ONLY = {
    "vhost": VHOST,
    "configure_priv": "^$",
    "write_priv": "^(tasks|celery_delayed_[0-9]+)$",
    "read_priv": "^$",
}
FIXTURE_PASSWORD = "correct horse"  # noqa: S105 (RABBITMQ_USER's, a test fixture)


def user(tags=(), permissions=None) -> dict[str, Any]:
    return {"name": "fixture", "tags": list(tags), "permissions": permissions}


def granted(permissions: dict[str, str]) -> dict[str, str]:
    """A permission as GET /api/definitions reports it."""
    return {
        "user": "fixture",
        "vhost": permissions["vhost"],
        "configure": permissions["configure_priv"],
        "write": permissions["write_priv"],
        "read": permissions["read_priv"],
    }


def in_place(broker, wanted, password=FIXTURE_PASSWORD) -> bool:
    return definitions.users_not_in_place(broker, [wanted], {"fixture": password}) == []


def test_a_user_in_place_needs_its_password_tags_and_rights():
    broker = broker_with([RABBITMQ_USER], [full_rights("fixture")])
    assert in_place(broker, user(permissions=FULL))
    assert not in_place(broker, user(permissions=FULL), "another password")
    assert not in_place(broker, user(["administrator"], FULL))
    someone = dict(user(permissions=FULL), name="someone")
    assert definitions.users_not_in_place(broker, [someone], {"someone": "correct horse"}) == [someone]
    assert not in_place(broker, user(permissions=dict(FULL, vhost="/other")))
    read_only = broker_with([RABBITMQ_USER], [dict(full_rights("fixture"), write="^$")])
    assert not in_place(read_only, user(permissions=FULL))
    # Nothing read (the administrator could not log in): declare everything.
    assert not in_place({}, user(permissions=FULL))


def test_the_users_not_in_place_are_returned_without_their_passwords():
    broker = broker_with([RABBITMQ_USER], [full_rights("fixture")])
    other = dict(user(permissions=FULL), name="other")
    passwords = {"fixture": "first-secret", "other": "second-secret"}
    missing = definitions.users_not_in_place(broker, [user(permissions=FULL), other], passwords)
    assert missing == [user(permissions=FULL), other]
    assert not any(password in json.dumps(missing) for password in passwords.values())


def test_the_publisher_user_is_in_place_only_with_exactly_its_rights():
    broker = broker_with([RABBITMQ_USER], [granted(PUBLISH_ONLY)])
    assert in_place(broker, user(permissions=PUBLISH_ONLY))
    # Full rights are not the publisher's: the role narrows them again.
    assert not in_place(broker_with([RABBITMQ_USER], [full_rights("fixture")]), user(permissions=PUBLISH_ONLY))
    assert not in_place(broker, user(permissions=FULL))


def test_a_user_without_rights_is_in_place_only_with_none_on_any_vhost():
    # The administrator: the management interface only.
    admin = dict(RABBITMQ_USER, tags=["administrator"])
    assert in_place(broker_with([admin]), user(["administrator"]))
    assert not in_place(broker_with([admin], [full_rights("fixture")]), user(["administrator"]))
    nothing_allowed = {"vhost": "/other", "configure_priv": "^$", "write_priv": "^$", "read_priv": "^$"}
    assert not in_place(broker_with([admin], [granted(nothing_allowed)]), user(["administrator"]))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Any]:
    rendered = tmp_path_factory.mktemp("role") / "rendered.json"
    result = run_playbook(
        "tests/unit/playbooks/render-rabbitmq-vars.yml", {"rendered_file": str(rendered), "rabbitmq_queues": KIT_QUEUES}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(rendered.read_text())


@pytest.fixture(scope="module")
def topology(rendered) -> dict[str, Any]:
    return rendered["topology"]


def matches(permissions: dict[str, str], right: str, name: str) -> bool:
    return re.fullmatch(permissions[f"{right}_priv"], name) is not None


def test_the_mover_may_read_and_publish_the_apps_messages_and_declare_nothing(rendered):
    mover = rendered["mover_permissions"]
    queues = [queue["name"] for queue in KIT_QUEUES]
    # basic.get and queue.purge need read on the queue; basic.publish write
    # on the exchange (the default exchange is amq.default).
    for name in [*queues, "dead-letter", "celery_delayed_0", "celery_delayed_27"]:
        assert matches(mover, "read", name), name
    for name in ["tasks", "amq.default", "celery_delayed_27"]:
        assert matches(mover, "write", name), name
    for name in ["celery-kit-bench", "amq.rabbitmq.trace", "tasks2", "celery_delayed_x", "celery.pidbox"]:
        assert not matches(mover, "read", name) and not matches(mover, "write", name), name
    # queue.bind needs write on the queue: no app queue is writable.
    assert not any(matches(mover, "write", name) for name in [*queues, "dead-letter"])
    assert not any(matches(mover, "configure", name) for name in [*queues, "tasks", "x"])


def test_the_publisher_may_publish_to_the_apps_exchanges_only(rendered):
    publisher = rendered["publisher_permissions"]
    assert matches(publisher, "write", "tasks") and matches(publisher, "write", "celery_delayed_27")
    assert not matches(publisher, "write", "amq.default")
    assert not any(matches(publisher, right, "default") for right in ("configure", "read"))


def exported(topology: dict[str, Any], vhost: str = VHOST) -> dict[str, Any]:
    """The topology as GET /api/definitions reports it once declared."""
    broker = {kind: [dict(item, vhost=vhost) for item in items] for kind, items in copy.deepcopy(topology).items()}
    for policy in broker["policies"]:  # the broker reports numbers as numbers
        policy["priority"] = int(policy["priority"])
        policy["definition"] = {
            key: int(value) if str(value).lstrip("-").isdigit() else value
            for key, value in policy["definition"].items()
        }
    return broker


def nothing(diff: dict[str, Any]) -> bool:
    return not diff["conflicts"] and not any(diff["missing"].values())


def test_a_broker_that_has_everything_gets_nothing_declared(topology):
    assert nothing(definitions.definitions_diff(topology, exported(topology), VHOST))


def test_an_empty_vhost_gets_everything(topology):
    diff = definitions.definitions_diff(topology, exported(topology, "/other"), VHOST)
    assert diff["missing"] == topology
    assert diff["conflicts"] == []


def test_only_what_is_missing_is_declared(topology):
    broker = exported(topology)
    broker["queues"] = [q for q in broker["queues"] if q["name"] != "emails"]
    broker["bindings"] = [b for b in broker["bindings"] if b["destination"] != "emails"]
    diff = definitions.definitions_diff(topology, broker, VHOST)
    assert [q["name"] for q in diff["missing"]["queues"]] == ["emails"]
    assert {(b["source"], b["destination"]) for b in diff["missing"]["bindings"]} == {("tasks", "emails")}
    assert diff["missing"]["exchanges"] == diff["missing"]["policies"] == []


def test_a_policy_changed_by_hand_is_put_back(topology):
    broker = exported(topology)
    broker["policies"][0]["definition"]["delivery-limit"] = 5
    diff = definitions.definitions_diff(topology, broker, VHOST)
    assert [p["name"] for p in diff["missing"]["policies"]] == [topology["policies"][0]["name"]]


def test_a_queue_with_other_arguments_is_refused_by_name(topology):
    broker = exported(topology)
    emails = next(q for q in broker["queues"] if q["name"] == "emails")
    emails["arguments"] = {}  # declared classic by somebody else
    diff = definitions.definitions_diff(topology, broker, VHOST)
    assert len(diff["conflicts"]) == 1
    assert "queue emails" in diff["conflicts"][0]
    assert diff["missing"]["queues"] == []


def test_an_exchange_of_another_type_is_refused_by_name(topology):
    broker = exported(topology)
    next(e for e in broker["exchanges"] if e["name"] == "tasks")["type"] = "direct"
    diff = definitions.definitions_diff(topology, broker, VHOST)
    assert ["exchange tasks" in c for c in diff["conflicts"]] == [True]


def test_the_role_declares_the_app_queues_as_celery_declares_them(topology):
    # A worker redeclares its queues at start; other arguments would make
    # RabbitMQ refuse it (PRECONDITION_FAILED).
    declared = {q["name"]: q["arguments"] for q in topology["queues"]}
    for queue in build_queues(KIT_QUEUES):
        assert declared[queue.name] == (queue.queue_arguments or {})
