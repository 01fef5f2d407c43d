"""The labeling pipeline as Prefect flows, end to end: real SmolLM2 in-process and behind `transformers serve`,
custom templates, a broken template stopped before any model call, and kill -9 then resume."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaif.config import load_config
from rlaif.flows.label import label_pipeline
from rlaif.run_directory import read_records
from rlaif.schema import Judgment, Pair
from tests.scripted_openai_server import ScriptedOpenAIServer, judge_prompt

RLAIF = str(Path(sys.executable).parent / "rlaif")


def prompts_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Question number {i}: tell me a fact."}) + "\n" for i in range(count))
    )
    return path


def fake_judge_or_policy(body: dict) -> str | None:
    """Judge requests get a verdict that depends on what was shown; policy requests keep the usual answers
    (distinct by seed and choice)."""
    if body["model"] != "judge":
        return None
    digest = hashlib.sha256(judge_prompt(body).encode()).digest()[0]
    return ["[[A]]", "[[B]]", "[[C]]"][digest % 3]


def scripted_overrides(server: ScriptedOpenAIServer, prompts: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"prompts.path={prompts}",
        "prompts.limit=null",
        f"run.dir={run_dir}",
        "run.prompts_per_shard=5",
        "policy.backend=openai",
        f"policy.base_urls=[{server.base_url}]",
        "policy.model=policy",
        "judge.backend=openai",
        f"judge.base_urls=[{server.base_url}]",
        "judge.model=judge",
        "judge.mode=verdict",
        "sampling.n=3",
        *extra,
    ]


def judgments_of(run_dir: Path) -> list[Judgment]:
    return [j for path in sorted((run_dir / "judgments").glob("*.jsonl")) for j in read_records(path, Judgment)]


def test_in_process_logprob_pipeline_with_smollm2(smollm2_dir, mt_bench_file, tmp_path):
    config = load_config(
        None,
        [
            f"prompts.path={mt_bench_file}",
            "prompts.limit=3",
            f"run.dir={tmp_path / 'run'}",
            "run.prompts_per_shard=2",
            "sampling.n=3",
            "sampling.max_tokens=24",
            "judge.mode=logprob",
        ],
    )
    report = asyncio.run(label_pipeline(config))
    run = tmp_path / "run"
    assert report["prompts"] == 3 and report["candidates"] == 9 and report["pairs"] == 9
    assert report["judged_ok"] == 9 and report["judge_failed"] == 0
    assert report["routed_to_review"] == 1 and sum(report["routed_by_reason"].values()) == 1
    for key in ("review_fraction_actual", "position_consistency", "mean_confidence"):
        assert key in report
    assert json.loads((run / "report.json").read_text()) == report
    assert len(list((run / "candidates").glob("*.jsonl"))) == 2  # two shards of prompts
    judgments = judgments_of(run)
    assert all(0.0 < j.p_a < 1.0 for j in judgments)  # probabilities, not hard labels
    assert len({round(j.p_a, 6) for j in judgments}) > 1
    assert len((run / "routing.jsonl").read_text().splitlines()) == 9
    [queued] = [json.loads(line) for line in (run / "review_queue.jsonl").read_text().splitlines()]
    assert queued["item"]["reason"] in ("audit", "low_confidence") and queued["pair"]["id"] == queued["item"]["pair_id"]


def test_verdict_mode_in_process_parses_real_verdicts_end_to_end(smollm2_dir, mt_bench_file, tmp_path):
    """The in-process backend continues the template's prefilled "[[", so even the tiny model's replies parse:
    every judgment is a label read from the model's own text (the `transformers serve` test below may parse none)."""
    config = load_config(
        None,
        [
            f"prompts.path={mt_bench_file}",
            "prompts.limit=2",
            f"run.dir={tmp_path / 'run'}",
            "sampling.n=2",
            "sampling.max_tokens=16",
            "judge.mode=verdict",
            "judge.max_tokens=8",
        ],
    )
    report = asyncio.run(label_pipeline(config))
    assert report["pairs"] == 2 and report["judged_ok"] == 2 and report["judge_failed"] == 0
    for judgment in judgments_of(tmp_path / "run"):
        verdicts = [re.fullmatch(r"\[\[([ABC])\]\].*", raw, re.S) for raw in judgment.raw_outputs]
        assert len(verdicts) == 2 and all(verdicts), judgment.raw_outputs
        # p(first shown is better) per order: A 1, B 0, C 0.5; the second order shows B first.
        first, second = (P_FIRST_BETTER[v.group(1)] for v in verdicts)
        p_a = (first + 1 - second) / 2
        assert judgment.p_a == pytest.approx(p_a), judgment.raw_outputs
        assert judgment.winner == ("a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"), judgment.raw_outputs


