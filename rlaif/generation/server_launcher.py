"""Launching a model server for a run: `transformers serve` (CPU) or `vllm serve` (GPU, its own environment).

The server starts on a free loopback port with its output in a log file, is polled until `/health`
answers (`transformers serve` fails on `/v1/models` when no hub cache exists), and is stopped
(SIGTERM, then SIGKILL) at the end. A server that exits or does not become healthy in time fails
with the tail of its log.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from rlaif.errors import ExpectedError

log = logging.getLogger(__name__)

ServerKind = Literal["transformers", "vllm"]


class ServerError(ExpectedError, RuntimeError):
    """A model server that did not come up; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _executable(kind: ServerKind, executable: str | None) -> str:
    if executable:
        return executable
    # Prefer the command that sits beside this Python (the project's virtual environment).
    beside = Path(sys.executable).parent / kind
    if beside.exists():
        return str(beside)
    found = shutil.which(kind)
    if not found:
        hint = " (vLLM lives in its own environment: set server.executable)" if kind == "vllm" else ""
        raise ServerError(f"cannot find the `{kind}` command{hint}")
    return found


def server_command(
    kind: ServerKind, executable: str, model: str, host: str, port: int, extra_args: Sequence[str] = ()
) -> list[str]:
    """The command line that serves `model` on host:port (both servers take the same form)."""
    return [executable, "serve", model, "--host", host, "--port", str(port), *extra_args]


class ManagedServer:
    """A model server process owned by this process; use it as a context manager."""

    def __init__(
        self,
        kind: ServerKind,
        model: str,
        executable: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 600.0,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | None = None,
        say: Callable[[str], None] = log.info,
    ) -> None:
        self.kind = kind
        self.model = model
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self.command = server_command(kind, _executable(kind, executable), model, host, self.port, extra_args)
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=f"rlaif-{kind}-serve-", suffix=".log")[1])
        self.served_model = model
        self._say = say
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> ManagedServer:
        """Start the server and wait until it answers; raise ServerError with its log tail otherwise."""
        self._say(f"starting {self.kind} serve for {self.model} on {self.host}:{self.port} (log: {self.log_path})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._process = subprocess.Popen(
                self.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so stop() reaches its children too
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_healthy(self) -> None:
        started = time.monotonic()
        deadline = started + self.startup_timeout_s
        assert self._process is not None
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise ServerError(
                        f"{self.kind} serve exited with code {code} before it was ready:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"http://{self.host}:{self.port}/health").status_code == 200:
                        if self.kind == "vllm":  # requests must name the model as vLLM serves it
                            models = client.get(f"{self.base_url}/models").json().get("data") or []
                            self.served_model = models[0]["id"] if models else self.model
                        self._say(f"{self.kind} serve is ready after {time.monotonic() - started:.0f} s")
                        return
                except (httpx.TransportError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{self.kind} serve was not ready after {self.startup_timeout_s:g} s:\n{self.log_tail()}"
                    )
                time.sleep(0.5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the server and everything it started."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
