"""Real servers for the unit tests, each on a free loopback port: redis-server, moto_server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def program(name: str, install: str) -> str:
    """The server's executable (on PATH or beside this Python), or skip the tests that need it."""
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.skip(f"{name} is not installed ({install})")
    return found


@contextmanager
def serving(argv: list[str], port: int, log: Path, timeout: float = 30, host: str = "127.0.0.1") -> Iterator[None]:
    """Run argv until the block ends; enter once it accepts connections on host:port (its output in log)."""
    with log.open("w") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, f"{Path(argv[0]).name} stopped: {log.read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"{Path(argv[0]).name} did not start: {log.read_text()[-2000:]}"
                time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


REDIS_INSTALL = "apt-get install redis-server; .ci/run installs it"


def redis_server_argv(port: int, *extra: str) -> list[str]:
    """A throwaway redis-server: loopback only, nothing written to disk."""
    server = program("redis-server", REDIS_INSTALL)
    return [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra]
