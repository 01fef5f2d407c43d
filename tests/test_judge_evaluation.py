"""Judge evaluation: loaders for the human-labelled sets, the agreement metrics, and `rlaif judge eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.evaluation.judge_agreement import (
    agreement_report,
    expected_calibration_error,
    format_report,
    routing_efficiency,
)
from rlaif.labelled_data import LabelledDataError, load_labelled, split_hh_pair
from rlaif.schema import Judgment
from tests.scripted_openai_server import ScriptedOpenAIServer, judge_prompt

RLAIF = str(Path(sys.executable).parent / "rlaif")


def judgment(
    winner: str | None, p_a: float | None, disagree: bool = False, status: str = "ok", pair_id: str = "p"
) -> Judgment:
    return Judgment(
        pair_id=pair_id,
        winner=winner,
        p_a=p_a,
        confidence=None if p_a is None else abs(2 * p_a - 1),
        status=status,
        order_disagreement=disagree,
        judge_model="j",
        template_hash="t",
    )


def test_loaders_read_the_shared_sets(shared_data):
    natural = load_labelled(shared_data / "llmbar" / "natural.json", "llmbar")
    assert len(natural) == 100 and {i.label for i in natural} == {"a", "b"}
    pandalm = load_labelled(shared_data / "pandalm" / "testset-v1.json", "pandalm")
    assert [sum(1 for i in pandalm if i.label == k) for k in ("b", "a", "tie")] == [472, 422, 105]
    hh = load_labelled(shared_data / "hh_rlhf" / "harmless_base_test_0000_1799.jsonl.gz", "hh-rlhf")
    assert len(hh) >= 1790
    assert 0.4 < sum(1 for i in hh if i.label == "a") / len(hh) < 0.6  # the chosen answer is not always first
    assert all(i.prompt.messages[-1].role == "user" for i in hh)


def test_hh_dialogues_split_at_the_shared_prefix():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: Sure, how?"
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant: No."
    prompt, good, bad = split_hh_pair(chosen, rejected)
    assert [m["role"] for m in prompt] == ["user", "assistant", "user"]
    assert prompt[-1]["content"] == "Help me?" and (good, bad) == ("Sure, how?", "No.")
    assert split_hh_pair(chosen, "\n\nHuman: Other\n\nAssistant: No.") is None


def test_bad_labelled_files_are_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"input": "q", "output_1": "a", "output_2": "b", "label": 3}]))
    with pytest.raises(LabelledDataError, match=r"bad.json: record 0: label must be 1 or 2"):
        load_labelled(path, "llmbar")
    path.write_text(json.dumps([{"input": "q", "output_1": "a"}]))
    with pytest.raises(LabelledDataError, match="record 0 has no field 'label'"):
        load_labelled(path, "llmbar")


def test_agreement_metrics():
    labels = ["a", "a", "b", "b", "tie"]
    judgments = [
        judgment("a", 0.9),
        judgment("tie", 0.5, disagree=True),
        judgment("a", 0.6),
        judgment(None, None, status="parse_error"),
        judgment("tie", 0.5),
    ]
    report = agreement_report(labels, judgments)
    assert report["n"] == 5 and report["human_ties"] == 1
    assert report["agreement"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert report["agreement_with_ties"] == pytest.approx(2 / 5)
    assert report["position_consistency"] == pytest.approx(3 / 4)
    assert report["tie_rate"] == pytest.approx(2 / 5) and report["parse_error_rate"] == pytest.approx(1 / 5)
    # by confidence: 0.8 (right), 0.2 (wrong), 0 (tie), 0 (failed): bottom 10% of 4 items is the last one
    assert report["agreement_top90"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert report["agreement_bottom10"] == 0.0


def test_routing_finds_the_judges_errors_better_than_chance():
    """80 confident right answers, 20 unsure wrong ones: routing 10% sends mostly the wrong ones to people."""
    labels = ["a"] * 100
    judgments = [judgment("a", 0.95, pair_id=f"right{i}") for i in range(80)]
    judgments += [judgment("b", 0.45, pair_id=f"wrong{i}") for i in range(20)]
    routing = routing_efficiency(labels, judgments, fraction=0.10, audit_fraction=0.03, seed=0)
    assert routing["routed"] == 10
    assert routing["judge"] == 0.8 and routing["oracle"] == 0.9
    # 7 least confident are all wrong; the 3 audit picks are uniform (mostly right answers)
    assert 0.87 <= routing["merged"] <= 0.9
    assert routing["efficiency"] >= 0.7 - 1e-9
    assert abs(routing["random"] - 0.82) < 0.01  # 10 random picks fix 2 errors on average
    assert routing["random_efficiency"] < 0.3
    assert "routing.efficiency" in format_report({"n": 100, "routing": routing})


def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    right = [("a", judgment("a", 0.75))] * 3
    wrong = [("b", judgment("a", 0.75))]
    assert expected_calibration_error(right + wrong) == pytest.approx(0.0)
    assert expected_calibration_error([("a", judgment("a", 1.0))] * 2 + [("b", judgment("a", 1.0))] * 2) == 0.5


def test_judge_eval_command_reports_a_known_judge(tmp_path):
    """A scripted judge that is right exactly when the first answer is longer: the report must say so."""
    data = tmp_path / "set.json"
    items = [
        {
            "input": f"q{i}",
            "output_1": "long answer " * (2 if i % 4 else 1),
            "output_2": "long answer one and a half",
            "label": 1 if i % 2 else 2,
        }
        for i in range(20)
    ]
    data.write_text(json.dumps(items))

    def prefers_longer(body: dict) -> str:
        prompt = judge_prompt(body)
        a = prompt.split("<answer_a>")[1].split("</answer_a>")[0]
        b = prompt.split("<answer_b>")[1].split("</answer_b>")[0]
        return "[[A]]" if len(a) > len(b) else "[[B]]"

    expected = sum(
        1 for item in items if (len(item["output_1"]) > len(item["output_2"])) == (item["label"] == 1)
    ) / len(items)
    out = tmp_path / "report.json"
    with ScriptedOpenAIServer(reply=prefers_longer) as server:
        result = subprocess.run(
            [
                RLAIF,
                "judge",
                "eval",
                "--data",
                str(data),
                "--format",
                "llmbar",
                "--out",
                str(out),
                "--set",
                "judge.backend=openai",
                "--set",
                f"judge.base_urls=[{server.base_url}]",
                "--set",
                "judge.model=judge",
                "--set",
                "judge.mode=verdict",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["n"] == 20 and report["agreement"] == pytest.approx(expected)
    assert report["position_consistency"] == 1.0 and report["parse_error_rate"] == 0.0
    assert report["tokens"] > 0 and report["wall_s"] >= 0
    assert "agreement " in result.stdout and "position_consistency" in result.stdout
