"""Calibration (Platt scaling over a judgment's signals) and the certified threshold (fixed-sequence testing with
exact binomial bounds), on synthetic judges whose true agreement with people is known."""

from __future__ import annotations

import json
import random

import pytest

from rlaif.judges.calibration import (
    Calibrator,
    Example,
    calibration_report,
    cross_fitted,
    expected_calibration_error,
    raw_probability,
)
from rlaif.judges.certification import certify, level_at, lower_bound
from rlaif.schema import Candidate, Judgment, Pair, PromptItem


def judged(index: int, p_a: float, status: str = "ok") -> tuple[Pair, Judgment]:
    prompt = PromptItem(messages=[{"role": "user", "content": f"question {index}"}])
    pair = Pair(
        prompt=prompt,
        a=Candidate(prompt_id=prompt.id, text=f"answer one to {index}", model="m"),
        b=Candidate(prompt_id=prompt.id, text=f"answer two to {index}", model="m"),
        strategy="all",
    )
    if status != "ok":
        return pair, Judgment(pair_id=pair.id, winner=None, status=status, judge_model="j", template_hash="t")
    winner = "a" if p_a > 0.5 else "b" if p_a < 0.5 else "tie"
    judgment = Judgment(
        pair_id=pair.id,
        winner=winner,
        p_a=p_a,
        confidence=abs(2 * p_a - 1),
        status="ok",
        judge_model="j",
        template_hash="t",
    )
    return pair, judgment


def synthetic(count: int, accuracy, seed: int = 0) -> list[Example]:
    """`count` judgments with p(A) drawn in (0.5, 1]; people agree with probability accuracy(raw probability)."""
    draws = random.Random(seed)
    examples = []
    for index in range(count):
        pair, judgment = judged(index, 0.5 + 0.5 * draws.random() + 1e-6)
        agree = draws.random() < accuracy(raw_probability(judgment))
        examples.append(Example(pair, judgment, "a" if agree else "b", "audit"))
    return examples


def test_a_perfectly_calibrated_judge_stays_as_it_is():
    examples = synthetic(3000, lambda p: p)
    calibrator = Calibrator.fit(examples)
    assert calibrator.fitted
    probes = [judged(10_000 + i, min(1.0, 0.5 + i / 20 + 1e-6)) for i in range(11)]
    for (_, judgment), calibrated in zip(probes, calibrator.probabilities(probes), strict=True):
        assert calibrated == pytest.approx(raw_probability(judgment), abs=0.05)
    report = calibration_report(examples)
    assert report["ece_raw"] < 0.04 and report["ece_calibrated"] < 0.04


def test_an_overconfident_judge_is_corrected():
    examples = synthetic(2000, lambda p: 0.6)  # says 50-100% sure, is right 60% of the time whatever it says
    calibrator = Calibrator.fit(examples)
    pair, judgment = judged(99_999, 0.99)
    assert calibrator.probability(pair, judgment) == pytest.approx(0.6, abs=0.06)
    report = calibration_report(examples)
    assert report["ece_raw"] > 0.1
    assert report["ece_calibrated"] < 0.05 < report["ece_raw"] - 0.05


def test_failures_and_too_few_pairs():
    pair, failed = judged(1, 0.5, status="parse_error")
    few = synthetic(10, lambda p: p)
    calibrator = Calibrator.fit(few)
    assert not calibrator.fitted  # raw probability instead
    assert calibrator.probability(pair, failed) == 0.0
    assert calibrator.probability(*judged(2, 0.9)) == pytest.approx(0.9)
    assert cross_fitted(few) == [raw_probability(e.judgment) for e in few] or len(few) >= 10
    assert expected_calibration_error([], []) is None


def test_the_clopper_pearson_bound():
    assert lower_bound(10, 10, 0.1) == pytest.approx(0.1 ** (1 / 10))  # all agreed: risk ** (1 / n)
    assert lower_bound(0, 10, 0.1) == 0.0
    assert lower_bound(85, 100, 0.1) < 0.85 < lower_bound(95, 100, 0.1)


def bins_judge(count: int, seed: int) -> tuple[list[float], list[bool]]:
    """A judge whose accuracy is known per confidence bin: 0.97 at >= 0.9, 0.90 in [0.7, 0.9), 0.55 below."""
    draws = random.Random(seed)
    confidences, agreed = [], []
    for _ in range(count):
        confidence = draws.uniform(0.5, 1.0)
        accuracy = 0.97 if confidence >= 0.9 else 0.90 if confidence >= 0.7 else 0.55
        confidences.append(confidence)
        agreed.append(draws.random() < accuracy)
    return confidences, agreed


def test_the_threshold_is_the_lowest_that_keeps_the_target():
    confidences, agreed = bins_judge(4000, seed=1)
    certificate = certify(confidences, agreed, target=0.85, risk=0.1)
    # Above 0.7 agreement is about 0.93; every step below adds 0.55-accurate pairs, and the mixture falls to
    # 0.85 near 0.59: the certified threshold sits between, and the pairs above it meet the target.
    assert certificate.certified and 0.59 <= certificate.threshold <= 0.7
    fresh_confidences, fresh_agreed = bins_judge(20_000, seed=2)
    kept = [a for c, a in zip(fresh_confidences, fresh_agreed, strict=True) if c >= certificate.threshold]
    assert sum(kept) / len(kept) >= 0.85
    assert certificate.lower_bound >= 0.85
    assert not certify(confidences, agreed, target=0.99, risk=0.1).certified
    assert level_at(confidences, agreed, 0.7, 0.1, 0.85) >= 0.85  # what the walk passed down to 0.7
    assert 0.75 < level_at(confidences, agreed, 0.5, 0.1, 0.85) < 0.85  # every pair: about 0.80


def test_the_guarantee_holds_over_many_small_calibration_sets():
    """With 150 calibration pairs, the judge-kept pairs fall below the target in at most `risk` of the draws."""
    truth_confidences, truth_agreed = bins_judge(40_000, seed=3)
    misses = runs = 0
    for seed in range(200):
        confidences, agreed = bins_judge(150, seed=100 + seed)
        certificate = certify(confidences, agreed, target=0.85, risk=0.1)
        if not certificate.certified:
            continue
        runs += 1
        kept = [a for c, a in zip(truth_confidences, truth_agreed, strict=True) if c >= certificate.threshold]
        misses += sum(kept) / len(kept) < 0.85
    assert runs >= 100
    assert misses / runs <= 0.1


def test_a_calibrator_written_as_json_gives_the_same_probabilities():
    examples = synthetic(500, lambda p: 0.6 + 0.3 * (p - 0.5))
    calibrator = Calibrator.fit(examples)
    again = Calibrator.from_json(json.loads(json.dumps(calibrator.to_json())))
    probes = [judged(20_000 + i, 0.5 + i / 25) for i in range(13)] + [judged(30_000, 0.5, status="parse_error")]
    assert again.probabilities(probes) == pytest.approx(calibrator.probabilities(probes), abs=1e-12)
    unfitted = Calibrator.from_json(Calibrator.fit(examples[:5]).to_json())
    assert not unfitted.fitted and unfitted.probability(*probes[3]) == pytest.approx(raw_probability(probes[3][1]))
