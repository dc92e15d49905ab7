"""celery-kit wheelhouse: every wheel the hosts install, built on the controller.

The hosts reach no package index: the deploy ships them one archive with the
app's wheel, the kit's wheel and every dependency of both as wheels for the
hosts' platform. The app comes from

- a directory with a pyproject.toml or setup.py/setup.cfg (built with pip wheel),
- a wheel file (used as it is),
- a git repository: git+https://host/repo.git@ref (pip builds the ref).

Its dependencies are the ones its metadata declares, pinned by its own
requirements file when it has one; the kit's pins (kit/requirements.txt)
constrain the packages both use, so the app and the kit agree on Celery.

The archive is named after a fingerprint of all of that: when nothing
changed, the deploy finds it and builds nothing. The directory keeps the
KEPT archives used last (several deployments and apps share it); an older
one is built again if it is ever asked for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SKIPPED_PARTS = {".git", "__pycache__", ".venv", "build", "dist", ".pytest_cache", ".ruff_cache", "node_modules"}
SKIPPED_SUFFIXES = (".pyc", ".pyo", ".sqlite3", ".log")
GIT_SOURCE = re.compile(r"^git\+(?P<url>[^@#]+?)(?:@(?P<ref>[^#]+))?(?:#.*)?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
MANIFEST = "celery-kit-wheelhouse.json"
KEPT = 8
# The kit's optional dependencies the archive carries (kit/pyproject.toml).
KIT_EXTRAS = ("flower",)


class WheelhouseError(RuntimeError):
    """The app's source cannot be read or built."""


def source_kind(source: str) -> str:
    if GIT_SOURCE.match(source):
        return "git"
    path = Path(source)
    if path.is_file() and path.suffix == ".whl":
        return "wheel"
    if path.is_dir() and any((path / name).exists() for name in ("pyproject.toml", "setup.py", "setup.cfg")):
        return "directory"
    raise WheelhouseError(
        f"kit_app_source {source!r} is neither a project directory (pyproject.toml, setup.py or setup.cfg),"
        " a .whl file, nor a git+https://...@ref URL"
    )


def tree_fingerprint(directory: Path) -> str:
    digest = hashlib.sha1()  # noqa: S324 (a content fingerprint, not a security digest)
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if not path.is_file() or SKIPPED_PARTS & set(relative.parts) or path.suffix in SKIPPED_SUFFIXES:
            continue
        if any(part.endswith(".egg-info") for part in relative.parts):
            continue
        digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def git_commit(source: str) -> str:
    match = GIT_SOURCE.match(source)
    assert match is not None
    ref = match.group("ref") or "HEAD"
    if COMMIT.match(ref):
        return ref
    listed = subprocess.run(["git", "ls-remote", match.group("url"), ref], capture_output=True, text=True, check=False)
    if listed.returncode != 0 or not listed.stdout.split():
        reason = listed.stderr.strip() or "no such ref"
        raise WheelhouseError(f"cannot resolve {ref!r} of {match.group('url')}: {reason}")
    return listed.stdout.split()[0]


def source_fingerprint(source: str) -> str:
    kind = source_kind(source)
    if kind == "directory":
        return tree_fingerprint(Path(source))
    if kind == "wheel":
        return hashlib.sha1(Path(source).read_bytes()).hexdigest()  # noqa: S324
    return git_commit(source)


def fingerprint(args: argparse.Namespace) -> str:
    parts = [
        source_fingerprint(args.source),
        Path(args.requirements).read_text() if args.requirements else "",
        tree_fingerprint(Path(args.kit)),
        Path(args.kit_requirements).read_text(),
        args.platform,
        args.python_version,
    ]
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:16]  # noqa: S324


def pip(*arguments: str) -> None:
    command = [sys.executable, "-m", "pip", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise WheelhouseError(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def build_one(source: str, wheels: Path) -> Path:
    """The wheel of source in wheels/ (built, or copied)."""
    before = set(wheels.glob("*.whl"))
    kind = source_kind(source)
    if kind == "wheel":
        shutil.copy2(source, wheels)
    elif kind == "directory":
        # Built from a copy: setuptools leaves build/ and *.egg-info in the
        # tree it builds, and the app's directory is the team's.
        copy = wheels.parent / "source" / Path(source).resolve().name
        ignored = shutil.ignore_patterns(*SKIPPED_PARTS, "*.egg-info", *(f"*{suffix}" for suffix in SKIPPED_SUFFIXES))
        shutil.copytree(source, copy, ignore=ignored)
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(copy))
    else:
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), source)
    (built,) = set(wheels.glob("*.whl")) - before
    return built


def distribution(wheel: Path) -> str:
    return wheel.name.split("-")[0].replace("_", "-").lower()


def build(args: argparse.Namespace) -> dict[str, str]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wheelhouse_id = fingerprint(args)
    archive = out / f"wheelhouse-{wheelhouse_id}.tar"
    if archive.exists():
        archive.touch()  # used now: kept longest
        with tarfile.open(archive) as tar:
            member = tar.extractfile(f"./{MANIFEST}")
            assert member is not None
            return json.loads(member.read())
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        wheels = Path(scratch) / "wheels"
        wheels.mkdir()
        app_wheel = build_one(args.source, wheels)
        kit_wheel = build_one(args.kit, wheels)
        download = ["download", "--quiet", "--only-binary=:all:", "--implementation=cp"]
        download += [f"--platform={args.platform}", f"--python-version={args.python_version}"]
        download += ["--dest", str(wheels), "--constraint", args.kit_requirements]
        if args.requirements:
            download += ["--requirement", args.requirements]
        # The kit with its extras (Flower, for the monitoring host): every
        # host gets the same archive and installs what its role asks for.
        pip(*download, str(app_wheel), f"{kit_wheel}[{','.join(KIT_EXTRAS)}]")
        manifest = {
            "id": wheelhouse_id,
            "app_wheel": app_wheel.name,
            "app_distribution": distribution(app_wheel),
            "kit_wheel": kit_wheel.name,
        }
        (wheels / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        partial = archive.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            for path in sorted(wheels.iterdir()):
                info = tar.gettarinfo(str(path), arcname=f"./{path.name}")
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        partial.rename(archive)
    remove_unused(out)
    return manifest


def remove_unused(out: Path) -> None:
    """Remove the archives beyond the KEPT used last."""
    archives = sorted(out.glob("wheelhouse-*.tar"), key=lambda path: path.stat().st_mtime, reverse=True)
    for old in archives[KEPT:]:
        old.unlink()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="celery-kit wheelhouse", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the app: project directory, .whl, or git+URL@ref")
    parser.add_argument("--requirements", help="the app's pinned requirements file (optional)")
    parser.add_argument("--kit", required=True, help="the kit's package directory (kit/)")
    parser.add_argument("--kit-requirements", required=True, help="the kit's pinned host requirements")
    parser.add_argument("--platform", default="manylinux2014_x86_64")
    parser.add_argument("--python-version", default="3.13")
    parser.add_argument("--out", required=True, help="directory of the archives")
    args = parser.parse_args(argv)
    try:
        manifest = build(args)
    except WheelhouseError as exc:
        print(f"celery-kit wheelhouse: error: {exc}", file=sys.stderr)
        return 2
    manifest["archive"] = str(Path(args.out) / f"wheelhouse-{manifest['id']}.tar")
    print(json.dumps(manifest))
    return 0
