"""An instant OpenAI-compatible endpoint on loopback: the benchmark instrument for client-side throughput.

It stands in for a model server (none that answers in microseconds exists) so that what is measured
is the client: this pipeline, the plain openai loop and distilabel, all against the same server in
the same run. Answers are deterministic per prompt, so reruns and peers see the same verdicts.

Its cost model is a batching server's (vLLM, SGLang): the delay is charged per prompt, not per request,
and the prompts of all requests run side by side in at most `--slots` sequences at once (vLLM's
`max_num_seqs`, 256 by default); a prompt waits for a free slot. So a request of 64 prompts costs what
64 requests of one prompt cost, and what many prompts per request can still buy is fewer round trips
(HTTP and JSON work on both sides), not free server time.

    POST /v1/chat/completions  a judge verdict: "[[A]]"/"[[B]]" for a pairwise prompt; distilabel's
                               UltraFeedback and Prometheus formats when the prompt asks for them;
                               `logprobs`/`top_logprobs` answered with p(A) for the first token
    POST /v1/completions       legacy completions; `prompt` may be a list (one choice per prompt, vLLM's
                               behaviour); `logprobs: K` answered for the first token
    GET  /v1/models            one model
    GET  /stats                requests (in all and by path), prompts, peak requests in flight, first/last
                               request times
    POST /reset                zero the counters
    POST /config?delay_ms=50   per-prompt delay (and &slots=N)

    python benchmarks/fake_openai_server.py [--port 8765] [--delay-ms 0] [--slots 256] [--completions list|single|none]

--completions single: a server that takes one prompt per completions request (a list gets 400);
none: a server without the completions API (404), like `transformers serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import re
import time
from typing import Any

from aiohttp import web

MODEL = "fake-judge"
_TEXT_TAG = re.compile(r"<text (\d+)>")


class Counters:
    """What the server has seen since start or the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.prompts = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.first_ts = 0.0
        self.last_ts = 0.0
        # requests and prompts in flight integrated over time (each request's time from arrival to reply,
        # once and times its prompts): over the active window, the concurrency a client achieved on average,
        # beside the peak it touched once
        self._request_seconds = 0.0
        self._prompt_seconds = 0.0

    def started(self, path: str) -> float:
        """Count a request in flight from its arrival; returns the arrival time."""
        self.requests += 1
        self.by_path[path] = self.by_path.get(path, 0) + 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        now = time.time()
        if not self.first_ts:
            self.first_ts = now
        return now

    def finished(self, arrived: float, prompts: int) -> None:
        self.in_flight -= 1
        self.prompts += prompts
        self.last_ts = time.time()
        self._request_seconds += self.last_ts - arrived
        self._prompt_seconds += prompts * (self.last_ts - arrived)

    def as_dict(self, delay_s: float, slots: int) -> dict[str, Any]:
        window = self.last_ts - self.first_ts if self.first_ts else 0.0
        return {
            "requests": self.requests,
            "requests_by_path": self.by_path,
            "prompts": self.prompts,
            "max_in_flight": self.peak_in_flight,
            "max_inflight_per_worker": [self.peak_in_flight],  # the shared peer harness reads this name
            "mean_in_flight": round(self._request_seconds / window, 2) if window > 0 else 0.0,
            "mean_prompts_in_flight": round(self._prompt_seconds / window, 2) if window > 0 else 0.0,
            "delay_ms": delay_s * 1000,
            "slots": slots,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "active_window_s": round(self.last_ts - self.first_ts, 4) if self.first_ts else 0.0,
        }


def p_a_for(text: str) -> float:
    """A deterministic probability that answer A is better, spread over (0, 1), from the prompt's hash."""
    value = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest(), "big")
    return 0.02 + 0.96 * value / 0xFFFFFFFF


def chat_reply(messages: list[dict[str, Any]]) -> tuple[str, float]:
    """The reply text for a chat request and p(A) behind it."""
    prompt = "\n".join(m["content"] if isinstance(m.get("content"), str) else str(m.get("content")) for m in messages)
    p_a = p_a_for(prompt)
    if "#### Output for Text" in prompt:  # distilabel UltraFeedback: one rating per text
        texts = len(set(_TEXT_TAG.findall(prompt.rsplit("Texts:", 1)[-1]))) or 2
        return "\n\n".join(
            f"#### Output for Text {i + 1}\nRating: {4 if (i == 0) == (p_a >= 0.5) else 3}\nRationale: fake."
            for i in range(texts)
        ), p_a
    if "[RESULT]" in prompt:  # distilabel PrometheusEval, relative mode
        return f"Feedback: fake. [RESULT] {'A' if p_a >= 0.5 else 'B'}", p_a
    return f"[[{'A' if p_a >= 0.5 else 'B'}]]", p_a


