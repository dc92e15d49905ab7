"""Run one of the kit's playbooks on the controller, as the unit tests need it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_playbook(playbook: str, extra_vars: dict, *options: str) -> subprocess.CompletedProcess:
    """ansible-playbook (the kit's own) against localhost, with extra variables; never raises."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["ansible-playbook", "-i", "localhost,", *options, playbook, "--extra-vars", json.dumps(extra_vars)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
