"""Calibrated confidence: the probability that people agree with the judge's label, learnt from reviewed pairs.

The judge's raw confidence |2 p(A) - 1| ranks pairs but is not a probability: a judge that is sure and
wrong a third of the time reports 1.0. The calibrator is Platt scaling (scikit-learn's logistic
regression) from a judgment's signals to "people gave the judge's label", fitted on reviewed pairs of the
same judge identity (judge model and template hash). The signals are what every judgment carries, so the
same code serves any judge: the raw probability of its label, whether it failed or said tie, whether its
two orders or its ensemble members disagreed, and whether it preferred the longer answer and by how much
(judges prefer longer answers; people less so).

Agreement is exact: a human tie needs a judge tie, and "both bad" is a disagreement (the judge's label
would have kept a pair people threw out). With too few reviewed pairs (or only one outcome among them) the
calibrator is not fitted and the raw probability is used, said so in `fitted`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rlaif.schema import Judgment, Pair

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

# scikit-learn is imported where a calibrator is fitted or read, not here: it takes a second or two to
# import, and every command reaches this module (through the merge) while few of them fit anything.

MIN_EXAMPLES = 20  # reviewed pairs below which no fit is tried (and each outcome needs at least 5)
MIN_PER_OUTCOME = 5
SIGNALS = (
    "raw_logit",  # log-odds of the raw probability: a judge that is already calibrated is fitted exactly
    "failed",
    "tie",
    "order_disagreement",
    "judge_disagreement",
    "chose_longer",
    "length_ratio",
)


@dataclass(frozen=True)
class Example:
    """A judged pair with what people said about it: the unit the calibrator learns from."""

    pair: Pair
    judgment: Judgment
    human: str  # a | b | tie | both_bad
    reason: str | None = None  # why people were asked (audit: drawn at random)

    @property
    def agreed(self) -> bool:
        return self.judgment.status == "ok" and self.judgment.winner == self.human


def raw_probability(judgment: Judgment) -> float:
    """The judge's own probability that its label is right: max(p(A), 1 - p(A)); 0 for a failure."""
    if judgment.status != "ok" or judgment.p_a is None:
        return 0.0
    return max(judgment.p_a, 1.0 - judgment.p_a)


def signals(pair: Pair, judgment: Judgment) -> list[float]:
    """The features of one judgment, in the order of SIGNALS."""
    length_a, length_b = len(pair.a.text), len(pair.b.text)
    longer = "a" if length_a > length_b else "b" if length_b > length_a else "tie"
    ok = judgment.status == "ok"
    return [
        _logit(raw_probability(judgment)),
        0.0 if ok else 1.0,
        1.0 if ok and judgment.winner == "tie" else 0.0,
        1.0 if judgment.order_disagreement else 0.0,
        1.0 if judgment.judge_disagreement else 0.0,
        1.0 if ok and judgment.winner == longer and longer != "tie" else 0.0,
        abs(math.log((length_a + 1) / (length_b + 1))),
    ]


def _logit(probability: float, bound: float = 1e-3) -> float:
    clipped = min(1.0 - bound, max(bound, probability))
    return math.log(clipped / (1.0 - clipped))


