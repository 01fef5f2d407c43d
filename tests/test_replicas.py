"""Replicas of one model behind several base URLs: a replica killed mid-run, load-aware choice, and a
restarted replica back in the rotation after its cool-down.

The replicas are fake model servers in processes of their own (tests/fake_server_process.py: stand-ins
for vLLM replicas, which cannot run on this machine); one is killed with SIGKILL, as a crashed server or a
lost node is, and started again on its port.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks.harness import free_port
from rlaif.generation.openai_backend import CircuitBreaker, OpenAIBackend
from rlaif.generation.protocol import BackendError, EndpointFailure, GenerationRequest
from tests.fake_server_process import fake_servers


def requests(count: int, tag: str = "q") -> list[GenerationRequest]:
    return [GenerationRequest(messages=[{"role": "user", "content": f"{tag}{i}"}], max_tokens=4) for i in range(count)]


def test_a_replica_killed_mid_run_loses_no_request_and_is_back_after_its_restart(tmp_path):
    with fake_servers(tmp_path, 20, 20) as (first, second):
        backend = OpenAIBackend(
            [f"{first.url}/v1", f"{second.url}/v1"],
            "m",
            max_concurrency=16,
            max_retries=1,
            max_failures_in_row=3,
            cool_down_s=1.0,
        )

        async def kill_first_once_it_answered(count: int) -> None:
            while (await asyncio.to_thread(first.stats))["requests"] < count:
                await asyncio.sleep(0.05)
            first.kill()

        async def run() -> tuple[list, list, float]:
            try:
                results, _ = await asyncio.gather(backend.generate(requests(600)), kill_first_once_it_answered(60))
                before = (await asyncio.to_thread(second.stats))["requests"]
                first.start()  # the same port: the replica restarted
                await asyncio.sleep(1.5)  # its cool-down runs out
                later = await backend.generate(requests(200, "r"))
                return results, later, before
            finally:
                await backend.aclose()

        results, later, second_before = asyncio.run(run())
        assert not [r for r in results if isinstance(r, BackendError)]  # every request answered
        assert len(results) == 600 and second_before >= 600 - 60 - 16  # the rest went to the live replica
        assert not [r for r in later if isinstance(r, BackendError)]
        back = first.stats()["requests"]  # the restarted process counts from zero
        assert back >= 50, f"the restarted replica got {back} of 200 requests"


def test_requests_go_to_the_replica_with_the_fewest_in_flight(tmp_path):
    """Round-robin would give a slow replica half the requests; by load it gets few."""
    with fake_servers(tmp_path, 200, 0) as (slow, fast):
        backend = OpenAIBackend([f"{slow.url}/v1", f"{fast.url}/v1"], "m", max_concurrency=8)

        async def run() -> list:
            try:
                return await backend.generate(requests(300))
            finally:
                await backend.aclose()

        results = asyncio.run(run())
        assert not [r for r in results if isinstance(r, BackendError)]
        assert fast.stats()["requests"] > 5 * slow.stats()["requests"] > 0


def test_the_breaker_lets_one_trial_through_after_its_cool_down():
    breaker = CircuitBreaker(threshold=2, cool_down_s=0.2)
    failure = EndpointFailure("http://replica: connection failed")
    breaker.failed(failure)
    assert not breaker.open
    breaker.failed(failure)
    assert breaker.open  # tripped: cooling down
    time.sleep(0.25)
    assert not breaker.open  # half-open: one request may go
    breaker.let_through()
    assert breaker.open  # the trial is out: no second one
    breaker.failed(failure)
    assert breaker.open  # the trial failed: another cool-down
    time.sleep(0.25)
    breaker.let_through()
    breaker.succeeded()
    assert not breaker.open and breaker.failures_in_row == 0
    breaker.let_through()
    assert not breaker.open  # closed: requests are not trials


@pytest.mark.parametrize("threshold", [0, 2])
def test_with_every_replica_down_a_request_fails_with_both_reasons(tmp_path, threshold):
    """Nothing answers at either base URL: the request fails naming each, and no request hangs."""
    dead = [f"http://127.0.0.1:{free_port()}/v1", f"http://127.0.0.1:{free_port()}/v1"]
    backend = OpenAIBackend(dead, "m", max_retries=0, max_failures_in_row=threshold)

    async def run() -> list:
        try:
            return await backend.generate(requests(1))
        finally:
            await backend.aclose()

    (result,) = asyncio.run(run())
    assert isinstance(result, EndpointFailure) and str(result).startswith("every replica failed this request")
    assert all(url in str(result) for url in dead) and str(result).count("connection failed") == 2
    assert backend.usage.requests == 2  # tried at one, then at the other


def test_a_label_run_completes_when_a_judge_replica_is_killed_mid_shard(tmp_path):
    """The labeling flow with two judge replicas, one killed (SIGKILL) while the first shard is judged:
    every pair is judged, none fails, and the rest went to the live replica."""
    from rlaif.config import load_config
    from rlaif.flows.label import label_pipeline
    from tests.scripted_openai_server import ScriptedOpenAIServer
    from tests.test_labeling_flow import fake_judge_or_policy, judgments_of, prompts_file, scripted_overrides

    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as policy, fake_servers(tmp_path, 20, 20) as (first, second):
        overrides = scripted_overrides(
            policy,
            prompts_file(tmp_path, 20),
            tmp_path / "run",
            f"judge.base_urls=[{first.url}/v1, {second.url}/v1]",
            "judge.max_retries=1",
            "judge.max_failures_in_row=3",
        )

        async def run() -> dict:
            async def kill_first_once_it_answered(count: int) -> None:
                while (await asyncio.to_thread(first.stats))["requests"] < count:
                    await asyncio.sleep(0.05)
                first.kill()

            killer = asyncio.create_task(kill_first_once_it_answered(20))
            report = await label_pipeline(load_config(None, overrides))
            assert killer.done()  # it was killed during the run
            return report

        report = asyncio.run(run())
        answered_by_second = second.stats()["requests"]
    judgments = judgments_of(tmp_path / "run")
    assert report["pairs"] == len(judgments) == 20 * 3
    assert all(j.status == "ok" for j in judgments), [j.status for j in judgments]
    assert answered_by_second >= 2 * 60 - 20 - 8  # both orders of every pair, less what the first answered
