"""The merge: judge labels plus human labels into one dataset that TRL trains on directly.

A human label overrides the judge's. Ties and both-bad pairs are dropped unless the config keeps them.
Routed items nobody finished block the merge (`merge.on_pending: block`) or keep the judge's label and
are flagged (`judge`); items people set aside (skipped) keep the judge's label, flagged. Pairs whose
judgment failed and that no person labelled have no label and are left out (counted).

Rows are streamed from the shards to disk, never held for the whole run. Output, replaced atomically:
RUN_DIR/dataset/ is a `datasets` dataset saved to disk (load it with `datasets.load_from_disk`) in
TRL's conversational prompt/chosen/rejected form with provenance columns, plus README.md (the dataset
card) and merge.json (the same figures as JSON).
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from rlaif.agreement import agreement
from rlaif.config import Config, dump_config
from rlaif.errors import ExpectedError
from rlaif.judges.calibration import Calibrator, Example, cross_fitted, raw_probability, reliability_bins
from rlaif.pipeline.bias_audit import longer_wins_rate, self_preference_warning
from rlaif.pipeline.refusal_contrast import DATASET_OUTCOMES, contrast_of, outcome, outcome_table
from rlaif.review.ranking import oriented, ranked_pairs
from rlaif.review.store import HumanDecision, ReviewStore
from rlaif.run_directory import RunDirectory, read_manifest, read_records
from rlaif.run_files import write_json_atomic
from rlaif.schema import Judgment, Message, Pair, PreferenceRecord


class MergeError(ExpectedError, ValueError):
    """The run cannot be merged yet (or at all); the message says why and what to do."""


@dataclass(frozen=True)
class MergeResult:
    path: Path
    figures: dict[str, Any]


def merge_run(run_dir: Path, config: Config, store: ReviewStore, on_pending: str | None = None) -> MergeResult:
    """Build RUN_DIR/dataset from the run's judgments and the review store's labels."""
    run = RunDirectory(run_dir)
    manifest = read_manifest(run)
    run_id = config.run.name
    on_pending = on_pending or config.merge.on_pending
    decisions = store.decisions(run_id)
    routed = {row["pair_id"]: row["reason"] for row in manifest["routed"]}
    # Ranking mode: each ranking stands for every pair of its prompt's answers (routed or not).
    ranked = {pair_id: found for d in decisions.values() for pair_id, found in ranked_pairs(d).items()}
    unqueued = [pair_id for pair_id in routed if pair_id not in decisions and pair_id not in ranked]
    if unqueued:
        raise MergeError(
            f"{len(unqueued)} routed pairs of run {run_id!r} are not in the review database "
            f"(first: {unqueued[0]}): enqueue them with `rlaif review enqueue {run_dir}`"
        )
    open_items = [d for d in decisions.values() if d.pair_id in routed and d.open]
    if open_items and on_pending == "block":
        raise MergeError(
            f"{len(open_items)} of {len(routed)} review items of run {run_id!r} are not labelled yet: finish them "
            "in the review service (`rlaif review serve`), or merge with the judge's labels for them "
            "(--on-pending judge / merge.on_pending: judge)"
        )
    certification = json.loads(run.certification.read_text(encoding="utf-8")) if run.certification.is_file() else None
    calibrator = Calibrator.from_json(certification["calibration"]["calibrator"]) if certification else None
    tier_judgments, tier_calibrators = _escalation_labels(run, certification)
    if config.review.target_agreement is not None and certification is None and on_pending == "block":
        raise MergeError(
            f"run {run_id!r} has review.target_agreement set and its second review phase has not been routed: "
            "it is routed once people have labelled the audit sample"
        )
    counts: Counter[str] = Counter()
    contrast: Counter[tuple[str, str]] = Counter()  # (kind, outcome) of the refusal-contrast rows
    audit: list[Example] = []  # the audit pairs people labelled a, b or tie, with the judge's verdict
    reward_round: list[bool] = []  # the second round's pairs: did people keep the label the reward model doubted
    reviewed: list[bool] = []

    def rows() -> Iterator[dict[str, Any]]:
        for shard in manifest["shards"]:
            judgments = {j.pair_id: j for j in read_records(run.root / shard["judgments"], Judgment)}
            for pair in read_records(run.root / shard["pairs"], Pair):
                judgment = judgments.get(pair.id)
                if judgment is None:
                    counts["pairs_without_judgment"] += 1
                    continue
                human = decisions.get(pair.id) if pair.id in routed else None
                if pair.id in ranked:
                    human = oriented(ranked[pair.id][1], ranked[pair.id][0], pair)
                if human is not None and human.label is not None and judgment.status == "ok":
                    agree = judgment.winner == human.label
                    if human.label != "both_bad":
                        reviewed.append(agree)
                        if human.reason == "audit":
                            audit.append(Example(pair, judgment, human.label, "audit"))
                labelled_by = tier_judgments.get(pair.id)  # judge.tiers: the tier that decided the pair
                if human is not None and human.label is not None and human.reason == "reward_disagreement":
                    questioned = labelled_by[1] if labelled_by is not None else judgment
                    reward_round.append(questioned.status == "ok" and questioned.winner == human.label)
                record = (
                    preference_record(pair, labelled_by[1], human, config, counts, tier_calibrators[labelled_by[0]])
                    if labelled_by is not None
                    else preference_record(pair, judgment, human, config, counts, calibrator)
                )
                if record is not None:
                    found = contrast_of(pair)
                    if found is not None:
                        contrast[(found[0], outcome(record.label, side=found[1]))] += 1
                    yield record.to_row()

    import datasets  # imported here: it is slow to import and only the merge needs it

    with tempfile.TemporaryDirectory(prefix=".dataset-", dir=run.root) as scratch:
        # Rows stream to an Arrow file in the scratch folder (memory stays flat at any run size). The
        # fingerprint is given, not hashed from the generator: the cache is new each time anyway.
        dataset = datasets.Dataset.from_generator(
            rows, features=dataset_features(), cache_dir=str(Path(scratch) / "cache"), fingerprint=uuid.uuid4().hex
        )
        staged = Path(scratch) / "dataset"
        dataset.save_to_disk(str(staged))
        figures = {
            "run": run_id,
            "rows": len(dataset),
            "label_sources": dict(Counter(dataset["label_source"])),
            "labels": dict(Counter(dataset["label"])),
            "flagged": sum(dataset["flagged"]),
            "routed": len(routed),
            "review_status": dict(Counter((decisions.get(p) or ranked[p][1]).status for p in routed)),
            "dropped": {key: value for key, value in sorted(counts.items())},
            "audit_agreement": agreement([example.agreed for example in audit]),
            "reliability": audit_reliability(audit, calibrated=calibrator is not None, seed=config.run.seed),
            "reward_round_agreement": agreement(reward_round),
            "reviewed_agreement": agreement(reviewed),
            "on_pending": on_pending,
            "inter_annotator_agreement": store.stats(run_id)["inter_annotator_agreement"] if routed else None,
            "refusal_contrast": outcome_table(contrast, DATASET_OUTCOMES) if contrast else None,
            "certification": _certification_summary(certification),
            "self_preference_warning": self_preference_warning(config.policy.model, config.judge),
            "length_bias_on_audit": {
                "judge": longer_wins_rate((example.pair, example.judgment.winner) for example in audit),
                "people": longer_wins_rate((example.pair, example.human) for example in audit),
            },
        }
        del dataset
        write_json_atomic(staged / "merge.json", figures)
        (staged / "README.md").write_text(dataset_card(config, figures), encoding="utf-8")
        target = run.dataset
        previous = Path(scratch) / "previous"
        if target.exists():
            target.rename(previous)
        staged.rename(target)
    return MergeResult(target, figures)


def _escalation_labels(
    run: RunDirectory, certification: dict[str, Any] | None
) -> tuple[dict[str, tuple[int, Judgment]], dict[int, Calibrator]]:
    """With `judge.tiers`: the judgment each escalation tier gave the pairs it decided, by pair id (with the
    tier), and each tier's calibrator."""
    if certification is None or len(certification.get("tiers", [])) < 2:
        return {}, {}
    decided = certification["tier_decisions"]
    labels: dict[str, tuple[int, Judgment]] = {}
    calibrators = {}
    for row in certification["tiers"][1:]:
        tier = row["tier"]
        calibrators[tier] = Calibrator.from_json(row["calibration"]["calibrator"])
        for judgment in read_records(run.root / row["judgments"], Judgment):
            if decided.get(judgment.pair_id) == tier:
                labels[judgment.pair_id] = (tier, judgment)
    return labels, calibrators