class Calibrator:
    """Maps a judgment to the probability that people agree with its label (Platt scaling over SIGNALS)."""

    def __init__(self, model: LogisticRegression | None, examples: int) -> None:
        self._model = model
        self.examples = examples

    @property
    def fitted(self) -> bool:
        return self._model is not None

    @classmethod
    def fit(cls, examples: Sequence[Example], seed: int = 0) -> Calibrator:
        """Fit on reviewed pairs; unfitted (raw probability) when they are too few or all of one outcome."""
        outcomes = [example.agreed for example in examples]
        if len(examples) < MIN_EXAMPLES or min(outcomes.count(True), outcomes.count(False)) < MIN_PER_OUTCOME:
            return cls(None, len(examples))
        from sklearn.linear_model import LogisticRegression

        features = np.array([signals(e.pair, e.judgment) for e in examples])
        model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(features, outcomes)
        return cls(model, len(examples))

    def to_json(self) -> dict[str, Any]:
        """The fitted map as JSON (its coefficients per signal), to apply it later without refitting."""
        if self._model is None:
            return {"fitted": False, "examples": self.examples}
        agree = list(self._model.classes_).index(True)
        sign = 1.0 if agree == 1 else -1.0  # the coefficients are for classes_[1]
        return {
            "fitted": True,
            "examples": self.examples,
            "signals": list(SIGNALS),
            "coefficients": [sign * float(c) for c in self._model.coef_[0]],
            "intercept": sign * float(self._model.intercept_[0]),
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Calibrator:
        """A calibrator written by `to_json`."""
        if not document.get("fitted"):
            return cls(None, int(document.get("examples", 0)))
        if document["signals"] != list(SIGNALS):
            raise ValueError(f"a calibrator of other signals ({document['signals']}): fit it again")
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression()
        model.classes_ = np.array([False, True])
        model.coef_ = np.array([document["coefficients"]])
        model.intercept_ = np.array([document["intercept"]])
        model.n_features_in_ = len(SIGNALS)
        return cls(model, int(document["examples"]))

    def probability(self, pair: Pair, judgment: Judgment) -> float:
        """Calibrated probability that people agree with the judge's label on this pair."""
        return self.probabilities([(pair, judgment)])[0]

    def probabilities(self, judged: Sequence[tuple[Pair, Judgment]]) -> list[float]:
        if not judged:
            return []
        if self._model is None:
            return [raw_probability(judgment) for _, judgment in judged]
        features = np.array([signals(pair, judgment) for pair, judgment in judged])
        agree_column = list(self._model.classes_).index(True)
        return [float(p) for p in self._model.predict_proba(features)[:, agree_column]]


def cross_fitted(examples: Sequence[Example], folds: int = 5, seed: int = 0) -> list[float]:
    """Each example's calibrated probability from a calibrator fitted without it (k-fold), so that what is
    measured or certified on the calibration set is not measured on the pairs the fit has seen."""
    outcomes = [example.agreed for example in examples]
    folds = min(folds, outcomes.count(True), outcomes.count(False))
    if folds < 2:
        return [raw_probability(e.judgment) for e in examples]
    from sklearn.model_selection import StratifiedKFold

    result = [0.0] * len(examples)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held_out in splitter.split(np.zeros(len(examples)), outcomes):
        calibrator = Calibrator.fit([examples[i] for i in train], seed)
        scored = calibrator.probabilities([(examples[i].pair, examples[i].judgment) for i in held_out])
        for i, probability in zip(held_out, scored, strict=True):
            result[i] = probability
    return result


def reliability_bins(
    probabilities: Sequence[float], outcomes: Sequence[bool], bins: int = 10, low: float = 0.0
) -> list[dict[str, float | int]]:
    """The reliability diagram's points: for each non-empty of `bins` equal-width bins of [low, 1], its bounds,
    how many pairs fall in it, their mean probability and the share of them that came true."""
    points = []
    for b in range(bins):
        start, end = low + (1 - low) * b / bins, low + (1 - low) * (b + 1) / bins
        members = [
            (p, o)
            for p, o in zip(probabilities, outcomes, strict=True)
            if start <= p < end or (b == bins - 1 and p == end)
        ]
        if members:
            points.append(
                {
                    "low": start,
                    "high": end,
                    "pairs": len(members),
                    "mean_probability": sum(p for p, _ in members) / len(members),
                    "agreement": sum(1 for _, o in members if o) / len(members),
                }
            )
    return points


def expected_calibration_error(
    probabilities: Sequence[float], outcomes: Sequence[bool], bins: int = 10, low: float = 0.0
) -> float | None:
    """ECE over `bins` equal-width bins of [low, 1]: the mean |accuracy - confidence|, weighted by bin size."""
    if not probabilities:
        return None
    points = reliability_bins(probabilities, outcomes, bins, low)
    return sum(b["pairs"] / len(probabilities) * abs(b["agreement"] - b["mean_probability"]) for b in points)


def calibration_report(
    examples: Sequence[Example], seed: int = 0, calibrated: Sequence[float] | None = None
) -> dict[str, float | int | None]:
    """ECE of the raw and of the calibrated probability on the reviewed pairs, the calibrated one cross-fitted
    (`calibrated`: the examples' cross-fitted probabilities when the caller has them already)."""
    outcomes = [e.agreed for e in examples]
    raw = [raw_probability(e.judgment) for e in examples]
    scores = cross_fitted(examples, seed=seed) if calibrated is None else calibrated
    return {
        "examples": len(examples),
        "agreement": sum(outcomes) / len(outcomes) if outcomes else None,
        "ece_raw": expected_calibration_error(raw, outcomes),
        "ece_calibrated": expected_calibration_error(scores, outcomes),
    }
