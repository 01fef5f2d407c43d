"""Agreement people can act on, per run: how often reviewers agree with each other where their items overlap,
how often the judge agrees with them on the audit (a random sample, so the figure is unbiased), each
reviewer's own figures (with gold items, review.gold, how often they gave the known answer), and the items
where they disagree, for the run's owner to look at."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rlaif.agreement import agreement
from rlaif.review.ranking import ranked_pairs
from rlaif.review.store import HumanDecision
from rlaif.schema import Pair


@dataclass(frozen=True)
class Disagreement:
    """An item where reviewers gave different labels, or where people (the majority) and the judge differ on
    an audit item."""

    decision: HumanDecision
    between_reviewers: bool
    with_judge: bool
    pair: Pair | None = None  # ranking mode: the pair of answers they differ on


def agreement_report(decisions: Iterable[HumanDecision]) -> dict[str, Any]:
    """The run's agreement figures (each `agreement()`: n, share, 95% interval; None without data), per reviewer,
    and its disagreements (reviewers' first, then the judge's on the audit)."""
    between: list[bool] = []
    judge_on_audit: list[bool] = []
    per_reviewer: dict[str, dict[str, list[bool]]] = {}
    disagreements: list[Disagreement] = []
    for decision, pair in _as_pairs(decisions):
        labels = decision.labels
        for reviewer, _ in labels:
            per_reviewer.setdefault(reviewer, {"labelled": [], "with_others": [], "with_judge": [], "gold": []})
        if decision.gold_label is not None:  # measures each reviewer, apart from the run's own items
            for reviewer, label in labels:
                per_reviewer[reviewer]["gold"].append(label == decision.gold_label)
            continue
        for i, (first, first_label) in enumerate(labels):
            per_reviewer[first]["labelled"].append(True)
            for second, second_label in labels[i + 1 :]:
                same = first_label == second_label
                between.append(same)
                per_reviewer[first]["with_others"].append(same)
                per_reviewer[second]["with_others"].append(same)
        audited = decision.reason == "audit" and decision.judgment.status == "ok" and decision.label is not None
        judge_agrees = audited and decision.judgment.winner == decision.label
        if audited:
            judge_on_audit.append(judge_agrees)
            for reviewer, label in labels:
                per_reviewer[reviewer]["with_judge"].append(decision.judgment.winner == label)
        split = len({label for _, label in labels}) > 1
        if split or (audited and not judge_agrees):
            disagreements.append(Disagreement(decision, split, audited and not judge_agrees, pair))
    disagreements.sort(key=lambda found: not found.between_reviewers)
    return {
        "between_reviewers": agreement(between),
        "judge_on_audit": agreement(judge_on_audit),
        "reviewers": {
            name: {
                "labelled": len(figures["labelled"]),
                "with_others": agreement(figures["with_others"]),
                "with_judge_on_audit": agreement(figures["with_judge"]),
                "gold": agreement(figures["gold"]),
            }
            for name, figures in sorted(per_reviewer.items())
        },
        "disagreements": disagreements,
    }


def _as_pairs(decisions: Iterable[HumanDecision]) -> Iterator[tuple[HumanDecision, Pair | None]]:
    """Each decision about a pair as it is; a ranking (ranking mode) as the pairs it decides."""
    for decision in decisions:
        if decision.candidates:
            yield from ((found, pair) for pair, found in ranked_pairs(decision).values())
        else:
            yield decision, None
