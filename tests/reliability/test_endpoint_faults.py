"""Endpoint faults: the labeling run against an OpenAI-compatible endpoint behind a fault-injecting proxy.

Dropped connections, 429 with Retry-After, 500s, answers slower than the timeout, truncated JSON and
valid JSON that makes no sense: the run completes and every pair ends judged or routed with a status.
A dead endpoint trips the circuit breaker: the run fails with a clear message after a bounded number of
requests instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from rlaif.config import load_config
from rlaif.flows.label import label_pipeline
from rlaif.generation.openai_backend import OpenAIBackend
from rlaif.generation.protocol import BackendError, EndpointDown, GenerationRequest
from tests.reliability.fault_proxy import FAULT_KINDS, FaultProxy
from tests.scripted_openai_server import ScriptedOpenAIServer
from tests.test_labeling_flow import RLAIF, fake_judge_or_policy, judgments_of, prompts_file, scripted_overrides

EVERY_FAULT = dict.fromkeys(FAULT_KINDS, 0.04)  # about one request in four gets a fault


def run_with_faults(tmp_path: Path, seed: int, prompts: int) -> tuple[dict, FaultProxy]:
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as upstream:
        with FaultProxy(upstream.base_url, EVERY_FAULT, seed=seed, retry_after_s=1, slow_s=2.0) as proxy:
            overrides = scripted_overrides(
                upstream,
                prompts_file(tmp_path, prompts),
                tmp_path / "run",
                f"policy.base_urls=[{proxy.base_url}]",
                f"judge.base_urls=[{proxy.base_url}]",
                "policy.timeout_s=1",
                "judge.timeout_s=1",
                "policy.max_retries=8",
                "judge.max_retries=8",
            )
            report = asyncio.run(label_pipeline(load_config(None, overrides)))
    return report, proxy


def check_every_prompt_accounted_for(run: Path, report: dict, prompts: int) -> None:
    """Every prompt has its 3 candidates, or is counted short with the pairs its candidates give."""
    found = Counter(
        json.loads(line)["prompt_id"] for path in (run / "candidates").glob("*.jsonl") for line in path.open()
    )
    assert len(found) == report["prompts"] == prompts
    assert report["prompts_short"] == sum(count < 3 for count in found.values())
    assert report["pairs"] == sum(count * (count - 1) // 2 for count in found.values())


def check_every_pair_accounted_for(run: Path, report: dict) -> None:
    pair_ids = {json.loads(line)["id"] for path in (run / "pairs").glob("*.jsonl") for line in path.open()}
    judgments = judgments_of(run)
    assert len(judgments) == len(pair_ids) == report["pairs"]  # one judgment per pair, none twice
    assert {j.pair_id for j in judgments} == pair_ids
    routing = {json.loads(line)["pair_id"]: json.loads(line) for line in (run / "routing.jsonl").open()}
    assert set(routing) == pair_ids
    for judgment in judgments:
        assert judgment.status in ("ok", "parse_error", "backend_error")
        if judgment.status != "ok":  # a failure is never a label: it goes to people, with its reason
            assert judgment.winner is None and judgment.error
            assert routing[judgment.pair_id]["reason"] == "failed"
    assert report["judged_ok"] + report["judge_failed"] == report["pairs"]


def check_retry_after_honoured(proxy: FaultProxy) -> int:
    """Every request answered 429 came back no sooner than Retry-After; returns how many were checked."""
    checked = 0
    for index, logged in enumerate(proxy.log):
        if logged.fault != "429":
            continue
        again = next((later for later in proxy.log[index + 1 :] if later.body_hash == logged.body_hash), None)
        assert again is not None, "a request answered 429 was never sent again"
        assert again.at - logged.at >= proxy.retry_after_s - 0.05
        checked += 1
    return checked


def test_a_run_through_every_kind_of_fault_completes_with_every_pair_accounted_for(tmp_path, prefect_server, figures):
    report, proxy = run_with_faults(tmp_path, seed=1, prompts=20)
    check_every_prompt_accounted_for(tmp_path / "run", report, prompts=20)
    assert report["prompts_short"] <= 1  # short only when a faulty answer repeats one from an earlier round
    check_every_pair_accounted_for(tmp_path / "run", report)
    assert all(proxy.faults[kind] > 0 for kind in FAULT_KINDS), proxy.faults
    assert check_retry_after_honoured(proxy) == proxy.faults["429"]
    print(
        f"faults injected: {dict(proxy.faults)} over {len(proxy.log)} requests; report: {report['judge_failed']} failed"
    )
    record_faults(figures, 1, proxy, report)


@pytest.mark.long
@pytest.mark.parametrize("seed", range(2, 7))
def test_long_runs_through_faults_with_other_seeds(tmp_path, prefect_server, seed, figures):
    report, proxy = run_with_faults(tmp_path, seed=seed, prompts=60)
    check_every_prompt_accounted_for(tmp_path / "run", report, prompts=60)
    check_every_pair_accounted_for(tmp_path / "run", report)
    assert check_retry_after_honoured(proxy) == proxy.faults["429"]
    print(f"seed {seed}: faults injected: {dict(proxy.faults)} over {len(proxy.log)} requests")
    record_faults(figures, seed, proxy, report)


def record_faults(figures: dict, seed: int, proxy: FaultProxy, report: dict) -> None:
    figures.setdefault("endpoint_faults", []).append(
        {
            "seed": seed,
            "requests": len(proxy.log),
            "faults": dict(proxy.faults),
            "pairs": report["pairs"],
            "judge_failed": report["judge_failed"],
        }
    )


def test_a_dead_judge_endpoint_stops_the_run_with_a_clear_message_after_bounded_requests(tmp_path, figures):
    threshold, retries, concurrency = 5, 1, 4
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as upstream, FaultProxy(upstream.base_url) as proxy:
        proxy.dead = True
        overrides = scripted_overrides(
            upstream,
            prompts_file(tmp_path, 20),
            tmp_path / "run",
            f"judge.base_urls=[{proxy.base_url}]",
            f"judge.max_retries={retries}",
            f"judge.max_failures_in_row={threshold}",
            f"judge.max_concurrency={concurrency}",
        )
        started = time.monotonic()
        result = subprocess.run(
            [RLAIF, "label", *sum((["--set", o] for o in overrides), [])], capture_output=True, text=True, timeout=300
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # Prefect logs the rest
    assert error.startswith("error: stopped sending requests: no endpoint is answering")
    # The threshold's failures open the breaker; requests already in flight may add theirs to the count.
    failed_in_row = int(re.search(r"(\d+) requests in a row failed, the last with HTTP 503", error).group(1))
    assert threshold <= failed_in_row <= threshold + concurrency and "rerun" in error
    # Requests that reached the dead endpoint: the threshold's worth plus those already in flight, each retried.
    assert len(proxy.log) <= (threshold + concurrency) * (retries + 1)
    assert not list((tmp_path / "run").glob("judgments/*.jsonl"))  # no shard of failures written as data
    assert list((tmp_path / "run").glob("candidates/*.jsonl"))  # sampling's finished shards are kept
    print(f"dead endpoint: {len(proxy.log)} requests, failed after {elapsed:.1f} s")
    figures["dead_endpoint"] = {
        "requests": len(proxy.log),
        "bound": (threshold + concurrency) * (retries + 1),
        "seconds": round(elapsed, 1),
    }


def generate(backend: OpenAIBackend, count: int) -> list:
    async def go() -> list:
        try:
            return await backend.generate(
                [GenerationRequest(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=4) for i in range(count)]
            )
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_a_dead_replica_leaves_the_rotation_and_the_live_one_answers_everything():
    with ScriptedOpenAIServer() as live, FaultProxy(live.base_url) as dead:
        dead.dead = True
        backend = OpenAIBackend([dead.base_url, live.base_url], "m", max_retries=0, max_failures_in_row=3)
        results = generate(backend, 40)
    assert not [r for r in results if isinstance(r, BackendError)]  # each failed there, then answered here
    assert 3 <= len(dead.log) <= 3 + 8  # the threshold, plus what was in flight when the breaker opened
    assert len(live.requests) == 40


def test_truncated_answers_are_asked_again_then_reported_by_name():
    with ScriptedOpenAIServer() as upstream:
        with FaultProxy(upstream.base_url, {"truncated": 0.5}, seed=3) as flaky:
            results = generate(OpenAIBackend([flaky.base_url], "m", max_retries=6), 20)
        assert all(not isinstance(r, BackendError) for r in results), results
        assert all(r[0].text.startswith("answer") for r in results)  # a cut-short answer is never taken as text
        with FaultProxy(upstream.base_url, {"truncated": 1.0}) as broken:
            backend = OpenAIBackend([broken.base_url], "m", max_concurrency=1, max_retries=1, max_failures_in_row=2)
            with pytest.raises(EndpointDown, match="the answer is not valid JSON"):
                generate(backend, 6)
