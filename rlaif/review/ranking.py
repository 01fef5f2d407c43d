"""Ranking mode: a reviewer orders all the answers of a prompt, best first, ties allowed (InstructGPT's way of
collecting comparisons: one reading of K answers gives K(K-1)/2 pairs). A ranking stands for the pairs it
decides; the merge, the agreement page and the Label Studio export read it as those pairs."""

from __future__ import annotations

from dataclasses import replace

from rlaif.review.store import HumanDecision, Ranking
from rlaif.schema import Judgment, Pair, ReviewLabel

SWAPPED: dict[ReviewLabel, ReviewLabel] = {"a": "b", "b": "a", "tie": "tie", "both_bad": "both_bad"}


def pair_label(ranking: Ranking, first: int, second: int) -> ReviewLabel:
    """a when answer `first` is ranked above answer `second`, b when below, tie when they share a tier."""
    place = {index: tier for tier, indices in enumerate(ranking) for index in indices}
    if place[first] == place[second]:
        return "tie"
    return "a" if place[first] < place[second] else "b"


def ranked_pairs(decision: HumanDecision) -> dict[str, tuple[Pair, HumanDecision]]:
    """Every pair of a ranking item's answers (a before b in the item's order), by pair id, with what people
    said about it: one label per reviewer who ranked them. The routed pair keeps the judge's judgment; the
    others were not judged for this item (the merge takes their judgments from the run)."""
    if decision.prompt is None:
        return {}
    given = zip(decision.labels, decision.rankings, strict=True)
    ranked = [(reviewer, ranking) for (reviewer, _), ranking in given if ranking]
    pairs = {}
    for i, first in enumerate(decision.candidates):
        for j in range(i + 1, len(decision.candidates)):
            pair = Pair(prompt=decision.prompt, a=first, b=decision.candidates[j])
            judgment = (
                decision.judgment
                if pair.id == decision.pair_id
                else Judgment.not_judged(pair.id, "ranked by people; the judge's verdict is in the run's judgments")
            )
            labels = tuple((reviewer, pair_label(ranking, i, j)) for reviewer, ranking in ranked)
            pairs[pair.id] = (pair, replace(decision, pair_id=pair.id, labels=labels, judgment=judgment, strengths=()))
    return pairs


def oriented(decision: HumanDecision, expanded: Pair, pair: Pair) -> HumanDecision:
    """`decision` (about `expanded`) with its labels in `pair`'s a/b order: the same two answers, perhaps the
    other way round."""
    if pair.a.id == expanded.a.id:
        return decision
    return replace(decision, labels=tuple((reviewer, SWAPPED[label]) for reviewer, label in decision.labels))
