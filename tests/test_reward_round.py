"""The second review round (`review.reward_round_fraction`): a reward model trained on the merged labels sends
people the judge-labelled pairs it contradicts, and people overturn those far more often than the audit.

A real run end to end: a scripted OpenAI-compatible endpoint plays the policy (helpful or useless answers,
by seed) and a judge that prefers the helpful answer but is confidently wrong on a quarter of the pairs;
the real MiniLM reward model (its first two layers: `two_layer_minilm`) is trained by the rlaif-train flow on
the merged labels; people (simulated) know which answer is better. The policy stage is the tiny Qwen2, so the
flow runs to its end quickly."""

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
from rlaif.flows.train import train_pipeline
from rlaif.pipeline.merge import merge_run
from rlaif.pipeline.report_page import write_html_report
from rlaif.review.store import ReviewStore
from tests.review_fixtures import RLAIF, label_every_item
from tests.scripted_openai_server import ScriptedOpenAIServer, judge_prompt
from tests.test_labeling_flow import prompts_file, scripted_overrides

ANSWER = re.compile(r"<answer_(a|b)>\s*(.*?)\s*</answer_\1>", re.S)


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def helpful(text: str) -> bool:
    return text.startswith("Here is")


def better(first: str, second: str) -> str:
    """What people prefer: the helpful answer; between two of a kind, the one whose hash is smaller."""
    if helpful(first) != helpful(second):
        return "first" if helpful(first) else "second"
    return "first" if digest(first) < digest(second) else "second"


def policy_and_judge(body: dict) -> str | None:
    if body["model"] == "policy":  # one answer per request (n_mode seeds): helpful or useless by seed
        seed = int(body["seed"])
        if seed % 2:
            return f"Here is a careful, complete and helpful answer, worked out step by step (note {seed})."
        return f"No idea. ({seed})"
    answers = dict(ANSWER.findall(judge_prompt(body)))
    first, second = answers["a"], answers["b"]
    choice = better(first, second)
    if digest("|".join(sorted([first, second])))[0] % 4 == 0:  # wrong on a quarter of the pairs, in both orders
        choice = "second" if choice == "first" else "first"
    return "[[A]]" if choice == "first" else "[[B]]"


def people_label(config: Config) -> Counter[str]:
    return label_every_item(
        config.review_db(),
        config.run.name,
        lambda item: "a" if better(item.pair.a.text, item.pair.b.text) == "first" else "b",
    )


def test_the_pairs_the_reward_model_contradicts_go_to_people_before_the_policy_trains(
    tmp_path, tiny_qwen2, two_layer_minilm
):
    tiny, _ = tiny_qwen2
    with ScriptedOpenAIServer(reply=policy_and_judge) as server:
        overrides = scripted_overrides(
            server,
            prompts_file(tmp_path, 40),
            tmp_path / "run",
            "policy.n_mode=seeds",
            "review.fraction=0.1",
            "review.audit_fraction=0.1",
            "review.reward_round_fraction=0.08",
            "run.name=second-round",
            "train.eval_size=4",
            f"train.reward.model={two_layer_minilm}",
            "train.reward.epochs=2",
            "train.reward.learning_rate=0.0002",
            "train.reward.max_length=64",
            "train.reward.batch_size=8",
            f"train.dpo.model={tiny}",
            "train.dpo.max_steps=1",
            "train.dpo.batch_size=2",
            "train.dpo.max_length=64",
            "eval.after_training=false",
        )
        config = load_config(None, overrides)
        asyncio.run(label_pipeline(config))
    run_dir = config.run.directory()
    assert people_label(config) == {"audit": 12}  # 40 prompts x 3 pairs x 0.1: the audit fills the budget
    with ReviewStore.open(config.review_db()) as store:
        merge_run(run_dir, config, store)

    first = train_pipeline(config)
    assert first["status"] == "waiting_for_review" and "dpo" not in first  # the policy waits for people
    decision = json.loads((run_dir / "reward_round.json").read_text())
    assert decision["routed"] == 10 == first["reward_round"]["open_items"]  # 8% of 120 pairs, 9.6, rounded
    assert decision["contradicted"] >= decision["routed"]
    given = people_label(config)
    assert given == {"reward_disagreement": 10}

    with ReviewStore.open(config.review_db()) as store:
        figures = merge_run(run_dir, config, store).figures
    overturned = 1 - figures["reward_round_agreement"]["agreement"]
    audit_overturned = 1 - figures["audit_agreement"]["agreement"]
    assert overturned >= 0.7 and overturned > audit_overturned + 0.3  # the round finds the wrong labels
    card = (run_dir / "dataset" / "README.md").read_text()
    assert "## Second review round (reward model)" in card
    rows = datasets.load_from_disk(str(run_dir / "dataset"))
    assert rows["review_reason"].count("reward_disagreement") == 10
    assert 'id="reward-round"' in write_html_report(run_dir).read_text()

    second = train_pipeline(config)  # the round is decided once: now the policy trains
    assert "status" not in second and second["dpo"]["steps"] == 1

    # What the human labels bought: the reward model on merged and on judge-only labels, scored on the audit.
    value = second["label_value"]
    assert value["held_out_pairs"] == 12 and value["human_labels_in_training"] == 10  # the audit is held out
    assert value["labels_people_changed"] == round(overturned * 10)
    assert value["training_pairs"] == {"merged": len(rows) - 12, "judge_only": len(rows) - 12}
    assert set(value["accuracy"]) == {"merged", "judge_only"}
    assert value["ci95"][0] <= value["difference"] <= value["ci95"][1]
    assert value["difference"] == pytest.approx(value["accuracy"]["merged"] - value["accuracy"]["judge_only"])
    assert json.loads((run_dir / "train" / "label_value.json").read_text()) == value
    assert not list((run_dir / "train").glob(".label-value-*"))  # the two scratch models are gone
    assert 'id="label-value"' in write_html_report(run_dir).read_text()
    assert json.loads((run_dir / "reward_round.json").read_text())["routed_judgments"] == decision["routed_judgments"]


