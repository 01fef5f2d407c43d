"""Two-phase review with `review.target_agreement`: a real labeling run (scripted OpenAI-compatible endpoint)
routes only failures and the audit; people label the audit; labeling again calibrates the judge, certifies a
threshold and routes the pairs below it; the merged dataset's card states the level. An impossible target
with a small budget says so and the run still merges."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import datasets
import pytest

from rlaif.config import Config, load_config
from rlaif.flows.label import label_pipeline
from rlaif.pipeline.certify import spread_over_prompts
from rlaif.pipeline.merge import MergeError, merge_run
from rlaif.pipeline.report_page import write_html_report
from rlaif.review.store import ReviewStore
from rlaif.schema import Pair
from tests.review_fixtures import RLAIF, label_every_item
from tests.scripted_openai_server import ScriptedOpenAIServer, judge_prompt
from tests.test_labeling_flow import prompts_file, scripted_overrides

ANSWER = re.compile(r"<answer_(a|b)>\s*(.*?)\s*</answer_\1>", re.S)


def sure_or_unsure_judge(body: dict) -> str | None:
    """A judge that is consistent in both orders on about 60% of the pairs (it prefers the answer whose hash is
    smaller) and answers by position on the rest (the orders disagree: a tie, confidence 0)."""
    if body["model"] != "judge":
        return None
    answers = dict(ANSWER.findall(judge_prompt(body)))
    first, second = answers["a"], answers["b"]
    pair_key = hashlib.sha256("|".join(sorted([first, second])).encode()).digest()[0]
    if pair_key % 5 < 3:
        return (
            "[[A]]" if hashlib.sha256(first.encode()).digest() < hashlib.sha256(second.encode()).digest() else "[[B]]"
        )
    return "[[A]]"


def people_label(config: Config) -> Counter[str]:
    """Simulated people: they agree with the judge when it was sure, and pick the first answer when it was not
    (a tie from the judge is then a disagreement)."""
    return label_every_item(
        config.review_db(),
        config.run.name,
        lambda item: item.judgment.winner if item.judgment.status == "ok" and item.judgment.winner != "tie" else "a",
    )


def routed_reasons(run_dir: Path) -> Counter[str]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return Counter(row["reason"] for row in manifest["routed"])


def label(tmp_path: Path, server: ScriptedOpenAIServer, *extra: str) -> Config:
    overrides = scripted_overrides(
        server, prompts_file(tmp_path, 40), tmp_path / "run", "review.audit_fraction=0.4", "run.name=certified", *extra
    )
    config = load_config(None, overrides)
    asyncio.run(label_pipeline(config))
    return config


def test_audit_first_then_the_pairs_below_the_certified_threshold(tmp_path):
    with ScriptedOpenAIServer(reply=sure_or_unsure_judge) as server:
        config = label(tmp_path, server, "review.target_agreement=0.8", "review.max_fraction=0.9")
        run_dir = config.run.directory()
        first = routed_reasons(run_dir)
        assert set(first) <= {"audit", "failed"} and first["audit"] == 48  # 40 prompts x 3 pairs x 0.4
        assert not (run_dir / "certification.json").exists()
        with ReviewStore.open(config.review_db()) as store, pytest.raises(MergeError, match="not labelled yet"):
            merge_run(run_dir, config, store)
        assert people_label(config)["audit"] == 48
        with ReviewStore.open(config.review_db()) as store, pytest.raises(MergeError, match="second review phase"):
            merge_run(run_dir, config, store, on_pending="block")

        # `rlaif label` again, now that the audit is labelled
        config = label(tmp_path, server, "review.target_agreement=0.8", "review.max_fraction=0.9")
    certification = json.loads((run_dir / "certification.json").read_text())
    assert certification["calibration"]["fitted"] and certification["calibration"]["audit_pairs"] == 48
    assert certification["calibration"]["runs"] == {"certified": 48}
    assert certification["certified"] and certification["reached_target"]
    assert certification["level_reached"] >= 0.8
    second = routed_reasons(run_dir)
    assert second["audit"] == 48 and second["below_threshold"] == certification["below_threshold"] > 0
    unsure = [json.loads(line) for line in (run_dir / "review_queue.jsonl").read_text().splitlines()]
    below = [row["judgment"] for row in unsure if row["item"]["reason"] == "below_threshold"]
    assert all(j["order_disagreement"] for j in below)  # what it sends people is what the judge was unsure of
    assert people_label(config)["below_threshold"] == len(below)

    merged = subprocess.run([RLAIF, "merge", str(run_dir)], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert "certified: agreement with people of at least 80%" in merged.stdout
    card = (run_dir / "dataset" / "README.md").read_text()
    assert "## Certified agreement level" in card and "**Certified.**" in card
    figures = json.loads((run_dir / "dataset" / "merge.json").read_text())
    # The scripted answers of a prompt all have the same length: no pair to measure length bias on.
    assert figures["length_bias_on_audit"]["judge"] == {"pairs": 0, "longer_wins": None}
    assert figures["self_preference_warning"] is None  # the policy "policy", the judge "judge"
    bias = json.loads((run_dir / "report.json").read_text())["bias"]
    assert 0 < bias["position_consistency"] < 1
    rows = datasets.load_from_disk(str(run_dir / "dataset"))
    judge_rows = [c for c, source in zip(rows["confidence"], rows["label_source"], strict=True) if source == "judge"]
    assert judge_rows and min(judge_rows) == 1.0  # every label left to the judge is one it was sure of
    calibrated = dict(zip(rows["confidence"], rows["calibrated_agreement"], strict=True))
    assert calibrated[1.0] > 0.8 > calibrated[0.0]  # the calibrated column: sure labels are the ones people keep
    reliability = figures["reliability"]  # the reliability diagram's points, on the 48 audit pairs
    assert reliability["pairs"] == 48 and sum(b["pairs"] for b in reliability["raw"]) == 48
    sure = [b for b in reliability["raw"] if b["mean_probability"] == 1.0]
    assert len(sure) == 1 and sure[0]["agreement"] > 0.8  # the judge's sure labels are the ones people keep
    assert sum(b["pairs"] for b in reliability["calibrated"]) == 48
    page = write_html_report(run_dir).read_text()
    assert 'id="chart-confidence"' in page and "calibrated probability that people agree" in page
    assert 'id="chart-reliability"' in page and "calibrated (48 audit pairs)" in page


def test_an_impossible_target_within_a_small_budget_is_said_and_the_run_still_merges(tmp_path):
    with ScriptedOpenAIServer(reply=sure_or_unsure_judge) as server:
        config = label(tmp_path, server, "review.target_agreement=0.99", "review.max_fraction=0.5")
        people_label(config)
        config = label(
            tmp_path,
            server,
            "review.target_agreement=0.99",
            "review.max_fraction=0.5",
            "review.calibration_runs=[elsewhere]",
        )
    run_dir = config.run.directory()
    certification = json.loads((run_dir / "certification.json").read_text())
    assert certification["calibration"]["runs"] == {"certified": 48, "elsewhere": 0}  # said, not hidden
    assert not certification["reached_target"]
    assert certification["message"].startswith("target not reached")
    assert routed_reasons(run_dir)["below_threshold"] == 60 - 48  # the budget: half of 120 pairs
    queue = [json.loads(line) for line in (run_dir / "review_queue.jsonl").read_text().splitlines()]
    second = [row["pair"]["prompt"]["id"] for row in queue if row["item"]["reason"] == "below_threshold"]
    assert len(set(second)) == len(second) == 12  # a short budget is spread: one pair of each of 12 prompts
    people_label(config)
    with ReviewStore.open(config.review_db()) as store:
        result = merge_run(run_dir, config, store)
    assert result.figures["certification"]["reached_target"] is False
    assert "**Not reached.**" in (run_dir / "dataset" / "README.md").read_text()


def test_a_short_budget_is_spread_over_prompts():
    a1, a2, a3 = (0.1, "j1", "p1", "A"), (0.2, "j2", "p2", "A"), (0.3, "j3", "p3", "A")
    b, c = (0.4, "j4", "p4", "B"), (0.5, "j5", "p5", "C")
    candidates = [a1, a2, a3, b, c]
    assert spread_over_prompts(candidates, 2, prompts=3) == [a1, b]  # a share of 1: prompt A's least sure, then B's
    assert spread_over_prompts(candidates, 4, prompts=3) == [a1, a2, b, c]  # a share of 2
    assert spread_over_prompts(candidates, 4, prompts=10) == [a1, a2, b, c]  # each once, then the least sure left
    assert spread_over_prompts(candidates, 9, prompts=3) == candidates  # the budget takes them all


def better_answer(pair) -> str:
    """The answer people prefer (and the sure judge and the strong judge pick): the one whose hash is smaller."""
    return "a" if hashlib.sha256(pair.a.text.encode()).digest() < hashlib.sha256(pair.b.text.encode()).digest() else "b"


def sure_judge_then_strong_judge(body: dict) -> str | None:
    """`judge`: sure_or_unsure_judge; `strong`: always consistent, and always right."""
    if body["model"] != "strong":
        return sure_or_unsure_judge(body)
    answers = dict(ANSWER.findall(judge_prompt(body)))
    first, second = answers["a"], answers["b"]
    return "[[A]]" if hashlib.sha256(first.encode()).digest() < hashlib.sha256(second.encode()).digest() else "[[B]]"


def people_prefer_the_better_answer(config: Config) -> Counter[str]:
    return label_every_item(config.review_db(), config.run.name, lambda item: better_answer(item.pair))


def test_escalation_tiers_take_what_the_judge_is_not_certified_on(tmp_path):
    with ScriptedOpenAIServer(reply=sure_judge_then_strong_judge) as server:
        tiers = f"judge.tiers=[{{backend: openai, base_urls: [{server.base_url}], model: strong, mode: verdict}}]"
        extra = ("review.target_agreement=0.8", "review.max_fraction=0.9", tiers)
        config = label(tmp_path, server, *extra)
        assert people_prefer_the_better_answer(config)["audit"] == 48
        config = label(tmp_path, server, *extra)  # the audit is labelled: the tiers take the rest
        run_dir = config.run.directory()
        certification = json.loads((run_dir / "certification.json").read_text())
        first, strong = certification["tiers"]
        assert first["judge"] == "judge" and first["certified"] and 0 < first["pairs_decided"] < first["pairs_judged"]
        escalated = first["pairs_judged"] - first["pairs_decided"]
        assert strong["judge"] == "strong" and strong["certified"] and strong["pairs_judged"] == escalated
        assert strong["pairs_decided"] == escalated and strong["audit_pairs"] > 0  # certified on what reached it
        assert strong["spent"]["requests"] == 2 * (48 + escalated)  # both orders, the audit included
        assert certification["below_threshold"] == 0 and certification["reached_target"]
        assert routed_reasons(run_dir) == Counter({"audit": 48})  # people label nothing past the audit
        assert len(certification["tier_decisions"]) == escalated

        merged = subprocess.run([RLAIF, "merge", str(run_dir)], capture_output=True, text=True)
        assert merged.returncode == 0, merged.stderr
        assert "for each of 2 judge tiers" in merged.stdout
    rows = datasets.load_from_disk(str(run_dir / "dataset"))
    by_judge = Counter(rows["judge"][i] for i in range(len(rows)) if rows["label_source"][i] == "judge")
    assert by_judge == Counter({"judge": first["pairs_decided"], "strong": escalated})
    with ReviewStore.open(config.review_db()) as store:
        pairs = {row["pair"]["id"]: row["pair"] for row in store.export_rows(config.run.name)}
    assert len(pairs) == 48
    text = {row["pair_id"]: row["chosen"][0]["content"] for row in rows}
    pair_files = sorted((run_dir / "pairs").glob("*.jsonl"))
    every_pair = [Pair.model_validate_json(line) for path in pair_files for line in path.read_text().splitlines()]
    chose_better = [
        text[p.id] == (p.a.text if better_answer(p) == "a" else p.b.text) for p in every_pair if p.id in text
    ]
    assert len(chose_better) == len(rows) and all(chose_better)  # every label, tier-decided ones included, is right
    card = (run_dir / "dataset" / "README.md").read_text()
    assert "### Judge tiers" in card and "| 1 | strong |" in card
    page = write_html_report(run_dir).read_text()
    assert 'id="judge-tiers"' in page and "<td>strong</td>" in page


def test_tiers_need_a_target_agreement():
    from rlaif.config import ConfigError

    with pytest.raises(ConfigError, match="judge.tiers needs review.target_agreement"):
        load_config(None, ["judge.tiers=[{model: strong}]"])


def test_fixed_routing_with_earlier_runs_sends_people_the_labels_the_calibrator_doubts(tmp_path):
    """The judge is always sure of itself (raw confidence 1), so plain "least confident" routing picks at random;
    calibrated on an earlier run's reviewed pairs, it learns that the judge is wrong when it picks the short
    answer, and routes those."""
    from tests.test_reward_round import better, policy_and_judge

    def routed_mistakes(run_name: str, *extra: str) -> list[bool]:
        config = load_config(
            None,
            scripted_overrides(
                server,
                prompts,
                tmp_path / run_name,
                "policy.n_mode=seeds",
                f"run.name={run_name}",
                f"review.db=sqlite:///{tmp_path / 'review.db'}",
                *extra,
            ),
        )
        asyncio.run(label_pipeline(config))
        rows = [json.loads(line) for line in (config.run.directory() / "review_queue.jsonl").read_text().splitlines()]
        judge_picked = [
            (row["pair"]["a"]["text"], row["pair"]["b"]["text"])[0 if row["judgment"]["winner"] == "a" else 1]
            for row in rows
            if row["item"]["reason"] == "low_confidence"
        ]
        others = [
            row["pair"]["b"]["text"] if row["judgment"]["winner"] == "a" else row["pair"]["a"]["text"]
            for row in rows
            if row["item"]["reason"] == "low_confidence"
        ]
        return [better(picked, other) == "second" for picked, other in zip(judge_picked, others, strict=True)]

    prompts = prompts_file(tmp_path, 60)
    with ScriptedOpenAIServer(reply=policy_and_judge) as server:
        earlier = load_config(
            None,
            scripted_overrides(
                server,
                prompts,
                tmp_path / "earlier",
                "policy.n_mode=seeds",
                "run.name=earlier",
                "run.seed=1",
                f"review.db=sqlite:///{tmp_path / 'review.db'}",
                "review.fraction=0.5",
                "review.audit_fraction=0.5",
            ),
        )
        asyncio.run(label_pipeline(earlier))
        from tests.test_reward_round import people_label as people_know_better

        assert people_know_better(earlier) == {"audit": 90}
        raw = routed_mistakes("raw", "review.fraction=0.2", "review.audit_fraction=0.0")
        calibrated = routed_mistakes(
            "calibrated", "review.fraction=0.2", "review.audit_fraction=0.0", "review.calibration_runs=[earlier]"
        )
    assert len(raw) == len(calibrated) == 36
    assert sum(calibrated) / 36 >= 0.6 and sum(calibrated) / 36 > sum(raw) / 36 + 0.25
