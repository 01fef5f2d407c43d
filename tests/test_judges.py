"""Judges: both orders combined, parse retry, failures as statuses, ensembles, reward-model scoring."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from rlaif.generation.openai_backend import OpenAIBackend
from rlaif.judges.ensemble import EnsembleJudge
from rlaif.judges.pairwise import PairwiseLLMJudge
from rlaif.judges.reward_model import RewardModelJudge, RewardModelScorer, encode_reward_inputs
from rlaif.judges.templates import load_template
from rlaif.models import prepare_model
from rlaif.schema import Candidate, Pair, PromptItem
from tests.scripted_openai_server import Action, ScriptedOpenAIServer, judge_prompt

PROMPT = PromptItem(messages=[{"role": "user", "content": "What is the capital of France?"}])
GOOD = Candidate(prompt_id=PROMPT.id, text="Paris is the capital of France.", model="m")
BAD = Candidate(prompt_id=PROMPT.id, text="Bananas are yellow.", model="m")


def pairs() -> list[Pair]:
    return [Pair(prompt=PROMPT, a=GOOD, b=BAD), Pair(prompt=PROMPT, a=BAD, b=GOOD, swapped=True)]


def answer_shown_as(body: dict, letter: str) -> str:
    match = re.search(rf"<answer_{letter}>\n(.*?)\n</answer_{letter}>", judge_prompt(body), re.S)
    assert match, judge_prompt(body)
    return match.group(1)


def knows_paris(body: dict) -> str:
    """A fake judge that is right: it picks whichever answer mentions Paris."""
    return "[[A]]" if "Paris" in answer_shown_as(body, "a") else "[[B]]"


def always_first(body: dict) -> str:
    return "[[A]]"


def run_judge(server: ScriptedOpenAIServer, **options) -> list:
    async def go():
        backend = OpenAIBackend([server.base_url], "judge", max_concurrency=4, max_retries=0, timeout_s=5)
        try:
            judge = PairwiseLLMJudge(
                backend, load_template(options.pop("prompt", "helpfulness")), "verdict", name="judge", **options
            )
            return await judge.judge(pairs())
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_each_pair_is_judged_in_both_orders_and_combined():
    with ScriptedOpenAIServer(reply=knows_paris) as server:
        first, second = run_judge(server)
    assert len(server.requests) == 4
    assert (first.winner, first.p_a, first.confidence, first.order_disagreement) == ("a", 1.0, 1.0, False)
    assert (second.winner, second.p_a) == ("b", 0.0)
    assert first.raw_outputs == ("[[A]]", "[[B]]")
    assert first.template_hash == load_template("helpfulness").hash and first.judge_model == "judge"
    shown_first = {answer_shown_as(r, "a") for r in server.requests}
    assert shown_first == {GOOD.text, BAD.text}  # each answer was shown first once per pair


def test_position_bias_is_flagged_and_cancels_out():
    with ScriptedOpenAIServer(reply=always_first) as server:
        judgments = run_judge(server)
    for judgment in judgments:
        assert judgment.order_disagreement and judgment.winner == "tie" and judgment.confidence == 0.0


def test_an_unparseable_reply_is_retried_once_at_temperature_zero():
    script = [
        Action(content="I think the first one."),
        Action(content="Hmm."),
        Action(content="[[A]]"),
        Action(content="[[B]]"),
    ]
    with ScriptedOpenAIServer(script, reply=knows_paris) as server:  # the retries get real verdicts
        judgments = run_judge(server, temperature=0.7)
    temperatures = [r["temperature"] for r in server.requests]
    assert temperatures.count(0.7) == 4 and temperatures.count(0.0) == 2
    assert all(j.status == "ok" for j in judgments)


def test_a_reply_that_never_parses_gets_parse_error_not_a_label():
    with ScriptedOpenAIServer(reply=lambda body: "No verdict from me.") as server:
        judgments = run_judge(server, temperature=0.7)
    assert len(server.requests) == 8  # 4 calls, each retried once at temperature 0
    for judgment in judgments:
        assert judgment.status == "parse_error" and judgment.winner is None and judgment.p_a is None
        assert "no [[A]] / [[B]] verdict" in judgment.error
        assert judgment.raw_outputs == ("No verdict from me.", "No verdict from me.")


def test_a_greedy_reply_that_does_not_parse_is_not_asked_again():
    """At temperature 0 the same request gives the same reply: asking again would only cost a request."""
    with ScriptedOpenAIServer(reply=lambda body: "No verdict from me.") as server:
        judgments = run_judge(server)
    assert len(server.requests) == 4 and {r["temperature"] for r in server.requests} == {0.0}
    assert all(j.status == "parse_error" for j in judgments)


def test_a_backend_failure_gets_backend_error():
    with ScriptedOpenAIServer([Action(500)] * 4, reply=knows_paris) as server:
        judgments = run_judge(server)
    assert {j.status for j in judgments} == {"backend_error"}
    assert all("HTTP 500" in j.error for j in judgments)


def test_the_constitution_principle_is_recorded():
    with ScriptedOpenAIServer(reply=knows_paris) as server:
        judgments = run_judge(server, prompt="constitution", seed=5)
    principles = set(load_template("constitution").header.principles)
    for judgment in judgments:
        assert judgment.principle in principles
        # the judge saw the same principle in both orders
    seen = [p for p in principles if all(p in judge_prompt(r) for r in server.requests[:2])]
    assert judgments[0].principle in seen


def test_an_ensemble_averages_and_flags_disagreement():
    with (
        ScriptedOpenAIServer(reply=knows_paris) as right,
        ScriptedOpenAIServer(reply=lambda body: "[[B]]" if "Paris" in answer_shown_as(body, "a") else "[[A]]") as wrong,
    ):

        async def go():
            backends = [OpenAIBackend([s.base_url], "judge", max_retries=0) for s in (right, wrong)]
            members = [
                PairwiseLLMJudge(b, load_template("helpfulness"), "verdict", name=n)
                for b, n in zip(backends, ("right", "wrong"), strict=True)
            ]
            try:
                ensemble = EnsembleJudge(members)
                return ensemble.name, await ensemble.judge(pairs())
            finally:
                for b in backends:
                    await b.aclose()

        name, judgments = asyncio.run(go())
    assert name == "ensemble[right|wrong]"
    assert all(j.p_a == 0.5 and j.judge_disagreement and j.winner == "tie" for j in judgments)


def one_score(scorer: RewardModelScorer, answer: str) -> float:
    """The model's score for one (PROMPT, answer), computed here without the scorer's batching and padding:
    its weights (the head of an untrained backbone is drawn at load time), the shared input format, one input."""
    import torch

    encoded = encode_reward_inputs(scorer.tokenizer, [PROMPT.chat()], [answer], 512, return_tensors="pt")
    with torch.inference_mode():
        return float(scorer.model(**encoded).logits[0, 0])


def test_reward_model_judge_is_sigmoid_of_the_score_difference(tmp_path):
    encoder = prepare_model("all-minilm-l6-v2")
    scorer = RewardModelScorer(str(encoder))
    judge = RewardModelJudge(scorer, name="minilm")
    judgments = asyncio.run(judge.judge(pairs()))
    r_good, r_bad = (one_score(scorer, GOOD.text), one_score(scorer, BAD.text))
    assert r_good != r_bad
    assert judgments[0].p_a == pytest.approx(1 / (1 + math.exp(-(r_good - r_bad))), abs=1e-5)
    assert judgments[1].p_a == pytest.approx(1 - judgments[0].p_a, abs=1e-5)  # symmetric by construction
    assert judgments[0].status == "ok" and judgments[0].raw_outputs[0].startswith("reward_a=")


def test_logprob_mode_over_an_endpoint_that_returns_top_logprobs():
    """vLLM and OpenAI return top_logprobs: p(A) comes from them, no text parsing involved."""

    def logprobs(body: dict) -> list[dict]:
        p_first = 0.8 if "Paris" in answer_shown_as(body, "a") else 0.3
        top = [{"token": "A", "logprob": math.log(p_first)}, {"token": "B", "logprob": math.log(1 - p_first)}]
        return [
            {"token": "[[", "logprob": -0.01, "top_logprobs": []},
            {"token": "A", "logprob": math.log(p_first), "top_logprobs": top},
        ]

    with ScriptedOpenAIServer(reply=lambda body: "[[A]]", logprobs=logprobs) as server:

        async def go():
            backend = OpenAIBackend([server.base_url], "judge", max_retries=0)
            try:
                judge = PairwiseLLMJudge(backend, load_template("helpfulness"), "logprob", name="judge")
                return await judge.judge(pairs())
            finally:
                await backend.aclose()

        first, second = asyncio.run(go())
    assert all(r["logprobs"] is True and r["top_logprobs"] == 20 and r["temperature"] == 0.0 for r in server.requests)
    assert first.p_a == pytest.approx((0.8 + (1 - 0.3)) / 2) and first.winner == "a"
    assert second.p_a == pytest.approx((0.3 + (1 - 0.8)) / 2) and second.winner == "b"


def test_a_json_template_sends_its_schema_when_asked(tmp_path):
    template = tmp_path / "json.md.j2"
    template.write_text(
        "---\nname: j\noutput: json\nmodes: [verdict]\n---\n{{ question }} <answer_a>{{ answer_a }}"
        '</answer_a> <answer_b>{{ answer_b }}</answer_b> Reply {"verdict": "A"|"B"|"C"}.\n'
    )
    with ScriptedOpenAIServer(reply=lambda body: '{"verdict": "B"}') as server:

        async def go():
            backend = OpenAIBackend([server.base_url], "judge", max_retries=0)
            try:
                judge = PairwiseLLMJudge(
                    backend, load_template(str(template)), "verdict", name="judge", response_format=True
                )
                return await judge.judge(pairs())
            finally:
                await backend.aclose()

        judgments = asyncio.run(go())
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["verdict"]["enum"] == ["A", "B", "C"]
    assert all(j.order_disagreement and j.winner == "tie" for j in judgments)  # always "B": position bias
