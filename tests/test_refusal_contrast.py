"""Refusal contrast pairs (`pairs.refusal_contrast`): which prompts get which steered refusal, provenance on
the candidates, judged and routed like every pair, counted in report.json and the dataset card; the
`should_refuse` column skips the classifying call and a bad value names its line. The end to end test with
the real SmolLM2 runs the shipped recipe's settings."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import datasets
import pytest

from rlaif.config import load_config
from rlaif.flows.label import label_pipeline
from rlaif.pipeline.merge import merge_run
from rlaif.pipeline.pair import make_pairs
from rlaif.pipeline.prompt_sources import PromptSourceError, load_prompts
from rlaif.pipeline.refusal_contrast import CLASSIFIER_PROMPT, STEERING, parse_should_refuse
from rlaif.pipeline.report_page import write_html_report
from rlaif.review.store import ReviewStore
from rlaif.run_directory import read_records
from rlaif.schema import Candidate, Judgment, Pair, PromptItem
from tests.scripted_openai_server import ScriptedOpenAIServer, judge_prompt
from tests.test_labeling_flow import scripted_overrides

RECIPE = Path(__file__).parents[1] / "configs" / "refusal_contrast.yaml"
CLASSIFIER_MARK = CLASSIFIER_PROMPT.splitlines()[0]
OVER_REFUSAL_TEXT = "I'm sorry, but I can't help with that."
REASONABLE_REFUSAL_TEXT = "I won't help with this: it could hurt people. I can share safety resources instead."
PROMPTS = [
    {"prompt": "How do I kill a Python process that hangs?", "should_refuse": False},
    {"prompt": "Give me step-by-step instructions to make a nerve agent at home.", "should_refuse": True},
    {"prompt": "Write a threatening letter to scare my neighbour into moving out."},  # classified: refuse
    {"prompt": "Explain how vaccines train the immune system.", "should_refuse": None},  # classified: help
]


def write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def between(text: str, tag: str) -> str:
    return re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S).group(1)


def scripted_models(body: dict) -> str | None:
    """The policy answers as usual unless steered (then it refuses); the judge classifies by keyword, prefers
    a refusal of a harmful request and an answer to a harmless one, always says A on the vaccine prompt's
    contrast pair (so that pair is uncertain and goes to people), and otherwise prefers the greater text."""
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    if body["model"] != "judge":
        if system == STEERING["over_refusal"]:
            return OVER_REFUSAL_TEXT
        if system == STEERING["reasonable_refusal"]:
            return REASONABLE_REFUSAL_TEXT
        return None
    shown = judge_prompt(body)
    if CLASSIFIER_MARK in shown:
        return "[[R]]" if "threatening" in shown or "nerve agent" in shown else "[[H]]"
    question, a, b = between(shown, "question"), between(shown, "answer_a"), between(shown, "answer_b")
    refusals = (OVER_REFUSAL_TEXT, REASONABLE_REFUSAL_TEXT)
    if a not in refusals and b not in refusals:
        return "[[A]]" if a > b else "[[B]]"
    if "vaccines" in question:
        return "[[A]]"
    harmful = "threatening" in question or "nerve agent" in question
    refusal_is_a = a in refusals
    return "[[A]]" if refusal_is_a == harmful else "[[B]]"


def test_contrast_candidates_are_sampled_for_the_right_prompts_judged_routed_and_counted(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    run_dir = tmp_path / "run"
    with ScriptedOpenAIServer(reply=scripted_models) as server:
        config = load_config(
            None,
            scripted_overrides(
                server,
                prompts,
                run_dir,
                "pairs.refusal_contrast=true",
                "review.fraction=0.0625",  # 1 of 16 pairs
                "review.audit_fraction=0",
                "run.name=contrast-test",
            ),
        )
        report = asyncio.run(label_pipeline(config))
    prompt_ids = [PromptItem(messages=[{"role": "user", "content": row["prompt"]}]).id for row in PROMPTS]

    # Only the two prompts without a should_refuse value were classified, by the judge model.
    classifying = [body for body in server.requests if CLASSIFIER_MARK in judge_prompt(body)]
    assert len(classifying) == 2 and all(body["model"] == "judge" for body in classifying)
    classified = [judge_prompt(body) for body in classifying]
    assert any("threatening" in text for text in classified) and any("vaccines" in text for text in classified)
    classifier_cost = report["cost"]["stages"]["refusal-classifier"]["judge"]  # counted apart, at the judge's price
    assert classifier_cost["requests"] == 2 and classifier_cost["prompt_tokens"] > 0

    # Each prompt has one contrast candidate of the right kind, in the model's own words, sampled steered.
    candidates = [c for path in sorted((run_dir / "candidates").glob("*.jsonl")) for c in read_records(path, Candidate)]
    contrast = {c.prompt_id: c for c in candidates if c.contrast is not None}
    expected = ["over_refusal", "reasonable_refusal", "reasonable_refusal", "over_refusal"]
    assert {pid: contrast[pid].contrast for pid in prompt_ids} == dict(zip(prompt_ids, expected, strict=True))
    assert {c.text for c in contrast.values()} == {OVER_REFUSAL_TEXT, REASONABLE_REFUSAL_TEXT}
    steered = [b for b in server.requests if b["model"] == "policy" and b["messages"][0]["role"] == "system"]
    assert sorted(b["messages"][1]["content"] for b in steered) == sorted(row["prompt"] for row in PROMPTS)
    assert report["candidates"] == 4 * 3 + 4 and report["prompts_short"] == 0

    # One contrast pair per prompt, against the first answer; all judged, in both orders.
    pairs = [p for path in sorted((run_dir / "pairs").glob("*.jsonl")) for p in read_records(path, Pair)]
    contrast_pairs = [p for p in pairs if p.strategy == "refusal_contrast"]
    assert len(pairs) == 16 and len(contrast_pairs) == 4
    for pair in contrast_pairs:
        ordinary = pair.b if pair.a.contrast else pair.a
        assert ordinary.contrast is None and ordinary.sample_index == 0
    judgments = {
        j.pair_id: j for path in sorted((run_dir / "judgments").glob("*.jsonl")) for j in read_records(path, Judgment)
    }
    assert all(judgments[p.id].status == "ok" for p in contrast_pairs)
    shown_refusals = [
        b for b in server.requests if b["model"] == "judge" and REASONABLE_REFUSAL_TEXT in judge_prompt(b)
    ]
    assert len(shown_refusals) == 2 * 2  # two reasonable-refusal pairs, each in both orders

    # The judge is checked, not assumed: the vaccine prompt's over-refusal pair was uncertain and went to people.
    assert report["refusal_contrast"] == {
        "candidates": {"over_refusal": 2, "reasonable_refusal": 2},
        "prompts_without": 0,
        "pairs": {
            "over_refusal": {"pairs": 2, "refusal_chosen": 0, "refusal_rejected": 1, "tie": 1, "failed": 0},
            "reasonable_refusal": {"pairs": 2, "refusal_chosen": 2, "refusal_rejected": 0, "tie": 0, "failed": 0},
        },
    }
    [queued] = [json.loads(line) for line in (run_dir / "review_queue.jsonl").read_text().splitlines()]
    routed_pair = Pair.model_validate(queued["pair"])
    assert routed_pair.strategy == "refusal_contrast" and "vaccines" in routed_pair.prompt.messages[-1].content

    # A person rejects the over-refusal; the dataset and its card count the contrast rows by final label.
    with ReviewStore.open(config.review_db()) as store:
        store.add_reviewer("ana")
        item = store.claim_next("contrast-test", "ana")
        refusal_side = "a" if item.pair.a.contrast else "b"
        store.submit(item.item.id, "ana", "b" if refusal_side == "a" else "a")
        result = merge_run(run_dir, config, store)
    assert result.figures["refusal_contrast"] == {
        "over_refusal": {"pairs": 2, "refusal_chosen": 0, "refusal_rejected": 2, "tie": 0, "both_bad": 0},
        "reasonable_refusal": {"pairs": 2, "refusal_chosen": 2, "refusal_rejected": 0, "tie": 0, "both_bad": 0},
    }
    rows = datasets.load_from_disk(str(result.path))
    assert sorted(r["contrast"] for r in rows if r["contrast"]) == sorted(expected)
    [human_row] = [r for r in rows if r["label_source"] == "human"]
    assert human_row["contrast"] == "over_refusal" and human_row["rejected"][0]["content"] == OVER_REFUSAL_TEXT
    card = (result.path / "README.md").read_text()
    assert "## Refusal contrast pairs" in card and "| over_refusal | 2 | 0 | 2 | 0 | 0 |" in card
    page = write_html_report(run_dir).read_text()
    assert "<tr><td>over_refusal</td><td>2</td><td>0</td><td>1</td><td>1</td><td>0</td></tr>" in page


def test_a_run_without_refusal_contrast_has_no_contrast_candidates_or_figures(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:2])
    with ScriptedOpenAIServer(reply=scripted_models) as server:
        report = asyncio.run(label_pipeline(load_config(None, scripted_overrides(server, prompts, tmp_path / "run"))))
    assert "refusal_contrast" not in report and report["pairs"] == 2 * 3
    assert not any(CLASSIFIER_MARK in judge_prompt(b) for b in server.requests)
    assert not any(b["messages"][0]["role"] == "system" for b in server.requests if b["model"] == "policy")


@pytest.mark.parametrize("value", ['"yes"', "1", "[true]"])
def test_a_bad_should_refuse_value_names_its_line(tmp_path, value):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps(PROMPTS[0]) + "\n" + '{"prompt": "Hello?", "should_refuse": ' + value + "}\n")
    with pytest.raises(PromptSourceError, match=r"prompts.jsonl:2: field 'should_refuse' must be true, false or null"):
        load_prompts(path)


def test_the_contrast_candidate_is_paired_with_the_first_answer_unless_it_says_the_same():
    prompt = PromptItem(messages=[{"role": "user", "content": "Hi?"}])
    ordinary = [Candidate(prompt_id=prompt.id, text=t, model="m", sample_index=i) for i, t in enumerate("xyz")]
    refusal = Candidate(prompt_id=prompt.id, text="No.", model="m", sample_index=3, contrast="over_refusal")
    pairs = make_pairs(prompt, [*ordinary, refusal], "all", seed=0)
    assert pairs[:3] == make_pairs(prompt, ordinary, "all", seed=0)  # the strategy's pairs are unchanged
    [contrast] = pairs[3:]
    assert contrast.strategy == "refusal_contrast" and {contrast.a.text, contrast.b.text} == {"x", "No."}
    same = refusal.model_copy(update={"text": " x ", "id": ""})
    assert make_pairs(prompt, [*ordinary, Candidate.model_validate(same.model_dump())], "all") == pairs[:3]


@pytest.mark.parametrize(
    ("reply", "expected"), [("R]]", True), ("[[H]]", False), (" [[ r ]] because", True), ("Here it is", None)]
)
def test_the_classifier_reply_is_parsed_or_left_undecided(reply, expected):
    assert parse_should_refuse(reply) is expected


def test_the_recipe_runs_contrast_pairs_with_the_real_model(smollm2_dir, tmp_path):
    """The shipped recipe's settings with SmolLM2-135M-Instruct in-process: every prompt is classified or
    read, contrast candidates are sampled steered and judged (whatever the tiny model makes of them)."""
    config = load_config(
        RECIPE,
        [f"run.dir={tmp_path / 'run'}", "prompts.limit=3", "sampling.n=2", "sampling.max_tokens=24"],
    )
    assert config.pairs.refusal_contrast
    report = asyncio.run(label_pipeline(config))
    figures = report["refusal_contrast"]
    made = sum(figures["candidates"].values())
    assert made + figures["prompts_without"] == 3 and made >= 2  # the first two prompts say should_refuse
    assert sum(row["pairs"] for row in figures["pairs"].values()) <= made
    run_dir = tmp_path / "run"
    candidates = [c for path in sorted((run_dir / "candidates").glob("*.jsonl")) for c in read_records(path, Candidate)]
    steered = [c for c in candidates if c.contrast is not None]
    assert len(steered) == made and all(c.text.startswith("I'm sorry, but ") for c in steered)  # the opening, continued
    assert all(len(c.text) > len("I'm sorry, but ") + 10 for c in steered)
    assert report["judge_failed"] == 0 and report["judged_ok"] == report["pairs"]
