"""A certified agreement level: the confidence threshold above which the judge's labels can be kept.

Fixed-sequence testing with exact binomial bounds, as in Trust or Escalate (Jung et al., 2024): walk a
fixed grid of thresholds from the strictest down; at each, the calibration pairs whose (calibrated)
confidence is at least the threshold give k agreements of n, and the one-sided Clopper-Pearson lower
bound of their agreement at level 1 - risk. The walk stops at the first threshold whose bound is below
the target; the last one that passed is certified. Because the grid is fixed and each step is only
tested when every stricter one passed, the chance that the judge-labelled pairs above the certified
threshold agree with people less than `target` is at most `risk` (for pairs drawn like the calibration
set).

Steps with few calibration pairs above them are passed over, not tested: at the strict end of the grid a
handful of pairs cannot pass (even 10 agreements of 10 bound the agreement only at 0.79 for risk 0.1), and
one failed step ends the walk. A step is tested when it has at least `min_pairs` pairs: the most of the
pairs needed for unanimous agreement to pass, and a quarter of the calibration set. Which steps are tested
depends only on the confidences, never on whether people agreed, so the guarantee holds given them.

`level_at` answers the other question, for a budget that cannot reach the target: at a given threshold,
the highest target the same test would have certified (the least lower bound along the walk).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rlaif.judges.calibration import Calibrator, Example, cross_fitted

GRID = tuple(round(1.0 - step / 100, 2) for step in range(101))  # 1.00, 0.99, ..., 0.00


@dataclass(frozen=True)
class Certificate:
    """The outcome of the test: the threshold (None when none passed) and the evidence at it."""

    target: float
    risk: float
    threshold: float | None
    n: int  # calibration pairs at or above the threshold
    agreed: int
    lower_bound: float | None  # the least Clopper-Pearson lower bound along the walk down to the threshold

    @property
    def certified(self) -> bool:
        return self.threshold is not None


def lower_bound(agreed: int, n: int, risk: float) -> float:
    """One-sided (1 - risk) Clopper-Pearson lower bound of a binomial proportion."""
    if agreed <= 0:
        return 0.0
    from scipy.stats import beta  # imported here: a second to import, and most commands certify nothing

    return float(beta.ppf(risk, agreed, n - agreed + 1))


def min_pairs(target: float, calibration_pairs: int, risk: float) -> int:
    """Calibration pairs a step needs above it to be tested (see the module docstring)."""
    unanimous = math.ceil(math.log(risk) / math.log(target)) if 0.0 < target < 1.0 else 1
    return max(unanimous, math.ceil(0.25 * calibration_pairs), 1)


def _walk(
    confidences: Sequence[float], agreed: Sequence[bool], risk: float, least_pairs: int
) -> list[tuple[float, int, int, float]]:
    """(threshold, n, agreed, least lower bound so far) for every grid step tested."""
    steps = []
    least = 1.0
    for threshold in GRID:
        above = [a for c, a in zip(confidences, agreed, strict=True) if c >= threshold]
        if len(above) < least_pairs:
            continue
        least = min(least, lower_bound(sum(above), len(above), risk))
        steps.append((threshold, len(above), sum(above), least))
    return steps


def certify(confidences: Sequence[float], agreed: Sequence[bool], target: float, risk: float) -> Certificate:
    """The lowest grid threshold at which the judge's labels agree with people at least `target`, with
    probability at least 1 - `risk`; `confidences` and `agreed` are the calibration pairs'."""
    if not 0.0 < risk < 1.0:
        raise ValueError(f"risk must be between 0 and 1, got {risk}")
    passed = None
    for step in _walk(confidences, agreed, risk, min_pairs(target, len(confidences), risk)):
        if step[3] < target:
            break
        passed = step
    if passed is None:
        return Certificate(target, risk, None, 0, 0, None)
    threshold, n, k, least = passed
    return Certificate(target, risk, threshold, n, k, least)


def level_at(
    confidences: Sequence[float], agreed: Sequence[bool], threshold: float, risk: float, target: float
) -> float:
    """The highest agreement level the walk certifies at `threshold` (0 when no step is tested down to it);
    `target` only sets which steps have enough pairs to be tested, as in `certify`."""
    least_pairs = min_pairs(target, len(confidences), risk)
    steps = [step for step in _walk(confidences, agreed, risk, least_pairs) if step[0] >= threshold]
    return steps[-1][3] if steps else 0.0


@dataclass(frozen=True)
class CertifiedJudge:
    """A judge calibrated and certified on reviewed pairs: what routing the rest needs, and the evidence."""

    calibrator: Calibrator
    certificate: Certificate
    scores: list[float]  # every reviewed pair's calibrated probability, cross-fitted
    audit_scores: list[float]  # those of the random audit pairs
    audit_agreed: list[bool]

    def level_at(self, threshold: float) -> float:
        return level_at(self.audit_scores, self.audit_agreed, threshold, self.certificate.risk, self.certificate.target)


def certify_judge(
    examples: Sequence[Example],
    target: float,
    risk: float,
    seed: int = 0,
    certify_on: Sequence[bool] | None = None,
) -> CertifiedJudge:
    """Fit the calibrator on every reviewed pair; certify on the random audit pairs among them (reason "audit"),
    each scored by a calibrator fitted without it (the others were routed for being unsure: not drawn like the
    pairs the judge keeps). `certify_on`: which examples to certify on instead (an escalation tier's: the audit
    pairs the tiers before it passed on, drawn like the pairs it gets)."""
    calibrator = Calibrator.fit(examples, seed=seed)
    scores = cross_fitted(examples, seed=seed)  # the raw probability where too few pairs allow no fit
    chosen = certify_on if certify_on is not None else [example.reason == "audit" for example in examples]
    audit = [i for i, on in enumerate(chosen) if on]
    audit_scores = [scores[i] for i in audit]
    audit_agreed = [examples[i].agreed for i in audit]
    certificate = certify(audit_scores, audit_agreed, target, risk)
    return CertifiedJudge(calibrator, certificate, scores, audit_scores, audit_agreed)
