"""Many prompts per completions request: batching, order kept, and the fallbacks, against a real loopback server.

The server is benchmarks/fake_openai_server.py in its own process (tests/fake_server_process.py): a stand-in
for vLLM's completions API (a list of prompts, legacy logprobs), which cannot run on this machine;
`--completions single` behaves as `transformers serve` does (one string prompt) and `none` as a server
without the completions API.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from benchmarks.fake_openai_server import p_a_for
from rlaif.config import ConfigError, ModelSection
from rlaif.generation.chat_template import ChatTemplate
from rlaif.generation.factory import open_backend
from rlaif.generation.openai_backend import OpenAIBackend
from rlaif.generation.protocol import GenerationRequest
from rlaif.judges.pairwise import PairwiseLLMJudge
from rlaif.judges.templates import load_template
from rlaif.schema import Candidate, Pair, PromptItem
from tests.fake_server_process import fake_servers


def pairs(count: int) -> list[Pair]:
    made = []
    for i in range(count):
        prompt = PromptItem(messages=[{"role": "user", "content": f"Question {i}: why is the sky blue?"}])
        a = Candidate(prompt_id=prompt.id, text=f"Rayleigh scattering, answer {i}.", model="m")
        b = Candidate(prompt_id=prompt.id, text=f"Because it reflects the sea, answer {i}.", model="m")
        made.append(Pair(prompt=prompt, a=a, b=b))
    return made


async def judge_with(server: str, smollm2_dir, prompts_per_request: int, items: list[Pair]):
    template = ChatTemplate.from_model_dir(smollm2_dir)
    backend = OpenAIBackend(
        [f"{server}/v1"], "fake-judge", max_retries=0, prompts_per_request=prompts_per_request, chat_template=template
    )
    try:
        found = await backend.probe_completions()
        judge = PairwiseLLMJudge(backend, load_template("helpfulness", "logprob"), "logprob", name="fake-judge")
        return found, judge, await judge.judge(items), template
    finally:
        await backend.aclose()


def judged_on(tmp_path, smollm2_dir, completions: str, count: int):
    """`count` pairs judged in logprob mode against a server of the given kind: what the probe found, the
    judge, the judgments and the chat template used, and what the server counted."""
    items = pairs(count)
    with fake_servers(tmp_path, 0, completions=completions) as (server,):
        found, judge, judgments, template = asyncio.run(judge_with(server.url, smollm2_dir, 8, items))
        return items, found, judge, judgments, template, server.stats()


def assert_each_answer_is_its_prompts(judge: PairwiseLLMJudge, template: ChatTemplate, items, judgments) -> None:
    """p(A) of every pair is what the fake server answers for that pair's two rendered prompts."""
    for pair, judgment in zip(items, judgments, strict=True):
        first = p_a_for(template.render(judge.prompt_messages(pair, False), "[["))
        second = p_a_for(template.render(judge.prompt_messages(pair, True), "[["))
        assert math.isclose(judgment.p_a, (first + (1 - second)) / 2, abs_tol=1e-9)


def test_a_list_of_prompts_per_request_keeps_each_answer_with_its_prompt(tmp_path, smollm2_dir):
    items, found, judge, judgments, template, seen = judged_on(tmp_path, smollm2_dir, "list", 10)
    assert found == "list"
    # 20 orders in requests of 8, 8 and 4, after the probe (a list of 2); no chat request at all
    assert seen["requests_by_path"] == {"/v1/completions": 4}
    assert seen["prompts"] == 2 + 20
    assert all(j.status == "ok" for j in judgments)
    assert_each_answer_is_its_prompts(judge, template, items, judgments)
    assert judge.max_tokens == 1 and judge.prefill == "[["  # the prefill is rendered into the prompt


def test_a_server_that_takes_one_prompt_gets_one_per_request(tmp_path, smollm2_dir):
    items, found, judge, judgments, template, seen = judged_on(tmp_path, smollm2_dir, "single", 3)
    assert found == "single"
    assert seen["requests_by_path"] == {"/v1/completions": 2 + 6}  # the refused list and the single probe, then 6
    assert_each_answer_is_its_prompts(judge, template, items, judgments)


def test_a_server_without_the_completions_api_is_judged_through_chat(tmp_path, smollm2_dir):
    _, found, judge, judgments, _, seen = judged_on(tmp_path, smollm2_dir, "none", 3)
    assert found == "none"
    assert seen["requests_by_path"] == {"/v1/chat/completions": 6}  # the 404 probe is not counted
    assert judge.prefill is None  # no completions API and no continue_final_message: nothing to prefill
    assert all(j.status == "ok" for j in judgments)


def test_sampled_requests_go_one_per_request_with_their_seed(tmp_path, smollm2_dir):
    requests = [GenerationRequest(messages=[{"role": "user", "content": f"q{i}"}], temperature=0.0) for i in range(4)]
    requests += [
        GenerationRequest(messages=[{"role": "user", "content": "s"}], temperature=0.9, seed=i) for i in (1, 2)
    ]

    async def run(server: str):
        backend = OpenAIBackend(
            [f"{server}/v1"],
            "fake-judge",
            prompts_per_request=4,
            chat_template=ChatTemplate.from_model_dir(smollm2_dir),
        )
        try:
            await backend.probe_completions()
            return await backend.generate(requests)
        finally:
            await backend.aclose()

    with fake_servers(tmp_path, 0) as (server,):
        results = asyncio.run(run(server.url))
        seen = server.stats()
    assert len(results) == 6 and all(isinstance(r, list) and len(r) == 1 for r in results)
    assert seen["requests_by_path"] == {"/v1/completions": 1 + 1 + 2}  # probe, the 4 greedy together, 2 sampled


def test_open_backend_without_a_chat_template_says_which_key_to_set(tmp_path):
    section = ModelSection(
        backend="openai", model="served-name", base_urls=["http://127.0.0.1:9/v1"], prompts_per_request=8
    )

    async def open_it():
        async with open_backend(section, where="judge"):
            pass

    with pytest.raises(ConfigError, match="judge.chat_template_from"):
        asyncio.run(open_it())
