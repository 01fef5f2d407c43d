"""`rlaif eval policy`: the trained policy against its reference on held-out prompts, judged in both orders, with
an interval, a length-controlled win rate and refusal rates; and the statistics behind them.

The end-to-end test runs a real labeling run and the command against a scripted OpenAI-compatible endpoint
that plays both models, the judge and the refusal reader, so that every figure is known in advance."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess

from rlaif.config import load_config
from rlaif.evaluation.policy_eval import (
    comparison_scores,
    length_controlled_win_rate,
    model_files,
    opens_with_refusal_phrase,
    parse_refused,
    phrase_refusals,
    verdict,
    win_rate,
)
from rlaif.flows.label import label_pipeline
from rlaif.pipeline.report_page import write_html_report
from rlaif.schema import PromptItem
from tests.review_fixtures import RLAIF, label_every_item
from tests.scripted_openai_server import ScriptedOpenAIServer, judge_prompt
from tests.test_certified_review import ANSWER
from tests.test_labeling_flow import prompts_file, scripted_overrides


def test_the_interval_decides_what_the_verdict_may_claim():
    better = win_rate([1.0] * 30 + [0.0] * 10, seed=0)
    assert better["win_rate"] == 0.75 and 0.5 < better["ci95"][0] < 0.75 < better["ci95"][1] <= 1.0
    assert verdict(better).startswith("the trained policy is preferred to its reference: win rate 75%")
    even = win_rate([1.0, 0.0, 0.5] * 10, seed=0)
    assert even["ci95"][0] < 0.5 < even["ci95"][1]
    assert verdict(even).startswith("no difference detected") and "chance is inside" in verdict(even)
    assert verdict(win_rate([0.0] * 20 + [0.5] * 4)).startswith("the trained policy is worse")
    assert win_rate([])["win_rate"] is None


def test_the_length_controlled_win_rate_removes_a_win_that_is_only_length():
    draw = random.Random(0)
    differences = [50.0] * 48 + [-50.0] * 12  # the policy's answer is longer in 48 of 60 comparisons
    for_length = [float(draw.random() < (0.9 if d > 0 else 0.1)) for d in differences]  # the judge likes length
    raw = sum(for_length) / len(for_length)
    controlled = length_controlled_win_rate(for_length, differences)
    assert raw > 0.7 and controlled is not None and abs(controlled - 0.5) < 0.12
    for_quality = [float(draw.random() < 0.9) for _ in differences]  # wins whatever the length
    assert length_controlled_win_rate(for_quality, differences) > 0.8
    assert length_controlled_win_rate([1.0, 0.0] * 4, [1.0] * 8) is None  # too few to say


def test_identical_answers_are_a_tie_without_a_judge_and_refusals_are_read():
    prompts = [PromptItem(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(3)]
    pairs, index, scores = comparison_scores(prompts, ["same", "mine", None], ["same", "theirs", "theirs"])
    assert scores == [0.5, None, None] and index == [1] and pairs[0].a.text == "mine"
    assert parse_refused("[[R]]") is True and parse_refused("C]]") is False and parse_refused("maybe") is None
    assert opens_with_refusal_phrase("I\u2019m sorry, but I can\u2019t help with that.")
    assert opens_with_refusal_phrase("Sure. As an AI I have no opinions, but here is a summary.")
    assert not opens_with_refusal_phrase("To stop a hung process, send it SIGTERM, then SIGKILL.")
    assert not opens_with_refusal_phrase("x" * 300 + " I cannot")  # past the opening: part of an answer
    assert phrase_refusals(["I cannot do that.", "Here you go."]) == {
        "refused": 1,
        "replies": 2,
        "rate": 0.5,
        "ci95": phrase_refusals(["I cannot do that.", "Here you go."])["ci95"],
    }
    assert phrase_refusals([])["rate"] is None


def scripted(body: dict) -> str | None:
    """policy-trained helps at length with benign requests and refuses harmful ones; policy-start answers
    everything briefly; the judge prefers the longer answer; the refusal reader spots "I can't"."""
    user = judge_prompt(body)
    if body["model"] == "policy-trained":
        if "HARMFUL" in user:
            return "I can't help with that."
        return f"Here is a careful, detailed answer to your question, step by step ({body.get('seed')})."
    if body["model"] == "policy-start":
        return f"Sure ({body.get('seed')})."
    if body["model"] != "judge":
        return None
    if "Did the assistant refuse" in user:
        return "[[R]]" if "<reply>\nI can't" in user else "[[C]]"
    answers = dict(ANSWER.findall(user))
    return "[[A]]" if len(answers["a"]) > len(answers["b"]) else "[[B]]"


def test_rlaif_eval_policy_on_the_held_out_prompts(tmp_path, prefect_server):
    harmful, benign = tmp_path / "harmful.jsonl", tmp_path / "benign.jsonl"
    harmful.write_text("".join(json.dumps({"prompt": f"HARMFUL request {i}"}) + "\n" for i in range(3)))
    benign.write_text("".join(json.dumps({"prompt": f"BENIGN request {i}"}) + "\n" for i in range(4)))
    with ScriptedOpenAIServer(reply=scripted) as server:
        config = load_config(
            None,
            scripted_overrides(
                server,
                prompts_file(tmp_path, 20),
                tmp_path / "run",
                "eval.held_out_fraction=0.5",
                "eval.prompts=null",  # the demo config's MT-Bench questions: here the run's own held-out prompts
                "eval.limit=null",
                "run.name=evaluated",
            ),
        )
        asyncio.run(label_pipeline(config))
        run_dir = config.run.directory()
        held_out = (run_dir / "eval_prompts.jsonl").read_text().splitlines()
        labelled = json.loads((run_dir / "report.json").read_text())["prompts"]
        assert 0 < len(held_out) < 20 and labelled == 20 - len(held_out)  # no stage sees a held-out prompt
        command = [RLAIF, "eval", "policy", "--run-dir", str(run_dir), "--policy", "policy-trained"]
        command += ["--reference", "policy-start", "--set", f"eval.harmful_prompts={harmful}"]
        command += ["--set", f"eval.benign_prompts={benign}"]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        requests_after_first = len(server.requests)
        rerun = subprocess.run(command, capture_output=True, text=True)  # answers and verdicts are kept
    assert rerun.returncode == 0 and rerun.stdout == result.stdout
    figures = json.loads((run_dir / "eval" / "policy_eval.json").read_text())
    assert figures["prompts"] == len(held_out) and figures["win_rate"] == 1.0 and figures["ci95"] == [1.0, 1.0]
    assert figures["interval"] == "bootstrap" and figures["length_ratio"] > 3
    assert figures["length_controlled_win_rate"] is None  # every comparison won: nothing to separate
    refusals = figures["refusals"]
    assert {k: v for k, v in refusals["harmful"]["policy"].items() if k not in ("ci95", "by_phrase")} == {
        "prompts": 3,
        "refused": 3,
        "decided": 3,
        "rate": 1.0,
    }
    assert refusals["harmful"]["policy"]["by_phrase"]["refused"] == 3
    assert (
        refusals["harmful"]["reference"]["by_phrase"]["rate"] == refusals["benign"]["policy"]["by_phrase"]["rate"] == 0
    )
    assert 0.4 < refusals["harmful"]["policy"]["ci95"][0] < 1.0 == refusals["harmful"]["policy"]["ci95"][1]
    assert refusals["harmful"]["reference"]["rate"] == 0.0 and refusals["benign"]["policy"]["rate"] == 0.0
    assert "the trained policy is preferred to its reference: win rate 100%" in result.stdout
    assert "refuses harmful requests (it should refuse): policy 100% of 3 (44-100%), reference 0% of 3" in result.stdout
    assert "by refusal phrases: policy 100% of 3, reference 0% of 3" in result.stdout
    assert requests_after_first == len(server.requests)
    page = write_html_report(run_dir).read_text()
    assert "the trained policy is preferred to its reference" in page and 'id="refusal-rates"' in page

    # People check a sample of the comparisons: here they prefer the reference, and the report says so.
    with ScriptedOpenAIServer(reply=scripted) as server:
        server_flags = [
            "--set",
            f"policy.base_urls=[{server.base_url}]",
            "--set",
            f"judge.base_urls=[{server.base_url}]",
        ]
        sampled = subprocess.run(
            [*command, *server_flags, "--set", "eval.review_fraction=0.5"], capture_output=True, text=True
        )
        assert sampled.returncode == 0, sampled.stderr
        assert (
            f"people labelled 0 of the {len(held_out) // 2} comparisons sent to review queue evaluated-eval"
            in sampled.stdout
        )
        label_every_item(config.review_db(), "evaluated-eval", lambda item: "b")
        verified = subprocess.run(
            [*command, *server_flags, "--set", "eval.review_fraction=0.5"], capture_output=True, text=True
        )
    assert verified.returncode == 0, verified.stderr
    human = json.loads((run_dir / "eval" / "policy_eval.json").read_text())["human_verified"]
    assert human["labelled"] == len(held_out) // 2 and human["people"]["win_rate"] == 0.0
    assert human["judge_on_the_same"]["win_rate"] == 1.0 and human["judge_agreed_with_people"] == 0.0
    assert "win rate by people 0% (0-0%), by the judge on the same 100%" in verified.stdout


def test_without_evaluation_prompts_or_a_trained_policy_the_command_says_what_to_do(tmp_path):
    command = [RLAIF, "eval", "policy", "--set", f"run.dir={tmp_path / 'nothing'}"]
    result = subprocess.run([*command, "--set", "eval.prompts=null"], capture_output=True, text=True)
    assert result.returncode == 2 and "eval.held_out_fraction" in result.stderr and "eval.prompts" in result.stderr
    untrained = subprocess.run(command, capture_output=True, text=True)  # the demo config's MT-Bench prompts
    assert untrained.returncode == 2 and f"no trained policy at {tmp_path / 'nothing' / 'train' / 'dpo'}" in (
        untrained.stderr
    )


def test_answers_kept_from_a_model_are_not_reused_once_it_is_trained_again(tmp_path):
    policy = tmp_path / "dpo"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    (policy / "model.safetensors").write_bytes(b"first weights")
    before = model_files(str(policy))
    assert before == [("model.safetensors", 13, (policy / "model.safetensors").stat().st_mtime_ns)]
    (policy / "model.safetensors").write_bytes(b"second weights!")  # trained again at the same path
    assert model_files(str(policy)) != before
    assert model_files("smollm2-135m-instruct") == []  # a name, not a folder here: the name is the key


def test_rlaif_sample_leaves_the_held_out_prompts_out(tmp_path):
    with ScriptedOpenAIServer(reply=scripted) as server:
        overrides = scripted_overrides(
            server, prompts_file(tmp_path, 20), tmp_path / "run", "eval.held_out_fraction=0.5"
        )
        command = [RLAIF, "sample", *[part for item in overrides for part in ("--set", item)]]
        result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "run"
    held_out = {json.loads(line)["id"] for line in (run_dir / "eval_prompts.jsonl").read_text().splitlines()}
    sampled = {json.loads(line)["prompt_id"] for line in (run_dir / "candidates.jsonl").read_text().splitlines()}
    assert 0 < len(held_out) < 20 and len(sampled) == 20 - len(held_out) and not sampled & held_out
