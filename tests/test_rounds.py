"""Iterative rounds (`run.rounds`): each round samples from and trains from the policy kept after the one before, and
its policy is kept only when its win rate clears `eval.promote_above` with its interval; a run killed in round 2
continues without computing round 1 again.

The end-to-end test runs `rlaif demo --auto-review` on a tiny random-weight Qwen2 (policy, DPO) and MiniLM (reward
model). Its judges are a scripted OpenAI-compatible endpoint (tests/scripted_openai_server.py), which stands in for
a judge model here because a coin-flip tiny judge would make the promotion decisions unknowable in advance: the
labeling judge prefers the shorter answer, the evaluation judge always answers [[A]], so that every comparison is a
tie in the two orders, a win rate of exactly 50% with the interval 50-50%."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rlaif.config import ConfigError, load_config
from rlaif.evaluation.policy_eval import win_rate
from rlaif.pipeline.rounds import promotion, round_config
from tests.review_fixtures import RLAIF
from tests.scripted_openai_server import ScriptedOpenAIServer, judge_prompt
from tests.test_certified_review import ANSWER
from tests.test_labeling_flow import prompts_file


def test_a_policy_that_wins_is_kept_and_one_that_loses_or_cannot_be_told_apart_is_not():
    wins = win_rate([1.0] * 17 + [0.5] * 2 + [0.0], seed=0)
    losses = win_rate([0.0] * 15 + [1.0] * 5, seed=0)
    even = win_rate([1.0, 0.0] * 10, seed=0)
    assert wins["ci95"][0] > 0.5 and losses["ci95"][1] < 0.5 and even["ci95"][0] < 0.5 < even["ci95"][1]

    kept, why = promotion(wins, 0.5)
    assert kept and why.startswith("the new policy is kept: win rate 90% against the previous policy")
    assert "clears eval.promote_above (50%)" in why
    for evaluation in (losses, even):
        kept, why = promotion(evaluation, 0.5)
        assert not kept and "the interval's lower end is below eval.promote_above (50%)" in why
    assert promotion(even, 0.0)[0]  # 0: every round's policy is kept
    assert not promotion(wins, 0.99)[0]
    assert promotion(None, 0.0) == (False, "the previous policy is kept: no comparison with it was judged")


def test_round_k_starts_from_the_kept_policy_in_its_own_folder_and_queue(tmp_path):
    config = load_config(
        None,
        [f"run.dir={tmp_path / 'run'}", "run.name=iterated", "run.rounds=3", "eval.held_out_fraction=0.1"],
    )
    first = round_config(config, 1, "smollm2-135m-instruct")
    assert first.run.name == "iterated-round-1" and first.run.directory() == tmp_path / "run" / "round-1"
    assert first.policy.model == config.policy.model and first.train.dpo.reference is None
    assert first.eval.reference is None and first.run.rounds == 1
    assert first.review_db() == config.review_db() == f"sqlite:///{tmp_path / 'review.db'}"

    kept = str(tmp_path / "run" / "round-1" / "train" / "dpo")
    second = round_config(config, 2, kept)
    assert second.policy.model == second.train.dpo.model == second.eval.reference == kept
    assert second.train.dpo.reference is None  # run.round_reference: previous, the policy it trains from
    config.run.round_reference = "original"
    assert round_config(config, 2, kept).train.dpo.reference == "smollm2-135m-instruct"


@pytest.mark.parametrize(
    ("sets", "problem"),
    [
        (["eval.held_out_fraction=0", "eval.prompts=null"], "no evaluation prompts"),
        (["train.in_pipeline=false"], "each round trains"),
        (["policy.backend=openai", "policy.base_urls=[http://127.0.0.1:9]"], "launched server"),
        (["review.deadline_hours=24"], "review.deadline_hours is set"),
    ],
)
def test_rounds_refuse_a_config_they_cannot_run(sets, problem):
    with pytest.raises(ConfigError, match=f"run.rounds=2: .*{problem}"):
        load_config(None, ["run.rounds=2", "eval.held_out_fraction=0.2", *sets])


def shorter_answer_or_always_a(body: dict) -> str:
    """The labeling judge prefers the shorter answer (the smaller hash between equals); the evaluation judge always
    answers [[A]]."""
    if body["model"] == "eval-judge":
        return "[[A]]"
    first, second = (text for _, text in sorted(ANSWER.findall(judge_prompt(body))))
    return "[[A]]" if (len(first), first) <= (len(second), second) else "[[B]]"


def modified(paths: list[Path]) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in paths}


def test_two_rounds_killed_in_round_two_continue_without_computing_round_one_again(tmp_path, tiny_qwen2):
    tiny, _ = tiny_qwen2
    run = tmp_path / "run"
    with ScriptedOpenAIServer(reply=shorter_answer_or_always_a) as server:
        settings = [
            f"prompts.path={prompts_file(tmp_path, 16)}",
            "prompts.limit=null",
            f"run.dir={run}",
            "run.name=iterated",
            "run.rounds=2",
            "run.round_reference=original",
            "run.prompts_per_shard=4",
            f"policy.model={tiny}",
            "sampling.n=2",
            "sampling.max_tokens=8",
            "judge.backend=openai",
            f"judge.base_urls=[{server.base_url}]",
            "judge.model=judge",
            "judge.mode=verdict",
            "review.fraction=0.1",
            "review.audit_fraction=0.05",
            "train.eval_size=2",
            "train.reward.epochs=1",
            "train.reward.max_length=48",
            f"train.dpo.model={tiny}",
            "train.dpo.max_steps=2",
            "train.dpo.batch_size=2",
            "train.dpo.max_length=48",
            "train.label_value=false",
            "eval.held_out_fraction=0.3",
            "eval.prompts=null",
            "eval.limit=null",
            "eval.refusal_prompts=0",
            "eval.judge.backend=openai",
            f"eval.judge.base_urls=[{server.base_url}]",
            "eval.judge.model=eval-judge",
            "eval.judge.mode=verdict",
            "eval.promote_above=0.5",
        ]
        command = [RLAIF, "demo", "--auto-review", *[item for value in settings for item in ("--set", value)]]
        with (tmp_path / "killed.log").open("w") as log:  # what the killed run said, for a failing test
            process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True, cwd=tmp_path)
            deadline = time.monotonic() + 600
            while not list((run / "round-2" / "judgments").glob("*.jsonl")) and time.monotonic() < deadline:
                assert process.poll() is None, f"the run ended before round 2 judged a shard: see {log.name}"
                time.sleep(0.05)
            os.killpg(process.pid, signal.SIGKILL)  # the demo and its Prefect server, as when the machine is lost
            assert process.wait(timeout=60) == -signal.SIGKILL

        record = json.loads((run / "rounds.json").read_text())
        assert [r["round"] for r in record["rounds"]] == [1]
        first = record["rounds"][0]
        assert first["promoted"] and first["kept"] == first["policy"] == str(run / "round-1" / "train" / "dpo")
        assert first["evaluation"]["win_rate"] == 0.5 and first["evaluation"]["ci95"] == [0.5, 0.5]
        assert "clears eval.promote_above (50%)" in first["reason"]
        round_one = modified([p for p in (run / "round-1").rglob("*") if p.is_file()])
        assert not (run / "round-2" / "train").exists()

        finished = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert modified(list(round_one)) == round_one  # round 1 is not computed again, not even rewritten
        assert "round 1: finished earlier, not computed again" in finished.stderr
        assert "(finished earlier or by another worker, reused)" in finished.stderr  # round 2's judged shards

        record = json.loads((run / "rounds.json").read_text())
        second = record["rounds"][1]
        assert second["trained_from"] == first["policy"] and second["reference"] == tiny  # the original model
        assert second["promoted"] and record["policy"] == second["policy"] == str(run / "round-2" / "train" / "dpo")
        round_two = load_config(run / "round-2" / "config.yaml")
        assert round_two.policy.model == round_two.eval.reference == first["policy"]  # sampled from round 1's
        dpo = json.loads((run / "round-2" / "train" / "dpo" / "eval_report.json").read_text())
        assert dpo["model"] == first["policy"] and dpo["reference"] == tiny
        assert f"policy kept after 2 of 2 rounds: {second['policy']}" in finished.stdout

        # A third round whose policy does not clear a higher bar: the second round's policy stays.
        third = subprocess.run(
            [*command, "--set", "run.rounds=3", "--set", "eval.promote_above=0.6"],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
    assert third.returncode == 0, third.stderr[-3000:]
    record = json.loads((run / "rounds.json").read_text())
    assert [r["promoted"] for r in record["rounds"]] == [True, True, False]
    assert record["rounds"][2]["kept"] == record["policy"] == second["policy"]
    assert "the interval's lower end is below eval.promote_above (60%)" in record["rounds"][2]["reason"]
    assert f"policy kept after 3 of 3 rounds: {second['policy']}" in third.stdout
    page = (run / "report.html").read_text()
    assert page.count('<tr id="round-') == 3 and 'href="round-3/report.html"' in page
    assert "<svg" in page and "below eval.promote_above (60%)" in page and "no: lower end 50% &lt; 60%" in page
    assert "round 2&#39;s policy" in page  # round 3 trained from it
    assert 'Round 3 of a run of rounds: <a href="../report.html">' in (run / "round-3" / "report.html").read_text()


def test_a_deployment_of_rounds_continues_when_a_rounds_review_queue_empties(tmp_path):
    from rlaif.flows.deployments import build_deployments

    sets = [f"run.dir={tmp_path / 'run'}", "run.name=iterated", "eval.held_out_fraction=0.1"]
    triggers = {
        rounds: {
            d.flow_name: d.triggers
            for d in build_deployments(None, [], load_config(None, sets + [f"run.rounds={rounds}"]))
        }
        for rounds in (1, 2)
    }
    assert triggers[1]["rlaif-pipeline"] == []
    (continued,) = triggers[2]["rlaif-pipeline"]
    assert continued.expect == {"rlaif.review.queue-emptied"}
    assert continued.match.model_dump() == {"rlaif.run": "iterated-round-*"}
    assert [t.match.model_dump() for t in triggers[2]["rlaif-merge"]] == [{"rlaif.run": "iterated"}]