def label_logprobs(p_a: float, k: int) -> list[tuple[str, float]]:
    """The first token's top-k alternatives: A and B carry p(A) and p(B) (most of the mass), then filler."""
    top = [("A", math.log(0.9 * p_a)), ("B", math.log(0.9 * (1 - p_a)))]
    top += [(f"t{i}", math.log(0.1 / max(1, k - 2))) for i in range(max(0, k - 2))]
    return sorted(top, key=lambda item: -item[1])[:k]


def usage(prompt_chars: int, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = prompt_chars // 4
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages") or []
    text, p_a = chat_reply(messages)
    logprobs = None
    if body.get("logprobs"):
        k = int(body.get("top_logprobs") or 1)
        top = label_logprobs(p_a, k)
        first = top[0]
        logprobs = {
            "content": [
                {
                    "token": first[0],
                    "logprob": first[1],
                    "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top],
                }
            ]
        }
    n = int(body.get("n") or 1)
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", MODEL),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
        "usage": usage(sum(len(str(m.get("content", ""))) for m in messages), 5 * n),
    }


def text_completion(prompts: list[str], body: dict[str, Any]) -> dict[str, Any]:
    k = body.get("logprobs")
    choices = []
    for index, prompt in enumerate(prompts):
        p_a = p_a_for(prompt)
        token = "A" if p_a >= 0.5 else "B"
        logprobs = None
        if k:
            top = label_logprobs(p_a, int(k))
            logprobs = {
                "tokens": [token],
                "token_logprobs": [dict(top)[token]],
                "top_logprobs": [dict(top)],
                "text_offset": [len(prompt)],
            }
        choices.append({"index": index, "text": token, "logprobs": logprobs, "finish_reason": "length"})
    return {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model", MODEL),
        "choices": choices,
        "usage": usage(sum(len(p) for p in prompts), len(prompts)),
    }


def make_app(delay_ms: float = 0.0, completions: str = "list", slots: int = 256) -> web.Application:
    counters = Counters()
    state: dict[str, Any] = {"delay_s": delay_ms / 1000.0, "slots": asyncio.Semaphore(slots), "slot_count": slots}

    async def one_prompt() -> None:
        """One prompt's share of the server: a slot for the delay."""
        async with state["slots"]:
            await asyncio.sleep(state["delay_s"])

    async def answer(request: web.Request, make: Any) -> web.Response:
        """Count the request in flight from its arrival, read it, run its prompts side by side, reply."""
        arrived = counters.started(request.path)
        prompts = 0
        try:
            body = await request.json()
            prompts, reply = make(body)
            if state["delay_s"] > 0:
                await asyncio.gather(*(one_prompt() for _ in range(prompts)))
            return reply if isinstance(reply, web.Response) else web.json_response(reply)
        finally:
            counters.finished(arrived, prompts)

    def chat_reply_of(body: dict[str, Any]) -> tuple[int, Any]:
        return 1, chat_completion(body)

    def completion_reply_of(body: dict[str, Any]) -> tuple[int, Any]:
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if not all(isinstance(p, str) for p in prompts):
            error = {"error": {"message": "prompt must be a string or a list of strings"}}
            return 0, web.json_response(error, status=400)
        if completions == "single" and len(prompts) > 1:
            return 0, web.json_response({"error": {"message": "only one prompt per request"}}, status=400)
        return len(prompts), text_completion(prompts, body)

    async def chat(request: web.Request) -> web.Response:
        return await answer(request, chat_reply_of)

    async def legacy(request: web.Request) -> web.Response:
        if completions == "none":
            raise web.HTTPNotFound(text='{"detail":"Not Found"}', content_type="application/json")
        return await answer(request, completion_reply_of)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counters.as_dict(state["delay_s"], state["slot_count"]))

    async def reset(request: web.Request) -> web.Response:
        counters.reset()
        return web.json_response({"ok": True})

    async def config(request: web.Request) -> web.Response:
        if "delay_ms" in request.query:
            state["delay_s"] = float(request.query["delay_ms"]) / 1000.0
        if "slots" in request.query:
            state["slot_count"] = int(request.query["slots"])
            state["slots"] = asyncio.Semaphore(state["slot_count"])
        return web.json_response({"delay_ms": state["delay_s"] * 1000, "slots": state["slot_count"]})

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", legacy)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/config", config)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="time per prompt")
    parser.add_argument("--slots", type=int, default=256, help="prompts the server runs at once (max_num_seqs)")
    parser.add_argument("--completions", choices=["list", "single", "none"], default="list")
    args = parser.parse_args()
    print(f"fake OpenAI endpoint on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(
        make_app(args.delay_ms, args.completions, args.slots),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