P_FIRST_BETTER = {"A": 1.0, "B": 0.0, "C": 0.5}


def test_verdict_pipeline_through_transformers_serve(smollm2_dir, mt_bench_file, tmp_path):
    config = load_config(
        None,
        [
            f"prompts.path={mt_bench_file}",
            "prompts.limit=2",
            f"run.dir={tmp_path / 'run'}",
            "policy.backend=openai",
            "policy.server.launch=transformers",
            "sampling.n=2",
            "sampling.max_tokens=16",
            "judge.backend=openai",
            "judge.server.launch=transformers",
            "judge.mode=verdict",
            "judge.max_tokens=24",
        ],
    )
    report = asyncio.run(label_pipeline(config))
    assert report["pairs"] == 2 and report["judged_ok"] + report["judge_failed"] == 2
    judgments = judgments_of(tmp_path / "run")
    for judgment in judgments:  # a tiny model often answers without [[A]]: that is a status, never a label
        assert (judgment.status == "ok") == (judgment.winner is not None)
        assert len(judgment.raw_outputs) == 2 and all(judgment.raw_outputs)
    failed = {j.pair_id for j in judgments if j.status != "ok"}
    routed = {
        json.loads(line)["pair_id"]
        for line in (tmp_path / "run" / "routing.jsonl").read_text().splitlines()
        if json.loads(line)["reason"] == "failed"
    }
    assert routed == failed


def test_a_custom_template_by_path_is_used(tmp_path):
    template = tmp_path / "strict.md.j2"
    template.write_text(
        "---\nname: strict\nversion: 1\nmodes: [verdict]\n---\n"
        "STRICT JUDGE. Question: {{ question }}\n<answer_a>\n{{ answer_a }}\n</answer_a>\n"
        "<answer_b>\n{{ answer_b }}\n</answer_b>\nAnswer [[A]] or [[B]].\n"
    )
    expected_hash = hashlib.sha256(template.read_bytes()).hexdigest()[:16]
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        config = load_config(
            None, scripted_overrides(server, prompts_file(tmp_path, 4), tmp_path / "run", f"judge.prompt={template}")
        )
        asyncio.run(label_pipeline(config))
    judge_requests = [r for r in server.requests if r["model"] == "judge"]
    assert judge_requests and all("STRICT JUDGE" in judge_prompt(r) for r in judge_requests)
    assert {j.template_hash for j in judgments_of(tmp_path / "run")} == {expected_hash}


