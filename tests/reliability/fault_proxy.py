"""A fault-injecting proxy for OpenAI-compatible endpoints, on loopback.

It forwards each request to an upstream server and, with the configured probability per kind, does
something a production endpoint does instead:

    drop       closes the connection without an answer
    429        Too Many Requests with a Retry-After header
    500        an internal server error
    slow       answers only after `slow_s` (longer than the client's timeout)
    truncated  the upstream answer cut in half (status 200, JSON that does not parse)
    nonsense   status 200 with valid JSON that makes no sense: a reply of unrelated text, or an object
               that is not a completion at all (alternately)
    echo_key   401 whose message quotes the request's API key, as OpenAI's "Incorrect API key" does

`dead = True` turns it into an endpoint that answers every request with 503. Faults are drawn from a
seeded generator; every fault is counted by kind, and every request is logged with its arrival time and
a hash of its body, so a test can check when a client came back after a 429.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp import web

FaultKind = Literal["drop", "429", "500", "slow", "truncated", "nonsense", "echo_key"]
FAULT_KINDS: tuple[FaultKind, ...] = ("drop", "429", "500", "slow", "truncated", "nonsense")  # what a server does
EXPOSING: tuple[FaultKind, ...] = ("echo_key",)  # what a server does that tests the handling of secrets


@dataclass(frozen=True)
class LoggedRequest:
    at: float  # time.monotonic() on arrival
    body_hash: str
    fault: FaultKind | None


class FaultProxy:
    """The proxy, served from a thread of its own: `with FaultProxy(upstream, rates) as proxy: proxy.base_url`."""

    def __init__(
        self,
        upstream: str,
        rates: dict[FaultKind, float] | None = None,
        seed: int = 0,
        retry_after_s: int = 1,
        slow_s: float = 3.0,
    ) -> None:
        unknown = set(rates or {}) - set(FAULT_KINDS) - set(EXPOSING)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        if sum((rates or {}).values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        self.upstream = upstream.rstrip("/")
        self.rates = dict(rates or {})
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.dead = False
        self.faults: Counter[str] = Counter()
        self.log: list[LoggedRequest] = []
        self.authorizations: set[str] = set()  # the Authorization headers seen
        self._random = random.Random(seed)
        self._nonsense_turn = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = self._loop.run_until_complete(self._start())
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)  # answers still waiting out a `slow` fault
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._session.close())
            self._loop.run_until_complete(runner.cleanup())
            self._loop.close()

    async def _start(self) -> web.AppRunner:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession()
        return runner

    def _draw(self) -> FaultKind | None:
        roll = self._random.random()
        for kind in (*FAULT_KINDS, *EXPOSING):
            roll -= self.rates.get(kind, 0.0)
            if roll < 0:
                return kind
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            fault: FaultKind | None = "500" if self.dead else self._draw()
            if fault is not None:
                self.faults["dead" if self.dead else fault] += 1
            self.log.append(LoggedRequest(time.monotonic(), hashlib.sha256(body).hexdigest(), fault))
            self.authorizations.add(request.headers.get("Authorization", ""))
        if self.dead:
            return web.json_response({"error": {"message": "service unavailable"}}, status=503)
        if fault == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()  # never sent: the connection is gone
        if fault == "429":
            return web.json_response(
                {"error": {"message": "rate limited", "type": "rate_limit"}},
                status=429,
                headers={"Retry-After": str(self.retry_after_s)},
            )
        if fault == "echo_key":
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            message = f"Incorrect API key provided: {key}. You can find your API key at https://example.invalid."
            return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=401)
        if fault == "500":
            return web.json_response({"error": {"message": "internal error"}}, status=500)
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        if fault == "nonsense":
            self._nonsense_turn += 1
            if self._nonsense_turn % 2:
                return web.json_response({"status": "ok", "note": "this is not a completion"})
        upstream = await self._session.request(
            request.method,
            self.upstream + request.path_qs.removeprefix("/v1"),
            data=body,
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        )
        async with upstream:
            data = await upstream.read()
        if fault == "truncated":
            data = data[: len(data) // 2]
        elif fault == "nonsense":
            data = _replace_text(data)
        return web.Response(body=data, status=upstream.status, content_type="application/json")


def _replace_text(data: bytes) -> bytes:
    """A completion whose every answer is unrelated text (valid JSON, no verdict, no logprobs)."""
    document = json.loads(data)
    for choice in document.get("choices", []):
        if "message" in choice:
            choice["message"]["content"] = "Purple elephants negotiate the tide at dawn."
        else:
            choice["text"] = "Purple elephants negotiate the tide at dawn."
        choice["logprobs"] = None
    return json.dumps(document).encode()
