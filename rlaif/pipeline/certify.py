"""The second phase of review (`review.target_agreement`): calibrate the judge on what people said about the
audit, certify a confidence threshold, and send people the pairs below it.

Runs once the run's first-phase items (failures and the random audit) are all finished. The calibration
set is the reviewed pairs of this run and of `review.calibration_runs` judged by the same judge (model and
template hash); the certification test uses only their random audit pairs (the others were chosen for being
unsure, so they are not drawn like the pairs the judge keeps), scored cross-fitted so that no pair is scored
by a calibrator that saw it. The rest of the run is scored by the calibrator fitted on the whole set.

Pairs below the certified threshold go to people, least sure first, as far as the budget
(`review.max_fraction` of all pairs, the first phase included) allows; when it cannot take them all, no
prompt gets more than its share of it before every prompt has had its share (`spread_over_prompts`). When
no threshold certifies the target, or the budget stops short of it, the run still goes on: the result says
so, with the level that was reached at the threshold the budget allowed.

The decision is written once, to RUN_DIR/certification.json, before anything is routed: a rerun reuses it
(routing and enqueueing are idempotent), so a crash between the steps loses nothing and routes nothing twice.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlaif.config import Config
from rlaif.judges.calibration import Calibrator, Example, calibration_report
from rlaif.judges.certification import GRID, certify_judge
from rlaif.pipeline.enqueue import enqueue_routed
from rlaif.pipeline.route import route_run
from rlaif.pipeline.shard_plan import judged_shards
from rlaif.review.store import HumanDecision, ReviewStore
from rlaif.run_directory import RunDirectory, read_manifest, read_records
from rlaif.run_files import count_lines, write_json_atomic
from rlaif.schema import Judgment, Pair

FIRST_PHASE = ("failed", "audit")
TWO_PHASE_WAIT = (
    "review.target_agreement: the audit sample goes to people first; once it is labelled, the pairs below the "
    "certified threshold follow (`rlaif label` again, `rlaif merge`, or the merge deployment on the queue-emptied "
    "event)"
)


def first_phase_open(manifest: dict[str, Any], decisions: dict[str, HumanDecision]) -> int:
    """First-phase items of the run that people have not finished (or that are not in the database yet)."""
    return sum(
        1
        for row in manifest["routed"]
        if row["reason"] in FIRST_PHASE
        and (row["pair_id"] not in decisions or decisions[row["pair_id"]].status in ("pending", "claimed"))
    )


def reviewed_examples(store: ReviewStore, run_id: str, judge_model: str, template_hash: str) -> list[Example]:
    """The pairs of a run that people labelled, judged (successfully) by this judge, with their labels."""
    decisions = store.decisions(run_id)
    examples = []
    for row in store.export_rows(run_id):
        decision = decisions[row["item"]["pair_id"]]
        judgment = decision.judgment
        if decision.label is None or judgment.status != "ok":
            continue
        if (judgment.judge_model, judgment.template_hash) != (judge_model, template_hash):
            continue
        examples.append(Example(Pair.model_validate(row["pair"]), judgment, decision.label, decision.reason))
    return examples


def certify_run(run_dir: Path, config: Config, store: ReviewStore) -> dict[str, Any] | None:
    """Decide the second phase and route it (RUN_DIR/certification.json, routing, review queue); None while
    the first phase is still with people or the run has no target. Returns the certification; the pairs it
    routes are in the review database when it returns."""
    review = config.review
    if review.target_agreement is None:
        return None
    run = RunDirectory(run_dir)
    if not run.certification.is_file():
        manifest = read_manifest(run)
        if first_phase_open(manifest, store.decisions(config.run.name)):
            return None
        write_json_atomic(run.certification, decide(run, manifest, config, store))
    route_run(run, judged_shards(run), config)
    enqueue_routed(run, config, store)
    return json.loads(run.certification.read_text(encoding="utf-8"))


def decide(run: RunDirectory, manifest: dict[str, Any], config: Config, store: ReviewStore) -> dict[str, Any]:
    """Calibrate, certify and choose the pairs below the threshold (see the module docstring)."""
    review = config.review
    target, risk = review.target_agreement or 0.0, review.risk
    judge_model, template_hash = _judge_identity(manifest, run)
    by_run = {
        run_id: reviewed_examples(store, run_id, judge_model, template_hash)
        for run_id in dict.fromkeys([config.run.name, *review.calibration_runs])
    }
    examples = [example for found in by_run.values() for example in found]
    certified = certify_judge(examples, target, risk, seed=config.run.seed)
    calibrator, certificate = certified.calibrator, certified.certificate
    threshold = certificate.threshold if certificate.threshold is not None else 1.01  # none passed: all go

    total = sum(count_lines(run.root / shard["judgments"]) for shard in manifest["shards"])
    budget_fraction = review.budget_fraction()
    budget = round(budget_fraction * total)
    left = max(0, budget - len(manifest["routed"]))
    routed_pairs = {row["pair_id"] for row in manifest["routed"]}
    below: list[tuple[float, str, str, str]] = []  # (probability, judgment id, pair id, prompt id) under it
    kept_lowest: float | None = None  # the least sure of the pairs at or above the threshold
    prompts: set[str] = set()
    for probability, judgment, prompt_id in _scored_remainder(run, manifest, calibrator, routed_pairs):
        prompts.add(prompt_id)
        if probability < threshold:
            below.append((probability, judgment.id, judgment.pair_id, prompt_id))
        elif kept_lowest is None or probability < kept_lowest:
            kept_lowest = probability
    chosen = spread_over_prompts(sorted(below), left, len(prompts))
    picked = set(chosen)
    unchosen = [c[0] for c in below if c not in picked]
    if unchosen:
        kept_lowest = min(unchosen)
    if kept_lowest is None:
        reached, level = True, 1.0  # every pair went to people
    elif certificate.certified and len(below) <= left:
        reached, level = True, certificate.lower_bound
    else:
        reached = False
        level = certified.level_at(max((g for g in GRID if g <= kept_lowest), default=0.0))
    routed_share = (len(manifest["routed"]) + len(chosen)) / total if total else 0.0
    return {
        "target_agreement": target,
        "risk": risk,
        "budget_fraction": budget_fraction,
        "calibration": {
            **calibration_report(examples, calibrated=certified.scores),
            "fitted": calibrator.fitted,
            "calibrator": calibrator.to_json(),
            "runs": {run_id: len(found) for run_id, found in by_run.items()},  # reviewed pairs of this judge
            "audit_pairs": len(certified.audit_scores),
            "judge": judge_model,
            "template_hash": template_hash,
        },
        "certified": certificate.certified,
        "threshold": certificate.threshold,
        "audit_pairs_above_threshold": certificate.n,
        "audit_agreed_above_threshold": certificate.agreed,
        "pairs": total,
        "below_threshold": len(below),
        "budget_left": left,
        "reached_target": reached,
        "level_reached": level,
        "review_share": routed_share,
        "routed_judgments": [judgment_id for _, judgment_id, _, _ in chosen],
        "message": _message(
            target, risk, certificate.certified, reached, level, len(below), left, len(certified.audit_scores)
        ),
    }


def spread_over_prompts(
    candidates: list[tuple[float, str, str, str]], budget: int, prompts: int
) -> list[tuple[float, str, str, str]]:
    """The pairs people get from `candidates` (least sure first; the last field is the prompt id): all of them
    when the budget allows; else the least sure with no prompt past its share of the budget (the budget over
    the run's prompts, at least one), then the least sure of the others while budget is left, so that one
    prompt with many unsure pairs does not take the budget other prompts need."""
    if len(candidates) <= budget:
        return candidates
    share = max(1, math.ceil(budget / max(1, prompts)))
    taken: Counter[str] = Counter()
    chosen: list[tuple[float, str, str, str]] = []
    for candidate in candidates:
        if len(chosen) < budget and taken[candidate[3]] < share:
            chosen.append(candidate)
            taken[candidate[3]] += 1
    picked = set(chosen)
    chosen += [c for c in candidates if c not in picked][: budget - len(chosen)]
    return sorted(chosen)


def _scored_remainder(
    run: RunDirectory, manifest: dict[str, Any], calibrator: Calibrator, routed: set[str]
) -> Iterator[tuple[float, Judgment, str]]:
    """(calibrated probability, judgment, prompt id) of every pair not routed in the first phase, by shard."""
    for shard in manifest["shards"]:
        judgments = {
            j.pair_id: j for j in read_records(run.root / shard["judgments"], Judgment) if j.pair_id not in routed
        }
        judged = [(p, judgments[p.id]) for p in read_records(run.root / shard["pairs"], Pair) if p.id in judgments]
        for probability, (pair, judgment) in zip(calibrator.probabilities(judged), judged, strict=True):
            yield probability, judgment, pair.prompt.id


def _judge_identity(manifest: dict[str, Any], run: RunDirectory) -> tuple[str, str]:
    """The run's judge model and template hash, from its first judgment."""
    for shard in manifest["shards"]:
        for judgment in read_records(run.root / shard["judgments"], Judgment):
            return judgment.judge_model, judgment.template_hash
    return "", ""


def _message(
    target: float,
    risk: float,
    certified: bool,
    reached: bool,
    level: float | None,
    below: int,
    left: int,
    audit: int,
) -> str:
    promise = f"agreement with people of at least {100 * target:.0f}% with probability {100 * (1 - risk):.0f}%"
    if reached:
        return f"certified: {promise}, on {audit} audit pairs; the {below} pairs below the threshold go to people"
    why = (
        f"{below} pairs are below the certified threshold and the budget (review.max_fraction) leaves room for {left}"
        if certified
        else f"no confidence threshold certifies it on {audit} audit pairs (label more: raise review.audit_fraction, "
        "or add review.calibration_runs)"
    )
    return (
        f"target not reached: {promise} was asked; {why}. The least sure pairs go to people as far as the budget "
        f"allows; level reached: {100 * (level or 0.0):.1f}%"
    )
