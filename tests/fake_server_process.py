"""benchmarks/fake_openai_server.py in a process of its own, for tests: a stand-in for a model server
(vLLM, which cannot run on this machine) that answers over real HTTP on loopback and counts what it was
sent. It keeps its port, so that a test can kill it (SIGKILL, as a crashed server or a lost node) and start
it again where clients expect it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness import free_port, wait_until

SERVER = Path(__file__).resolve().parents[1] / "benchmarks" / "fake_openai_server.py"


class FakeServerProcess:
    """One fake server: `start()`, `kill()`, `stats()`; `url` is its root, `url + "/v1"` the base URL."""

    def __init__(self, log: Path, delay_ms: float = 0.0, completions: str = "list") -> None:
        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.arguments = ["--port", str(self.port), "--delay-ms", str(delay_ms), "--completions", completions]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(SERVER), *self.arguments], stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(f"{self.url}/stats", 30, self.process, self.log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=10) as response:
            return json.loads(response.read())


@contextmanager
def fake_servers(folder: Path, *delays_ms: float, completions: str = "list") -> Iterator[list[FakeServerProcess]]:
    """Servers with these per-prompt delays, started, and stopped at the end."""
    servers = [
        FakeServerProcess(folder / f"fake-server-{number}.log", delay, completions)
        for number, delay in enumerate(delays_ms)
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
