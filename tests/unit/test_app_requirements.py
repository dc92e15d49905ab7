"""The wheelhouse pins what the hosts install (with --no-index) from the kit's
and the sample's requirements files: each must hold the whole dependency
tree of what it installs, for the hosts' Python (Debian 13: 3.13.5)."""

from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
# What each imports, with the extras it relies on.
REQUIREMENTS = {
    "kit/requirements.txt": [Requirement("celery[redis]"), Requirement("gunicorn")],
    "examples/taskapp/requirements.txt": [Requirement("celery[redis]"), Requirement("flask")],
    "examples/django-signup/requirements.txt": [Requirement("celery[redis]"), Requirement("django")],
}
HOST_PYTHON = {"python_version": "3.13", "python_full_version": "3.13.5", "sys_platform": "linux"}


def _pins(path: str) -> dict[str, str]:
    pins = {}
    for raw in (ROOT / path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix("==")
    return pins


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    environment = dict(default_environment(), **HOST_PYTHON)
    return any(requirement.marker.evaluate(dict(environment, extra=extra)) for extra in extras | {""})


@pytest.mark.parametrize("path", sorted(REQUIREMENTS))
def test_every_dependency_is_pinned(path):
    pins = _pins(path)
    missing, seen = [], set()
    todo = [(requirement, set()) for requirement in REQUIREMENTS[path]]
    while todo:
        requirement, parent_extras = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen or not _applies(requirement, parent_extras):
            continue
        seen.add(key)
        if name not in pins:
            missing.append(str(requirement))
            continue
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} breaks {requirement}"
        )
        try:
            installed = version(name)
        except PackageNotFoundError:
            missing.append(f"{name} (not installed on the controller to read its metadata)")
            continue
        assert installed == pins[name], f"controller has {name} {installed}, the hosts get {pins[name]}"
        todo += [(Requirement(line), set(requirement.extras)) for line in requires(name) or []]
    assert not missing, f"{path} lacks: {sorted(set(missing))}"
