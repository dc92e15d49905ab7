"""A deployment's state directory shared through AWS SSM Parameter Store (ENV=aws).

The kit generates a deployment's secrets on the controller, in
.state/<env>/ (the passwords, the Erlang cookie, the CA and its key, the
API tokens), next to what it records about the deployment (the broker, the
TLS choice, the hosts' keys). On AWS every file of that directory is also
kept as a SecureString parameter (encrypted with the account's key for SSM,
alias/aws/ssm) under

    /<project>/<environment>/state/<path in the directory>

so that every operator of the deployment, on any controller, deploys with
the same secrets. A parameter's value is "=" and the file's contents (SSM
takes no empty value; a file may be empty). celery-kit aws pulls before it
runs anything (Terraform, a playbook) and pushes after, whether the
command passed or not:

- pull writes every parameter's file that is missing here (mode 0600) and
  removes a file that another operator deleted (a revoked API token): one
  that was shared before (it is in the directory's manifest, .shared) but
  is no longer in SSM. A file that is here and in SSM with other contents
  is refused, naming the file, never its contents, and nothing is changed:
  two controllers made different secrets, and which ones the hosts use is
  for a person to decide.
- push writes every file whose parameter is missing or differs, and
  deletes the parameters of files deleted here since the pull.
- remove (make destroy ENV=aws) deletes every parameter of the deployment.

The values travel between boto3 and the files only; nothing prints them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A standard parameter holds 4 KB; a larger file (a long known_hosts) is an
# advanced one (8 KB, a small monthly charge).
STANDARD_LIMIT = 4096
ADVANCED_LIMIT = 8192
MANIFEST = ".shared"
# Files of the state directory that are not shared: the manifest itself,
# and editors' and tools' leftovers.
NOT_SHARED_SUFFIXES = (".lock", ".tmp", "~")
# What a parameter's name may hold (SSM's own rule, and "/" between levels).
SHAREABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
VALUE_MARK = "="


class SharedStateError(RuntimeError):
    """The state directory and SSM disagree, or SSM refused; nothing was changed here."""


def prefix(project: str, environment: str) -> str:
    return f"/{project}/{environment}/state/"


@dataclass
class Report:
    written: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def summary(self, verb_written: str, verb_removed: str) -> str:
        parts = []
        if self.written:
            parts.append(f"{len(self.written)} {verb_written}")
        if self.removed:
            parts.append(f"{len(self.removed)} {verb_removed} ({', '.join(sorted(self.removed))})")
        return ", ".join(parts) or "nothing to do"


def local_files(state_dir: Path) -> dict[str, str]:
    """Every shared file of the directory, by its path in it, with its contents."""
    files = {}
    if not state_dir.is_dir():
        return files
    for path in sorted(state_dir.rglob("*")):
        relative = path.relative_to(state_dir).as_posix()
        if not path.is_file() or relative == MANIFEST or relative.endswith(NOT_SHARED_SUFFIXES):
            continue
        if not SHAREABLE_NAME.match(relative):
            raise SharedStateError(f"{path} cannot be shared through SSM: its name holds other than A-Z a-z 0-9 _ . -")
        try:
            files[relative] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise SharedStateError(f"{path} is not text, and cannot be shared through SSM") from error
    return files


def shared_files(client: Any, name_prefix: str) -> dict[str, str]:
    """Every parameter under the prefix, decrypted, by its path in the state directory."""
    files = {}
    paginator = client.get_paginator("get_parameters_by_path")
    for page in paginator.paginate(Path=name_prefix, Recursive=True, WithDecryption=True):
        for parameter in page["Parameters"]:
            value = parameter["Value"]
            if not value.startswith(VALUE_MARK):
                raise SharedStateError(f"{parameter['Name']} was not written by celery-kit (its value lacks the mark)")
            files[parameter["Name"][len(name_prefix) :]] = value[len(VALUE_MARK) :]
    return files


def _manifest(state_dir: Path) -> set[str]:
    path = state_dir / MANIFEST
    return set(json.loads(path.read_text())) if path.exists() else set()


def _write_manifest(state_dir: Path, names: set[str]) -> None:
    path = state_dir / MANIFEST
    path.write_text(json.dumps(sorted(names), indent=1) + "\n")
    path.chmod(0o600)


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value)


def pull(client: Any, name_prefix: str, state_dir: Path) -> Report:
    """Bring the shared files here (see the module's docstring); refuse when one differs."""
    shared = shared_files(client, name_prefix)
    here = local_files(state_dir)
    differing = sorted(name for name in shared.keys() & here.keys() if shared[name] != here[name])
    if differing:
        raise SharedStateError(
            f"{', '.join(differing)} in {state_dir} differ from the deployment's shared copies in SSM"
            f" ({name_prefix}): another controller made them. Nothing was changed. To use the shared ones"
            f" (those the hosts got from the deployment that wrote them), delete these files here and"
            f" run again; to keep yours instead, delete their parameters in SSM first."
        )
    report = Report()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in sorted(shared.keys() - here.keys()):
        _write_secret(state_dir / name, shared[name])
        report.written.append(name)
    for name in sorted((_manifest(state_dir) & here.keys()) - shared.keys()):
        (state_dir / name).unlink()
        report.removed.append(name)
    _write_manifest(state_dir, set(shared))
    return report


def push(client: Any, name_prefix: str, state_dir: Path) -> Report:
    """Share the files made or changed here, and forget the ones deleted here since the pull."""
    shared = shared_files(client, name_prefix)
    here = local_files(state_dir)
    report = Report()
    for name in sorted(here):
        if shared.get(name) == here[name]:
            continue
        value = VALUE_MARK + here[name]
        size = len(value.encode("utf-8"))
        if size > ADVANCED_LIMIT:
            raise SharedStateError(f"{name} in {state_dir} is {size} bytes, more than SSM holds ({ADVANCED_LIMIT})")
        client.put_parameter(
            Name=name_prefix + name,
            Value=value,
            Type="SecureString",
            Overwrite=True,
            Tier="Advanced" if size > STANDARD_LIMIT else "Standard",
        )
        report.written.append(name)
    for name in sorted((_manifest(state_dir) & shared.keys()) - here.keys()):
        client.delete_parameter(Name=name_prefix + name)
        report.removed.append(name)
    if state_dir.is_dir():
        _write_manifest(state_dir, set(here))
    return report


def remove(client: Any, name_prefix: str) -> int:
    """Delete every parameter of the deployment (it was destroyed); how many there were."""
    names = [name_prefix + name for name in shared_files(client, name_prefix)]
    for start in range(0, len(names), 10):
        client.delete_parameters(Names=names[start : start + 10])
    return len(names)
