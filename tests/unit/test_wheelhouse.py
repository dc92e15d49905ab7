"""celery-kit wheelhouse: where an app comes from, and when its wheelhouse is rebuilt."""

from __future__ import annotations

import argparse
import os

import pytest

from celery_kit import wheelhouse


def _project(path, name="teamapp"):
    path.mkdir()
    (path / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "1.0"\n')
    (path / name).mkdir()
    (path / name / "__init__.py").write_text("VALUE = 1\n")
    return path


def test_an_app_comes_from_a_project_directory_a_wheel_or_a_git_ref(tmp_path):
    project = _project(tmp_path / "project")
    wheel = tmp_path / "teamapp-1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    assert wheelhouse.source_kind(str(project)) == "directory"
    assert wheelhouse.source_kind(str(wheel)) == "wheel"
    assert wheelhouse.source_kind("git+https://git.example/team/app.git@v1.2") == "git"


def test_anything_else_is_refused_with_what_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(wheelhouse.WheelhouseError, match="neither a project directory"):
        wheelhouse.source_kind(str(tmp_path / "empty"))


def test_the_fingerprint_follows_the_sources_and_ignores_build_leftovers(tmp_path):
    project = _project(tmp_path / "project")
    before = wheelhouse.tree_fingerprint(project)
    (project / "__pycache__").mkdir()
    (project / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (project / "teamapp.egg-info").mkdir()
    (project / "teamapp.egg-info" / "PKG-INFO").write_text("x")
    (project / "db.sqlite3").write_text("local data")
    assert wheelhouse.tree_fingerprint(project) == before
    (project / "teamapp" / "__init__.py").write_text("VALUE = 2\n")
    assert wheelhouse.tree_fingerprint(project) != before


def test_a_git_commit_needs_no_lookup():
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert wheelhouse.git_commit(f"git+https://git.example/team/app.git@{commit}") == commit


def test_an_existing_wheelhouse_is_reused_without_building(tmp_path, monkeypatch):
    project = _project(tmp_path / "project")
    kit = _project(tmp_path / "kit", name="kitpkg")
    pins = tmp_path / "pins.txt"
    pins.write_text("celery==5.7.0\n")
    args = argparse.Namespace(
        source=str(project),
        requirements=None,
        kit=str(kit),
        kit_requirements=str(pins),
        platform="manylinux2014_x86_64",
        python_version="3.13",
        out=str(tmp_path / "out"),
    )
    calls = []
    monkeypatch.setattr(wheelhouse, "pip", lambda *arguments: calls.append(arguments))

    def build_one(source, wheels):
        wheel = wheels / f"{source.split('/')[-1]}-1.0-py3-none-any.whl"
        wheel.write_bytes(b"wheel")
        return wheel

    monkeypatch.setattr(wheelhouse, "build_one", build_one)
    first = wheelhouse.build(args)
    assert first["app_wheel"] == "project-1.0-py3-none-any.whl"
    assert len(calls) == 1  # the download of the dependencies
    assert wheelhouse.build(args) == first
    assert len(calls) == 1, "nothing is downloaded again for the same sources"


def test_only_the_archives_used_last_are_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for age in range(wheelhouse.KEPT + 3):  # age 0: used last
        archive = out / f"wheelhouse-{age:04d}.tar"
        archive.write_bytes(b"tar")
        os.utime(archive, (1_000_000 - age, 1_000_000 - age))
    wheelhouse.remove_unused(out)
    kept = sorted(path.name for path in out.iterdir())
    assert kept == [f"wheelhouse-{age:04d}.tar" for age in range(wheelhouse.KEPT)]
