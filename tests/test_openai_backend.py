"""The openai backend against loopback servers: retries, Retry-After, timeouts, n emulation, replicas."""

from __future__ import annotations

import asyncio
import time

import pytest

from rlaif.config import SamplingSection
from rlaif.generation.openai_backend import OpenAIBackend
from rlaif.generation.protocol import BackendError, GenerationRequest
from rlaif.message_text import redact_url
from rlaif.pipeline.sample import sample_candidates
from rlaif.schema import PromptItem
from tests.scripted_openai_server import Action, ScriptedOpenAIServer, SilentServer

HELLO = [{"role": "user", "content": "hello"}]


def run(coro):
    return asyncio.run(coro)


async def generate(backend: OpenAIBackend, requests: list[GenerationRequest]):
    try:
        return await backend.generate(requests)
    finally:
        await backend.aclose()


def test_429_twice_then_200_is_retried_honouring_retry_after():
    script = [Action(429, {"Retry-After": "1"}), Action(429, {"Retry-After": "1"})]
    with ScriptedOpenAIServer(script) as server:
        backend = OpenAIBackend([server.base_url], "m", max_retries=3, timeout_s=10)
        started = time.monotonic()
        [result] = run(generate(backend, [GenerationRequest(messages=HELLO, seed=5)]))
        elapsed = time.monotonic() - started
    assert not isinstance(result, BackendError), result
    assert result[0].text == "answer seed=5 choice=0"
    assert len(server.requests) == 3
    gaps = [b - a for a, b in zip(server.request_times, server.request_times[1:], strict=False)]
    # The client's own backoff would wait about 0.5 s then 1 s; Retry-After asks for 1 s each time.
    assert all(gap >= 0.95 for gap in gaps), gaps
    assert elapsed < 6
    assert backend.usage.requests == 1 and backend.usage.failed_requests == 0


def test_500_and_dropped_connection_are_retried():
    script = [Action(500), Action(drop_connection=True), Action(503)]
    with ScriptedOpenAIServer(script) as server:
        backend = OpenAIBackend([server.base_url], "m", max_retries=3, timeout_s=10)
        [result] = run(generate(backend, [GenerationRequest(messages=HELLO)]))
    assert not isinstance(result, BackendError), result
    assert len(server.requests) == 4


def test_retries_exhausted_gives_a_clear_error_and_other_requests_survive():
    script = [Action(500), Action(500)]
    with ScriptedOpenAIServer(script) as server:
        backend = OpenAIBackend([server.base_url], "m", max_retries=1, timeout_s=10, max_concurrency=1)
        failed, ok = run(generate(backend, [GenerationRequest(messages=HELLO), GenerationRequest(messages=HELLO)]))
    assert isinstance(failed, BackendError)
    assert "HTTP 500" in str(failed) and server.base_url in str(failed)
    assert isinstance(ok, list) and ok[0].text.startswith("answer")
    assert backend.usage.failed_requests == 1


def test_a_server_that_never_answers_ends_in_a_timeout_error():
    with SilentServer() as server:
        backend = OpenAIBackend([server.base_url], "m", max_retries=1, timeout_s=0.5)
        started = time.monotonic()
        [result] = run(generate(backend, [GenerationRequest(messages=HELLO)]))
        elapsed = time.monotonic() - started
    assert isinstance(result, BackendError)
    message = str(result)
    assert server.base_url in message and "no answer within 0.5 s" in message and "2 attempts" in message
    assert elapsed < 5


def test_n_is_emulated_with_distinct_seeds_when_the_server_ignores_it():
    with ScriptedOpenAIServer(ignore_n=True) as server:
        backend = OpenAIBackend([server.base_url], "m", n_mode="auto")
        [result] = run(generate(backend, [GenerationRequest(messages=HELLO, n=4, seed=100, temperature=1.0)]))
    assert [g.text for g in result] == [f"answer seed={100 + i} choice=0" for i in range(4)]
    assert server.requests[0]["seed"] == 100  # the first request asks for all n
    assert sorted(r["seed"] for r in server.requests) == [100, 101, 102, 103]


def test_native_n_is_one_request_when_the_server_honours_it():
    with ScriptedOpenAIServer() as server:
        backend = OpenAIBackend([server.base_url], "m", n_mode="auto")
        [result] = run(generate(backend, [GenerationRequest(messages=HELLO, n=3, seed=1)]))
    assert len(result) == 3 and len(server.requests) == 1 and server.requests[0]["n"] == 3
    assert backend.usage.prompt_tokens == 10 and backend.usage.completion_tokens == 9


def test_seeds_mode_never_sends_n():
    with ScriptedOpenAIServer() as server:
        backend = OpenAIBackend([server.base_url], "m", n_mode="seeds")
        [result] = run(generate(backend, [GenerationRequest(messages=HELLO, n=3, seed=7)]))
    assert len(result) == 3
    assert sorted(r["seed"] for r in server.requests) == [7, 8, 9]
    assert all("n" not in r for r in server.requests)


def test_several_base_urls_are_used_round_robin():
    with ScriptedOpenAIServer() as first, ScriptedOpenAIServer() as second:
        backend = OpenAIBackend([first.base_url, second.base_url], "m")
        results = run(generate(backend, [GenerationRequest(messages=HELLO) for _ in range(6)]))
    assert all(isinstance(r, list) for r in results)
    assert len(first.requests) == 3 and len(second.requests) == 3


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_concurrency_limit_is_respected_and_used(limit):
    """The server counts the requests it is answering at once: never more than the limit, and the limit is
    reached (requests that each take 0.2 s keep it busy)."""
    script = [Action(delay_s=0.2) for _ in range(8)]
    with ScriptedOpenAIServer(script) as server:
        backend = OpenAIBackend([server.base_url], "m", max_concurrency=limit)
        results = run(generate(backend, [GenerationRequest(messages=HELLO) for _ in range(8)]))
    assert all(isinstance(r, list) for r in results)
    assert server.max_in_flight == limit


def test_credentials_in_a_url_never_reach_messages():
    assert redact_url("http://user:s3cret@127.0.0.1:9/v1") == "http://127.0.0.1:9/v1"
    with SilentServer() as server:
        url = server.base_url.replace("http://", "http://user:s3cret@")
        backend = OpenAIBackend([url], "m", api_key="sk-canary-123", max_retries=0, timeout_s=0.3)
        [result] = run(generate(backend, [GenerationRequest(messages=HELLO)]))
    assert isinstance(result, BackendError)
    assert "s3cret" not in str(result) and "sk-canary" not in str(result)


def test_a_prompt_whose_resample_request_fails_is_failed_not_short():
    """The first answers repeat (so a second round asks for more), and that request fails: the prompt is
    reported failed with none of its answers, so a rerun asks again instead of keeping fewer for good."""
    with ScriptedOpenAIServer([Action(content="the same answer"), Action(500)]) as server:
        backend = OpenAIBackend([server.base_url], "m", max_retries=0, timeout_s=10, n_mode="native")
        prompt = PromptItem(id="p", messages=HELLO)
        result = run(sample_candidates(backend, [prompt], SamplingSection(n=3), run_seed=1))
        run(backend.aclose())
    assert [r.get("n") for r in server.requests] == [3, 2]  # the top-up asked for the two missing answers
    assert result.candidates == [] and not result.short
    assert "HTTP 500" in result.failures["p"]