def _certification_summary(certification: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the card and merge.json say about the certified level (the routed ids stay in certification.json)."""
    if certification is None:
        return None
    return {key: value for key, value in certification.items() if key not in ("routed_judgments", "tier_decisions")}


def dataset_features() -> Any:
    """The columns of the merged dataset (TRL's conversational form plus provenance)."""
    import datasets

    messages = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    return datasets.Features(
        {
            "prompt": messages,
            "chosen": messages,
            "rejected": messages,
            "prompt_id": datasets.Value("string"),
            "pair_id": datasets.Value("string"),
            "label": datasets.Value("string"),
            "label_source": datasets.Value("string"),
            "judge_label": datasets.Value("string"),
            "review_reason": datasets.Value("string"),
            "flagged": datasets.Value("bool"),
            "reviewers": datasets.List(datasets.Value("string")),
            "ranked": datasets.Value("bool"),
            "human_strength": datasets.Value("string"),
            "tags": datasets.List(datasets.Value("string")),
            "judge": datasets.Value("string"),
            "template_hash": datasets.Value("string"),
            "confidence": datasets.Value("float64"),
            "calibrated_agreement": datasets.Value("float64"),
            "policy_models": datasets.List(datasets.Value("string")),
            "contrast": datasets.Value("string"),
        }
    )


def preference_record(
    pair: Pair,
    judgment: Judgment,
    human: HumanDecision | None,
    config: Config,
    counts: Counter[str],
    calibrator: Calibrator | None = None,
) -> PreferenceRecord | None:
    """The dataset row of one pair, or None when the pair is left out (the reason is counted); with the run's
    calibrator (review.target_agreement), the calibrated probability that people agree with the judge."""
    flagged = False
    reviewers: tuple[str, ...] = ()
    if human is not None and human.label is not None:
        label, source, reviewers = human.label, "human", tuple(name for name, _ in human.labels)
    elif judgment.winner is not None:
        label, source = judgment.winner, "judge"
        flagged = human is not None  # people were asked and did not answer (pending or skipped)
    else:
        counts["no_label"] += 1
        return None
    if label == "tie" and not config.merge.keep_ties:
        counts["tie"] += 1
        return None
    if label == "both_bad" and not config.merge.keep_both_bad:
        counts["both_bad"] += 1
        return None
    chosen, rejected = (pair.b, pair.a) if label == "b" else (pair.a, pair.b)
    found = contrast_of(pair)
    return PreferenceRecord(
        prompt=pair.prompt.messages,
        chosen=(Message(role="assistant", content=chosen.text),),
        rejected=(Message(role="assistant", content=rejected.text),),
        prompt_id=pair.prompt.id,
        pair_id=pair.id,
        label=label,
        label_source=source,
        judge_label=judgment.winner,
        review_reason=human.reason if human is not None else None,
        flagged=flagged,
        reviewers=reviewers,
        ranked=source == "human" and human is not None and bool(human.candidates),
        human_strength=human.strength if source == "human" and human is not None else None,
        tags=human.tags if human is not None else (),
        judge=judgment.judge_model,
        template_hash=judgment.template_hash,
        confidence=judgment.confidence,
        calibrated_agreement=calibrator.probability(pair, judgment) if calibrator and judgment.status == "ok" else None,
        policy_models=tuple(dict.fromkeys((pair.a.model, pair.b.model))),
        contrast=found[0] if found else None,
    )


def audit_reliability(examples: list[Example], calibrated: bool, seed: int) -> dict[str, Any] | None:
    """The judge's reliability diagram on the audit pairs people labelled (a random sample, so unbiased): per bin
    of its own probability of being right, how often people agreed; with `calibrated` (the run calibrated its
    judge), the same for the calibrated probability, cross-fitted so that no pair is scored by a fit that saw
    it. None without audit labels."""
    if not examples:
        return None
    outcomes = [example.agreed for example in examples]
    raw = [raw_probability(example.judgment) for example in examples]
    return {
        "pairs": len(examples),
        "raw": reliability_bins(raw, outcomes),
        "calibrated": reliability_bins(cross_fitted(examples, seed=seed), outcomes) if calibrated else None,
    }


def dataset_card(config: Config, figures: dict[str, Any]) -> str:
    """The README.md of the dataset: counts, label sources, judge-vs-human agreement, the config used."""
    environment = Environment(
        loader=PackageLoader("rlaif.pipeline", "templates"), undefined=StrictUndefined, keep_trailing_newline=True
    )
    return environment.get_template("dataset_card.md.j2").render(
        figures=figures, config=config, config_yaml=dump_config(config)
    )
