"""A PostgreSQL server of the test's own, on a free loopback port, that the test may restart or stop.

The machine's shared server (port 5432) serves the rest of the suite, so restarting it would break other
tests; this one is made with `initdb` in a temporary folder (owned by the `postgres` user when the tests
run as root, as PostgreSQL refuses to run as root) and removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.review_fixtures import free_port


def _bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        raise RuntimeError("PostgreSQL's initdb is not installed (Debian package postgresql)")
    return versions[-1].parent


class PrivatePostgres:
    def __init__(self) -> None:
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="rlaif-pg-"))
        self.data = self.folder / "data"
        self._bin = _bin()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, text=True, timeout=120)

    def __enter__(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(str(self._bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", *args)

    def start(self) -> None:
        self._ctl("start", "-l", str(self.folder / "server.log"))
        self._wait_ready()

    def restart(self, mode: str = "immediate") -> None:
        """Restart the server; `immediate` stops it as a crash does (no checkpoint, crash recovery at start)."""
        self._ctl("restart", "-m", mode, "-l", str(self.folder / "server.log"))
        self._wait_ready()

    def outage(self, seconds: float) -> None:
        """Crash the server (`-m immediate`: no checkpoint, crash recovery at start), keep it down, start it."""
        self._ctl("stop", "-m", "immediate")
        time.sleep(seconds)
        self.start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
