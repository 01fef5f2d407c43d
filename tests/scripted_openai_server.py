"""A scripted OpenAI-compatible HTTP server on loopback: failures on demand, and a deterministic model.

It stands in for a real model server in two roles. Failures a real server cannot be made to produce on
demand: 429 with Retry-After, 5xx, dropped connections, ignoring `n`, a service that only answers 503.
And a deterministic policy and judge (`reply`, `logprobs`): answers named by seed and choice, verdicts
that depend on what the judge was shown, so that tests of the pipeline's own logic (shards, resume,
routing, merge, refusal contrast, deployments) know exactly what to expect, which the tiny real models
(near a coin flip as judges) cannot give; tests that need real text use SmolLM2 in-process or behind a
real `transformers serve`. Each request pops the next scripted action; when the script is empty it
answers normally. Every request body is recorded, and the most requests answered at once is counted.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Action:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    drop_connection: bool = False
    delay_s: float = 0.0
    content: str | None = None  # the answer's text, instead of the server's usual reply


class _QuietServer(ThreadingHTTPServer):
    """Says nothing when a client goes away mid-answer (the crash tests kill clients on purpose), and
    counts its open connections: accepted, and not yet read to their end and closed."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.open_connections = 0
        self.connections_changed = threading.Condition()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_changed:
            self.open_connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:  # after the connection's last request was handled
        try:
            super().shutdown_request(request)
        finally:
            with self.connections_changed:
                self.open_connections -= 1
                self.connections_changed.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ScriptedOpenAIServer:
    def __init__(
        self,
        script: list[Action] | None = None,
        ignore_n: bool = False,
        reply: Callable[[dict[str, Any]], str] | None = None,
        delay_s: float = 0.0,
        logprobs: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.script: deque[Action] = deque(script or [])
        self.ignore_n = ignore_n
        self.reply = reply  # text of every answer, computed from the request body
        self.delay_s = delay_s  # added to every request
        self.logprobs = logprobs  # the choice's logprobs.content, when the request asks for logprobs
        self.requests: list[dict[str, Any]] = []
        self.request_times: list[float] = []
        self.in_flight = self.max_in_flight = 0  # requests being answered now, and the most at once
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_until_no_client_is_connected(self, timeout_s: float = 60.0) -> None:
        """Wait until every connection has been read to its end and closed: after a client was killed,
        the requests it had sent are then all in `requests` (a busy server thread records them late)."""
        with self._server.connections_changed:
            if not self._server.connections_changed.wait_for(lambda: self._server.open_connections == 0, timeout_s):
                raise TimeoutError(f"{self._server.open_connections} connections still open after {timeout_s} s")

    def _next_action(self, body: dict[str, Any]) -> Action:
        with self._lock:
            self.requests.append(body)
            self.request_times.append(time.monotonic())
            return self.script.popleft() if self.script else Action()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer()
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                action = server._next_action(body)
                time.sleep(action.delay_s + server.delay_s)
                if action.drop_connection:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action.status != 200:
                    payload = {"error": {"message": f"scripted {action.status}", "type": "scripted"}}
                else:
                    payload = completion(body, ignore_n=server.ignore_n)
                    text = (
                        action.content if action.content is not None else (server.reply(body) if server.reply else None)
                    )
                    if text is not None:
                        for choice in payload["choices"]:
                            choice["message"]["content"] = text
                    if body.get("logprobs") and server.logprobs:
                        for choice in payload["choices"]:
                            choice["logprobs"] = {"content": server.logprobs(body)}
                data = json.dumps(payload).encode()
                self.send_response(action.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in action.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


def judge_prompt(body: dict[str, Any]) -> str:
    """The user message of a request (for replies that depend on what the judge was shown)."""
    return next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")


def completion(body: dict[str, Any], ignore_n: bool = False) -> dict[str, Any]:
    """A chat.completion whose answers name the seed and choice index, so tests can tell them apart."""
    n = 1 if ignore_n else int(body.get("n") or 1)
    seed = body.get("seed")
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "scripted"),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"answer seed={seed} choice={i}"},
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3 * n, "total_tokens": 10 + 3 * n},
    }


class SilentServer:
    """A socket that accepts connections and never answers: requests to it can only time out."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.base_url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._socket.close()