def test_a_broken_template_fails_before_any_model_call(tmp_path):
    broken = tmp_path / "broken.md.j2"
    broken.write_text("---\nname: broken\n---\nQ: {{ question }} {{ answer_a }} {{ answer_b }} {{ reference }}\n")
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        overrides = scripted_overrides(server, prompts_file(tmp_path, 4), tmp_path / "run", f"judge.prompt={broken}")
        result = subprocess.run(
            [RLAIF, "label", *sum((["--set", o] for o in overrides), [])], capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 2
    assert f"{broken}:4: unknown variable 'reference'" in result.stderr
    assert server.requests == []
    assert not (tmp_path / "run").exists()


def test_killed_then_rerun_repeats_no_judge_call_for_finished_shards(tmp_path):
    prompts = prompts_file(tmp_path, 70)  # 14 shards of 5 prompts, 3 pairs per prompt
    run = tmp_path / "run"
    with ScriptedOpenAIServer(reply=fake_judge_or_policy, delay_s=0.05) as server:
        args = [
            RLAIF,
            "label",
            *sum((["--set", o] for o in scripted_overrides(server, prompts, run, "judge.max_concurrency=4")), []),
        ]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 240
        while len(list((run / "judgments").glob("*.jsonl"))) < 4:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # the run and its temporary Prefect server
        process.wait()
        server.wait_until_no_client_is_connected()  # the killed run's last requests are recorded
        finished = len(list((run / "judgments").glob("*.jsonl")))
        assert 4 <= finished < 14
        for shard in (run / "judgments").glob("*.jsonl"):  # a finished shard is whole: 15 readable judgments
            assert len(list(read_records(shard, Judgment))) == 15
        calls_before = len(server.requests)
        rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        rerun_requests = server.requests[calls_before:]
    judge_calls = sum(1 for r in rerun_requests if r["model"] == "judge")
    policy_calls = sum(1 for r in rerun_requests if r["model"] == "policy")
    assert policy_calls == 0  # sampling had finished before the kill
    assert judge_calls == 2 * 15 * (14 - finished)  # both orders of the pairs of unfinished shards only
    judgments = judgments_of(run)
    pairs = [p for path in sorted((run / "pairs").glob("*.jsonl")) for p in read_records(path, Pair)]
    assert len(judgments) == len(pairs) == 210 and len({j.pair_id for j in judgments}) == 210
    report = json.loads((run / "report.json").read_text())
    assert report["routed_to_review"] == 21 and abs(report["review_fraction_actual"] - 0.10) <= 0.01


def test_the_pair_strategy_reaches_the_run(tmp_path):
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        overrides = scripted_overrides(
            server, prompts_file(tmp_path, 5), tmp_path / "run", "pairs.strategy=random", "pairs.per_prompt=1"
        )
        report = asyncio.run(label_pipeline(load_config(None, overrides)))
    assert report["pairs"] == 5  # one random pair per prompt instead of all three


def test_prompts_whose_answers_keep_repeating_are_counted_short_and_warned_about(tmp_path):
    """A policy with only two distinct answers per prompt (by seed parity) against sampling.n=3: every resample
    round is spent, each prompt keeps 2 candidates and 1 pair, and the run says so."""

    def two_answers(body: dict) -> str | None:
        return fake_judge_or_policy(body) if body["model"] == "judge" else f"answer of parity {body['seed'] % 2}"

    with ScriptedOpenAIServer(reply=two_answers) as server:
        overrides = scripted_overrides(server, prompts_file(tmp_path, 4), tmp_path / "run")
        result = subprocess.run(
            [RLAIF, "label", *sum((["--set", o] for o in overrides), [])], capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert (report["prompts"], report["candidates"], report["pairs"], report["prompts_short"]) == (4, 8, 4, 4)
    assert "4 of 4 prompts have fewer than 3 distinct answers" in result.stderr


def test_a_failed_shard_stops_the_run_with_its_own_message(tmp_path):
    """Two shards are in flight at a time; a failing one stops the run, and the message is the failure's own."""
    with ScriptedOpenAIServer(reply=lambda body: "[[A]]" if body["model"] == "judge" else None) as server:
        overrides = scripted_overrides(
            server,
            prompts_file(tmp_path, 12),
            tmp_path / "run",
            "policy.max_retries=0",
            "policy.base_urls=[http://127.0.0.1:9/v1]",
        )
        result = subprocess.run(
            [RLAIF, "label", *sum((["--set", o] for o in overrides), [])], capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: sampling shard" in result.stderr and "connection failed" in result.stderr
    assert "ExceptionGroup" not in result.stderr and "Traceback" not in result.stderr  # Prefect's left out
    assert not list((tmp_path / "run").glob("candidates/*.jsonl"))


def test_the_judge_template_is_loaded_once_per_label_run(tmp_path, monkeypatch):
    """`rlaif label` loads `judge.prompt` once (before Prefect starts) and hands the loaded judge down."""
    from typer.testing import CliRunner

    import rlaif.judges.templates as templates
    from rlaif.cli.main import app

    loads = []
    parse_header = templates._parse_header
    monkeypatch.setattr(templates, "_parse_header", lambda path, lines: loads.append(path) or parse_header(path, lines))
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        overrides = scripted_overrides(server, prompts_file(tmp_path, 4), tmp_path / "run")
        result = CliRunner().invoke(app, ["label", *sum((["--set", o] for o in overrides), [])])
    assert result.exit_code == 0, result.output
    assert judgments_of(tmp_path / "run")
    assert len(loads) == 1, loads


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"), RuntimeError("a bug")])
def test_a_shard_failing_with_an_error_of_the_machine_runs_again_and_others_fail_at_once(tmp_path, monkeypatch, error):
    """run.shard_retry_delays_s: Prefect runs a judge shard again after an OSError (a storage failure, which
    cannot be produced on demand here, so the step raises it once, in-process) and the run completes; any
    other error fails the run at its first attempt."""
    import rlaif.flows.label as label

    attempts: list[int] = []
    judge_shard = label.judge_shard

    async def fails_once(plan, judge):
        attempts.append(plan.index)
        if plan.index == 0 and attempts.count(0) == 1:
            raise error
        return await judge_shard(plan, judge)

    monkeypatch.setattr(label, "judge_shard", fails_once)
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        overrides = scripted_overrides(
            server, prompts_file(tmp_path, 10), tmp_path / "run", "run.shard_retry_delays_s=[0.1]"
        )
        config = load_config(None, overrides)
        if isinstance(error, OSError):
            report = asyncio.run(label_pipeline(config))
            assert attempts.count(0) == 2 and attempts.count(1) == 1
            assert report["pairs"] == 10 * 3 and len(judgments_of(tmp_path / "run")) == 30
        else:
            with pytest.raises(RuntimeError, match="a bug"):
                asyncio.run(label_pipeline(config))
            assert attempts.count(0) == 1