def test_the_reward_round_command_explains_what_it_needs(tmp_path):
    with ScriptedOpenAIServer(reply=policy_and_judge) as server:
        overrides = scripted_overrides(
            server, prompts_file(tmp_path, 5), tmp_path / "run", "policy.n_mode=seeds", "run.name=commands"
        )
        config = load_config(None, overrides)
        asyncio.run(label_pipeline(config))
    run_dir = config.run.directory()
    db = f"sqlite:///{tmp_path / 'other.db'}"
    enqueued = subprocess.run([RLAIF, "review", "enqueue", str(run_dir), "--db", db], capture_output=True, text=True)
    assert enqueued.returncode == 0, enqueued.stderr
    assert "2 new items in the review queue of run commands" in enqueued.stdout  # 15 pairs x 0.1
    no_budget = subprocess.run([RLAIF, "review", "reward-round", str(run_dir)], capture_output=True, text=True)
    assert no_budget.returncode != 0 and "give --fraction" in no_budget.stderr
    no_model = subprocess.run(
        [RLAIF, "review", "reward-round", str(run_dir), "--fraction", "0.1"], capture_output=True, text=True
    )
    assert no_model.returncode != 0 and f"{run_dir / 'train' / 'reward'}: no trained reward model" in no_model.stderr
    assert not Path(run_dir / "reward_round.json").exists()


def test_judge_only_labels_put_back_what_people_changed_and_the_audit_is_held_out():
    from rlaif.training.label_value import split_rows

    def row(label: str, source: str, reason: str | None, judge: str | None) -> dict:
        return {"chosen": "A", "rejected": "B", "label": label, "label_source": source, "review_reason": reason,
                "judge_label": judge}  # fmt: skip

    rows = [
        row("a", "judge", None, "a"),
        row("b", "human", "low_confidence", "a"),  # overturned: the judge's label swaps it back
        row("a", "human", "low_confidence", "a"),  # confirmed: a judge label in the judge-only set
        row("a", "human", "reward_disagreement", None),  # the judge failed: no judge-only row
        row("b", "human", "audit", "a"),  # held out of both
        row("tie", "judge", None, "tie"),  # no preference: in neither
    ]
    merged, judge_only, held_out = split_rows(rows)
    assert [r["label"] for r in merged] == ["a", "b", "a", "a"] and held_out == [rows[4]]
    assert [(r["label"], r["chosen"], r["label_source"]) for r in judge_only] == [
        ("a", "A", "judge"),
        ("a", "B", "judge"),
        ("a", "A", "judge"),
    ]
