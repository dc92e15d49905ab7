"""Compare what the rabbitmq role declares with the broker's definitions.

The role reads the broker's definitions once (GET /api/definitions) and
decides from them what it still has to do: a deploy that changes nothing
then makes no further call to the broker. Two filters:

- rabbitmq_users_not_in_place: which of these users are missing, or have
  another password (checked against the stored salted hash), other tags or
  other rights?
- rabbitmq_definitions_diff: which exchanges, queues, bindings and policies
  of the desired definitions are missing or differ, and which existing
  queues or exchanges conflict (RabbitMQ cannot change their arguments in
  place).
"""

import base64
import hashlib
import re

HASHES = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}

EVERYTHING = ".*"


def password_matches(password_hash, password, algorithm):
    """True when password_hash (base64 of a 4-byte salt and the digest of
    salt + password, as RabbitMQ's internal backend stores it) is password's."""
    digest = HASHES.get(algorithm)
    if digest is None or not password_hash:
        return False
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return False
    salt, stored = raw[:4], raw[4:]
    return digest(salt + str(password).encode()).digest() == stored


def user_in_place(definitions, user, password):
    """The user (name, tags, permissions) exists with this
    password and these tags, and has its permissions: on the vhost they
    name, exactly the configure_priv, write_priv and read_priv regular
    expressions; with permissions None, none on any vhost."""
    definitions = definitions or {}
    name = user["name"]
    present = next((u for u in definitions.get("users", []) if u.get("name") == name), None)
    if present is None:
        return False
    present_tags = present.get("tags", [])
    if isinstance(present_tags, str):  # RabbitMQ 3.x wrote "a,b"
        present_tags = [tag for tag in present_tags.split(",") if tag]
    tags = user.get("tags") or []
    wanted_tags = [tag for tag in (tags.split(",") if isinstance(tags, str) else tags) if tag]
    if sorted(present_tags) != sorted(wanted_tags):
        return False
    if not password_matches(present.get("password_hash"), password, present.get("hashing_algorithm")):
        return False
    granted = [
        (p.get("vhost"), p.get("configure"), p.get("write"), p.get("read"))
        for p in definitions.get("permissions", [])
        if p.get("user") == name
    ]
    wanted = user.get("permissions")
    if wanted is None:
        return not granted
    return (
        wanted["vhost"],
        wanted.get("configure_priv", EVERYTHING),
        wanted.get("write_priv", EVERYTHING),
        wanted.get("read_priv", EVERYTHING),
    ) in granted


def users_not_in_place(definitions, users, passwords):
    """The users (see user_in_place; passwords by name) missing or different."""
    return [user for user in users if not user_in_place(definitions, user, passwords[user["name"]])]


def _normal(value):
    """Arguments, policy definitions and priorities as the broker reports
    them: numbers that templating turned into strings are numbers again."""
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normal(item) for item in value]
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    return value


def _binding_key(binding):
    return (
        binding["source"],
        binding["destination"],
        binding["destination_type"],
        binding.get("routing_key", ""),
    )


def definitions_diff(desired, present, vhost):
    """What of desired (definitions without vhost fields) the broker's
    definitions (present, all vhosts) lack on vhost.

    Returns {"missing": {exchanges, queues, bindings, policies}, "conflicts":
    [sentences]}. A policy that differs counts as missing (importing it
    replaces it); a queue or exchange that exists with other properties is
    a conflict, since redeclaring it would fail.
    """
    desired = desired or {}
    present = present or {}

    def on_vhost(kind):
        return [item for item in present.get(kind, []) if item.get("vhost") == vhost]

    missing = {"exchanges": [], "queues": [], "bindings": [], "policies": []}
    conflicts = []

    exchanges = {e["name"]: e for e in on_vhost("exchanges")}
    for exchange in desired.get("exchanges", []):
        found = exchanges.get(exchange["name"])
        if found is None:
            missing["exchanges"].append(exchange)
        elif (found.get("type"), found.get("durable")) != (exchange.get("type"), exchange.get("durable", True)):
            conflicts.append(
                f"exchange {exchange['name']} exists as {found.get('type')} "
                f"(durable: {found.get('durable')}); the deployment declares it "
                f"{exchange.get('type')} (durable: {exchange.get('durable', True)})"
            )

    queues = {q["name"]: q for q in on_vhost("queues")}
    for queue in desired.get("queues", []):
        found = queues.get(queue["name"])
        if found is None:
            missing["queues"].append(queue)
        elif (_normal(found.get("arguments", {})), found.get("durable")) != (
            _normal(queue.get("arguments", {})),
            queue.get("durable", True),
        ):
            conflicts.append(
                f"queue {queue['name']} exists with arguments {found.get('arguments', {})}; "
                f"the deployment declares it with {queue.get('arguments', {})}"
            )

    bindings = {_binding_key(b) for b in on_vhost("bindings")}
    missing["bindings"] = [b for b in desired.get("bindings", []) if _binding_key(b) not in bindings]

    policies = {p["name"]: p for p in on_vhost("policies")}
    fields = ("pattern", "apply-to", "definition", "priority")
    for policy in desired.get("policies", []):
        found = policies.get(policy["name"])
        if found is None or any(_normal(found.get(f)) != _normal(policy.get(f)) for f in fields):
            missing["policies"].append(policy)

    return {"missing": missing, "conflicts": conflicts}


class FilterModule:
    def filters(self):
        return {
            "rabbitmq_users_not_in_place": users_not_in_place,
            "rabbitmq_definitions_diff": definitions_diff,
        }
