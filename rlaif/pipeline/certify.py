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

With `judge.tiers`, the pairs below the run judge's threshold go to the first tier instead (Trust or
Escalate's cascade): it judges them and the run's audit pairs, is calibrated on the audit and certified on
the audit pairs the tiers before it passed on (drawn like the pairs it gets); what it is not certified on
goes to the next tier, and what the last leaves to people, within the budget as above. Each tier's label
is kept for the pairs it decides (`tier_decisions`); each tier is certified at `review.risk` on its own,
so the chance that some tier misses the target is at most the number of tiers times the risk.

The decision is written once, to RUN_DIR/certification.json, before anything is routed: a rerun reuses it
(routing and enqueueing are idempotent), so a crash between the steps loses nothing and routes nothing twice.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlaif.config import Config
from rlaif.judges.calibration import Calibrator, Example, calibration_report
from rlaif.judges.certification import GRID, CertifiedJudge, certify_judge
from rlaif.pipeline.cost_ledger import ledger_totals
from rlaif.pipeline.enqueue import enqueue_routed
from rlaif.pipeline.escalation import judge_tier, read_tier_judgments, tier_name, tier_stage
from rlaif.pipeline.route import route_run
from rlaif.pipeline.shard_plan import ShardPlan, judge_identity, judged_shards, scored_judgments
from rlaif.review.store import HumanDecision, ReviewStore
from rlaif.run_directory import RunDirectory, read_manifest
from rlaif.run_files import count_lines, write_json_atomic
from rlaif.schema import Pair

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
        if row["reason"] in FIRST_PHASE and (row["pair_id"] not in decisions or decisions[row["pair_id"]].open)
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


def earlier_runs_calibrator(plans: Sequence[ShardPlan], config: Config, store: ReviewStore) -> Calibrator | None:
    """Fixed routing (no target) with `review.calibration_runs`: a calibrator fitted on those runs' reviewed
    pairs of this run's judge (model and template hash), for routing by calibrated probability; None without
    them, or when they are too few to fit one (the raw confidence is used)."""
    if config.review.target_agreement is not None or not config.review.calibration_runs:
        return None
    identity = judge_identity(plans)
    if identity is None:
        return None
    examples = [e for run_id in config.review.calibration_runs for e in reviewed_examples(store, run_id, *identity)]
    calibrator = Calibrator.fit(examples, seed=config.run.seed)
    return calibrator if calibrator.fitted else None


async def certify_run(run_dir: Path, config: Config, store: ReviewStore) -> dict[str, Any] | None:
    """Decide the second phase and route it (RUN_DIR/certification.json, routing, review queue); None while
    the first phase is still with people or the run has no target. Returns the certification; the pairs it
    routes are in the review database when it returns. With `judge.tiers`, the tiers judge here."""
    review = config.review
    if review.target_agreement is None:
        return None
    run = RunDirectory(run_dir)
    if not run.certification.is_file():
        manifest = read_manifest(run)
        if first_phase_open(manifest, store.decisions(config.run.name)):
            return None
        write_json_atomic(run.certification, await decide(run, manifest, config, store))
    route_run(run, judged_shards(run), config)
    enqueue_routed(run, config, store)
    return json.loads(run.certification.read_text(encoding="utf-8"))


Candidate = tuple[float, str, str, str]  # (calibrated probability, the run judge's judgment id, pair id, prompt id)


