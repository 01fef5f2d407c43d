"""The cost ledger and the budget: tokens counted from the server's usage fields per stage, money from the price
table, a run stopped cleanly before it passes its budget (finished shards kept), and a rerun with a higher budget
continuing from them without asking the server again for what is done."""

from __future__ import annotations

import asyncio
import re

import pytest

from rlaif.config import load_config
from rlaif.flows.label import label_pipeline
from rlaif.pipeline.cost_ledger import ledger_totals
from rlaif.run_directory import RunDirectory
from tests.scripted_openai_server import ScriptedOpenAIServer
from tests.test_labeling_flow import fake_judge_or_policy, prompts_file, scripted_overrides


def counted(requests: list[dict], model: str) -> int:
    """Tokens the scripted server reported for a model's requests: 10 prompt + 3 per choice each."""
    return sum(10 + 3 * int(r.get("n") or 1) for r in requests if r.get("model") == model)


PRICES = [
    "cost.prices.policy.prompt_per_million=1000",
    "cost.prices.policy.completion_per_million=2000",
    "cost.prices.judge.prompt_per_million=3000",
    "cost.prices.judge.completion_per_million=4000",
]


def test_the_budget_stops_the_run_cleanly_and_a_higher_one_continues_it(tmp_path):
    prompts = prompts_file(tmp_path, 20)  # 4 shards of 5 prompts
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        # Sampling a shard costs 5 x (10 + 9) = 95 tokens. The first two shards start together (nothing is known
        # yet), then 190 + 95 for one more would pass 250: the third never starts.
        config = load_config(
            None, scripted_overrides(server, prompts, tmp_path / "run", "cost.budget_tokens=250", *PRICES)
        )
        report = asyncio.run(label_pipeline(config))
        assert report["status"] == "stopped_by_budget"
        # (spent: the finished shard and what the other in flight had used by then; both finish)
        assert re.match(r"budget reached: the run has spent \d+ tokens of its budget of 250 tokens", report["message"])
        assert len(list((tmp_path / "run" / "candidates").glob("*.jsonl"))) == 2
        assert not (tmp_path / "run" / "judgments").exists()
        sampled_first = len(server.requests)
        assert report["cost"]["tokens"] == counted(server.requests, "policy") == 190
        assert report["cost"]["stages"]["sampling"]["policy"]["money"] == pytest.approx(
            (100 * 1000 + 90 * 2000) / 1e6
        )  # 10 requests: 10 prompt + 9 completion tokens each

        config = load_config(
            None, scripted_overrides(server, prompts, tmp_path / "run", "cost.budget_tokens=100000", *PRICES)
        )
        report = asyncio.run(label_pipeline(config))
    assert report.get("status") != "stopped_by_budget" and report["pairs"] == 60
    later = server.requests[sampled_first:]
    assert sum(1 for r in later if r.get("model") == "policy") == 10  # only the two shards left were sampled
    cost = ledger_totals(RunDirectory(tmp_path / "run"), config.cost)
    assert cost == report["cost"]
    policy, judge = cost["stages"]["sampling"]["policy"], cost["stages"]["judging"]["judge"]
    assert policy["prompt_tokens"] + policy["completion_tokens"] == counted(server.requests, "policy") == 380
    assert judge["prompt_tokens"] + judge["completion_tokens"] == counted(server.requests, "judge")
    assert judge["requests"] == 120 and judge["shards"] == 4  # 60 pairs in both orders
    assert cost["money"] == pytest.approx(policy["money"] + judge["money"])


def test_a_money_budget_needs_prices(tmp_path):
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        config = load_config(
            None, scripted_overrides(server, prompts_file(tmp_path, 20), tmp_path / "run", "cost.budget=1.0")
        )
        report = asyncio.run(label_pipeline(config))
    assert report["status"] == "stopped_by_budget"
    assert "cost.budget is set but the run's models are not all in cost.prices" in report["message"]