async def decide(run: RunDirectory, manifest: dict[str, Any], config: Config, store: ReviewStore) -> dict[str, Any]:
    """Calibrate, certify and choose the pairs below the threshold, tier by tier (see the module docstring)."""
    review = config.review
    target, risk, seed = review.target_agreement or 0.0, review.risk, config.run.seed
    shards = judged_shards(run)
    judge_model, template_hash = judge_identity(shards) or ("", "")
    by_run = {
        run_id: reviewed_examples(store, run_id, judge_model, template_hash)
        for run_id in dict.fromkeys([config.run.name, *review.calibration_runs])
    }
    examples = [example for found in by_run.values() for example in found]
    certified = certify_judge(examples, target, risk, seed=seed)
    threshold = _threshold(certified)
    # The run's own audit pairs (first in `examples`): what each escalation tier is judged and certified on,
    # with whether the tiers so far passed each one on.
    own_audit = [i for i, example in enumerate(by_run[config.run.name]) if example.reason == "audit"]
    audit = [examples[i] for i in own_audit]
    passed_on = [certified.scores[i] < threshold for i in own_audit]

    total = sum(count_lines(shard.judgments) for shard in shards)
    budget_fraction = review.budget_fraction()
    left = max(0, round(budget_fraction * total) - len(manifest["routed"]))
    routed_pairs = {row["pair_id"] for row in manifest["routed"]}
    below: list[Candidate] = []
    escalated: list[Pair] = []  # the pairs below the threshold, kept only when a tier takes them
    kept: list[float] = []  # the probabilities of the pairs the current tier keeps
    prompts: set[str] = set()
    for probability, judgment, pair in scored_judgments(shards, certified.calibrator, skip=routed_pairs):
        prompts.add(pair.prompt.id)
        if probability < threshold:
            below.append((probability, judgment.id, pair.id, pair.prompt.id))
            if config.judge.tiers:
                escalated.append(pair)
        else:
            kept.append(probability)
    tiers = [_tier_row(0, judge_model, certified, examples, len(below) + len(kept), len(kept))]
    levels: list[float] = []  # the certified level of every tier before the last that kept pairs
    tier_decisions: dict[str, int] = {}  # pair id -> escalation tier whose label the dataset takes
    current = certified
    for tier in range(1, len(config.judge.tiers) + 1):
        if not escalated:
            break  # every pair is decided: the tiers after this one have nothing to take
        if kept:
            levels.append(current.certificate.lower_bound or 0.0)
        path = await judge_tier(run, config, tier, [example.pair for example in audit] + escalated)
        judged = read_tier_judgments(path)
        tier_examples = [Example(e.pair, judged[e.pair.id], e.human, e.reason) for e in audit]
        current = certify_judge(tier_examples, target, risk, seed=seed, certify_on=passed_on)
        threshold = _threshold(current)
        passed_on = [on and score < threshold for on, score in zip(passed_on, current.scores, strict=True)]
        probabilities = current.calibrator.probabilities([(pair, judged[pair.id]) for pair in escalated])
        first_judgment = {candidate[2]: candidate[1] for candidate in below}
        below, kept, still = [], [], []
        for pair, probability in zip(escalated, probabilities, strict=True):
            if probability < threshold:
                below.append((probability, first_judgment[pair.id], pair.id, pair.prompt.id))
                still.append(pair)
            else:
                kept.append(probability)
                tier_decisions[pair.id] = tier
        row = _tier_row(
            tier, tier_name(config.judge.tiers[tier - 1]), current, tier_examples, len(escalated), len(kept)
        )
        tiers.append({**row, "judgments": str(path.relative_to(run.root))})
        escalated = still

    chosen = spread_over_prompts(sorted(below), left, len(prompts))
    picked = set(chosen)
    unchosen = [candidate for candidate in below if candidate not in picked]  # the last tier's label stays
    kept += [candidate[0] for candidate in unchosen]
    if len(tiers) > 1:
        tier_decisions.update((candidate[2], len(tiers) - 1) for candidate in unchosen)
    tiers[-1]["pairs_decided"] = len(kept)
    certificate = current.certificate
    if not kept:
        reached, level = True, min(levels, default=1.0)  # the last tier keeps nothing: people have the rest
    elif certificate.certified and len(below) <= left:
        reached, level = True, min([*levels, certificate.lower_bound or 0.0])
    else:
        reached = False
        level = min([*levels, current.level_at(max((g for g in GRID if g <= min(kept)), default=0.0))])
    _add_spending(tiers, run, config)
    routed_share = (len(manifest["routed"]) + len(chosen)) / total if total else 0.0
    return {
        "target_agreement": target,
        "risk": risk,
        "budget_fraction": budget_fraction,
        "calibration": {
            **tiers[0]["calibration"],
            "runs": {run_id: len(found) for run_id, found in by_run.items()},  # reviewed pairs of this judge
            "judge": judge_model,
            "template_hash": template_hash,
        },
        "certified": certified.certificate.certified,
        "threshold": certified.certificate.threshold,
        "audit_pairs_above_threshold": certified.certificate.n,
        "audit_agreed_above_threshold": certified.certificate.agreed,
        "pairs": total,
        "below_threshold": len(below),
        "budget_left": left,
        "reached_target": reached,
        "level_reached": level,
        "review_share": routed_share,
        "routed_judgments": [judgment_id for _, judgment_id, _, _ in chosen],
        "tiers": tiers,
        "tier_decisions": tier_decisions,
        "message": _message(
            target, risk, certificate.certified, reached, level, len(below), left, len(current.audit_scores), len(tiers)
        ),
    }


def _threshold(certified: CertifiedJudge) -> float:
    """The calibrated probability below which a pair is passed on (to the next tier or to people)."""
    threshold = certified.certificate.threshold
    return threshold if threshold is not None else 1.01  # none passed: all go


def _tier_row(
    tier: int, judge: str, certified: CertifiedJudge, examples: list[Example], judged: int, decided: int
) -> dict[str, Any]:
    """What the card and the report say about one tier: its certificate, calibration and pairs."""
    certificate = certified.certificate
    return {
        "tier": tier,
        "judge": judge,
        "stage": tier_stage(tier),
        "certified": certificate.certified,
        "threshold": certificate.threshold,
        "lower_bound": certificate.lower_bound,
        "audit_pairs": len(certified.audit_scores),  # what it was certified on
        "audit_pairs_above_threshold": certificate.n,
        "audit_agreed_above_threshold": certificate.agreed,
        "pairs_judged": judged,  # of the pairs left after the first phase
        "pairs_decided": decided,
        "calibration": {
            **calibration_report(examples, calibrated=certified.scores),
            "fitted": certified.calibrator.fitted,
            "calibrator": certified.calibrator.to_json(),
            "audit_pairs": len(certified.audit_scores),
        },
    }


def _add_spending(tiers: list[dict[str, Any]], run: RunDirectory, config: Config) -> None:
    """Each tier's spending from the cost ledger (requests, tokens, money), summed over its models."""
    stages = ledger_totals(run, config.cost)["stages"]
    for row in tiers:
        models = stages.get(row["stage"], {}).values()
        row["spent"] = {key: sum(m[key] for m in models) for key in ("requests", "prompt_tokens", "completion_tokens")}


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


def _message(
    target: float,
    risk: float,
    certified: bool,
    reached: bool,
    level: float | None,
    below: int,
    left: int,
    audit: int,
    tiers: int = 1,
) -> str:
    """The one line a run says about its certified level; with escalation tiers, about the last tier."""
    promise = f"agreement with people of at least {100 * target:.0f}% with probability {100 * (1 - risk):.0f}%"
    if tiers > 1:
        promise += f" for each of {tiers} judge tiers"
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
