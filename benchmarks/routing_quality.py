"""Which pairs should people label? Routing strategies and the certified agreement level, on real LLM judges.

Data: the PandaLM test set (999 items, 3 human annotators each; the human majority, ties included, is the
truth; an item repeating an earlier item's prompt and answers is the same pair to the pipeline: kept once)
and the published verdicts of GPT-3.5-turbo and PandaLM-7B on it (../shared/data/pandalm), written in the
imported-judgments format and read back by `judge.mode: imported`'s reader, so they enter exactly as a
user's imported judgments would. One order each (no swap) and no probabilities: real verdicts, replayed.

Judges: GPT-3.5 alone, and the ensemble of both (mean p(A), as `judge.ensemble` combines). For each judge and
strategy, at a budget of 10% of the pairs: agreement of the merged labels with the human majority (exact: a
human tie needs a tie), the review share, and the routing efficiency (merged - judge) / (oracle - judge),
where the oracle spends the same budget on exactly the judge's mistakes. Strategies:
- random: the budget drawn uniformly (mean of 50 seeded draws);
- least confident: the pipeline's fixed routing (failures, a 3% random audit, then the least confident);
- calibrated, own audit: a 3% random audit labelled first, the calibrator fitted on it, then the lowest
  calibrated probability (mean of 20 seeded audits);
- calibrated, earlier runs: each fifth of the items scored by a calibrator fitted on the other four fifths
  (standing for earlier runs' reviewed pairs of the same judge, `review.calibration_runs`), then failures and
  the lowest calibrated probability.
Certified (no fixed budget; the review share is the output): each fifth routed below the threshold certified
on the other four fifths (their random pairs), for targets 0.75, 0.80, 0.85 at risk 0.1.

Coverage: over 200 resampled splits into a calibration set (300 random items, labelled by people; half of the
items on smaller sets) and the rest, the share of splits where the judge-labelled part of the rest (at or
above the certified threshold) agrees with people at least the target; it must be at least 1 - risk. With
the review share it needed.

The same table for a third judge of another kind on other data: the MiniLM-L6 reward model (`rlaif train
reward` on hh-rlhf harmless, the last 300 pairs held out, as benchmarks/reward_model_cpu.py trains it, about
4 minutes on 2 cores; or `--reward-model DIR` for one trained already) judging those 300 held-out pairs.
The same code, unchanged, on both.

The second review round after the reward model (`review.reward_round_fraction`, as in RLTHF), on GPT-3.5's
PandaLM labels: after the first round (least confident, 10%), a MiniLM reward model trained on the merged labels
picks 5% more pairs for people, the ones it contradicts most; against 5% at random (see `reward_round`).

    .venv/bin/python benchmarks/routing_quality.py [--out benchmarks/results/routing_quality.json]
        [--reward-model DIR] [--round-reward-model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import provenance, write_results  # noqa: E402
from benchmarks.human_labels_value import preference_rows, train_reward_model  # noqa: E402
from rlaif.evaluation.judge_agreement import as_pair  # noqa: E402
from rlaif.judges.calibration import Calibrator, Example  # noqa: E402
from rlaif.judges.certification import certify_judge  # noqa: E402
from rlaif.judges.ensemble import EnsembleJudge  # noqa: E402
from rlaif.judges.imported import ImportedJudge  # noqa: E402
from rlaif.judges.reward_model import RewardModelJudge, RewardModelScorer  # noqa: E402
from rlaif.labelled_data import load_labelled  # noqa: E402
from rlaif.pipeline.route import choose_for_review  # noqa: E402
from rlaif.schema import Judgment, Pair  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATA = SHARED / "pandalm"
HH_RLHF = SHARED / "hh_rlhf" / "harmless_base_test_0000_1799.jsonl.gz"
HELD_OUT = 300
RLAIF = str(Path(sys.executable).parent / "rlaif")
BUDGET = 0.10
AUDIT = 0.03
RISK = 0.1
TARGETS = (0.75, 0.80, 0.85)
SPLITS = 200
CALIBRATION_SET = 300
GPT_VERDICTS = {"1": "a", "2": "b", "tie": "tie"}
PANDALM_VERDICTS = {"0": "tie", "1": "a", "2": "b"}


def imported_files(folder: Path) -> tuple[list[Pair], list[str], Path, Path]:
    """The test set as pipeline pairs with the human majority, and the two judges' verdicts as imported files."""
    items = load_labelled(DATA / "testset-v1.json", "pandalm")
    by_index = {record["idx"]: i for i, record in enumerate(json.loads((DATA / "testset-v1.json").read_text()))}
    pairs, labels, position, seen = [], [], {}, set()
    for item in items:
        pair = as_pair(item)
        # Items whose prompt and answers repeat an earlier item's are one pair to the pipeline: kept once.
        if pair is not None and pair.id not in seen:
            seen.add(pair.id)
            position[item.source_index] = pair
            pairs.append(pair)
            labels.append(item.label)
    files = []
    for name, source, field, verdicts in (
        ("gpt-3.5-turbo", "gpt-3.5-turbo-testset-v1.json", "gpt_result", GPT_VERDICTS),
        ("pandalm-7b", "pandalm-7b-testset-v1.json", "pandalm_result", PANDALM_VERDICTS),
    ):
        path = folder / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for record in json.loads((DATA / source).read_text()):
                pair = position.get(by_index[record["idx"]])
                if pair is None:
                    continue
                verdict = verdicts.get(str(record[field]).strip().lower())  # None: unparseable text
                line = {
                    "prompt": [m.model_dump() for m in pair.prompt.messages],
                    "answer_a": pair.a.text,
                    "answer_b": pair.b.text,
                    "judge": name,
                    "template": "pandalm-testset",
                    "verdicts": [verdict],
                }
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
        files.append(path)
    return pairs, labels, files[0], files[1]


def merged_agreement(labels: Sequence[str], judgments: Sequence[Judgment], routed: set[int]) -> float:
    right = sum(1 for i, j in enumerate(judgments) if i in routed or (j.status == "ok" and j.winner == labels[i]))
    return right / len(labels)


def row(labels: Sequence[str], judgments: Sequence[Judgment], routed_sets: Sequence[set[int]]) -> dict[str, Any]:
    """Agreement, review share and efficiency of a strategy (averaged over its draws)."""
    judge = merged_agreement(labels, judgments, set())
    mistakes = [i for i, j in enumerate(judgments) if not (j.status == "ok" and j.winner == labels[i])]
    size = round(statistics.mean(len(r) for r in routed_sets))
    oracle = merged_agreement(labels, judgments, set(mistakes[:size]))
    merged = statistics.mean(merged_agreement(labels, judgments, r) for r in routed_sets)
    return {
        "judge": round(judge, 4),
        "merged": round(merged, 4),
        "oracle": round(oracle, 4),
        "review_share": round(size / len(labels), 4),
        "efficiency": round((merged - judge) / (oracle - judge), 3) if oracle > judge else None,
    }


def lowest_first(scores: Sequence[float], judgments: Sequence[Judgment], budget: int, taken: set[int]) -> set[int]:
    """`taken`, then failures, then the lowest scores, up to `budget` items."""
    order = sorted(range(len(scores)), key=lambda i: (judgments[i].status == "ok", scores[i], i))
    routed = set(taken)
    for i in order:
        if len(routed) >= budget:
            break
        routed.add(i)
    return routed


def folds_of(count: int, seed: int = 0, folds: int = 5) -> list[list[int]]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return [order[f::folds] for f in range(folds)]


def strategies(pairs: list[Pair], labels: list[str], judgments: list[Judgment]) -> dict[str, Any]:
    n = len(pairs)
    budget = round(BUDGET * n)
    examples = [Example(p, j, h, "audit") for p, j, h in zip(pairs, judgments, labels, strict=True)]
    draws = random.Random(1)
    result = {"random": row(labels, judgments, [set(draws.sample(range(n), budget)) for _ in range(50)])}

    reasons = choose_for_review(judgments, n, BUDGET, AUDIT, seed=0)
    result["least_confident"] = row(labels, judgments, [{i for i, j in enumerate(judgments) if j.id in reasons}])

    own_audit = []
    for seed in range(20):
        audit = set(random.Random(100 + seed).sample(range(n), round(AUDIT * n)))
        calibrator = Calibrator.fit([examples[i] for i in sorted(audit)], seed=seed)
        scores = calibrator.probabilities(list(zip(pairs, judgments, strict=True)))
        own_audit.append(lowest_first(scores, judgments, budget, audit))
    result["calibrated_own_audit"] = row(labels, judgments, own_audit)

    scores = [0.0] * n
    for held_out in folds_of(n):
        rest = sorted(set(range(n)) - set(held_out))
        calibrator = Calibrator.fit([examples[i] for i in rest])
        for i, score in zip(
            held_out, calibrator.probabilities([(pairs[i], judgments[i]) for i in held_out]), strict=True
        ):
            scores[i] = score
    result["calibrated_earlier_runs"] = row(labels, judgments, [lowest_first(scores, judgments, budget, set())])

    for target in TARGETS:
        routed: set[int] = set()
        for held_out in folds_of(n):
            rest = sorted(set(range(n)) - set(held_out))
            certified = certify_judge([examples[i] for i in rest], target, RISK)
            threshold = certified.certificate.threshold
            held_scores = certified.calibrator.probabilities([(pairs[i], judgments[i]) for i in held_out])
            routed |= {i for i, s in zip(held_out, held_scores, strict=True) if threshold is None or s < threshold}
        kept = [i for i in range(n) if i not in routed]
        entry = row(labels, judgments, [routed])
        entry["judge_kept_agreement"] = (
            round(merged_agreement([labels[i] for i in kept], [judgments[i] for i in kept], set()), 4) if kept else None
        )
        result[f"certified_{target:.2f}"] = entry
    return result


def coverage(
    pairs: list[Pair], labels: list[str], judgments: list[Judgment], progress: Callable[[str], None]
) -> dict[str, Any]:
    n = len(pairs)
    calibration_size = min(CALIBRATION_SET, n // 2)
    examples = [Example(p, j, h, "audit") for p, j, h in zip(pairs, judgments, labels, strict=True)]
    result = {}
    for target in TARGETS:
        met = certified_splits = 0
        shares, achieved = [], []
        for split in range(SPLITS):
            calibration = set(random.Random(10_000 + split).sample(range(n), calibration_size))
            rest = [i for i in range(n) if i not in calibration]
            certified = certify_judge([examples[i] for i in sorted(calibration)], target, RISK, seed=split)
            threshold = certified.certificate.threshold
            if threshold is None:
                shares.append(1.0)
                met += 1  # nothing is left to the judge: people label all of it
                continue
            certified_splits += 1
            scores = certified.calibrator.probabilities([(pairs[i], judgments[i]) for i in rest])
            kept = [i for i, s in zip(rest, scores, strict=True) if s >= threshold]
            agreement = (
                sum(1 for i in kept if judgments[i].status == "ok" and judgments[i].winner == labels[i]) / len(kept)
                if kept
                else 1.0
            )
            achieved.append(agreement)
            met += agreement >= target
            shares.append(1 - len(kept) / len(rest))
        result[f"{target:.2f}"] = {
            "splits": SPLITS,
            "calibration_set": calibration_size,
            "coverage": met / SPLITS,
            "misses": SPLITS - met,
            "certified_splits": certified_splits,
            "review_share_mean": round(statistics.mean(shares), 4),
            "achieved_agreement_mean": round(statistics.mean(achieved), 4) if achieved else None,
            "achieved_agreement_min": round(min(achieved), 4) if achieved else None,
        }
        progress(f"coverage at target {target}: {result[f'{target:.2f}']}")
    return result


def reward_round(
    pairs: list[Pair], labels: list[str], judgments: list[Judgment], scratch: Path, model_dir: str | None = None
) -> dict[str, Any]:
    """The second round (`review.reward_round_fraction`) after the first (least confident, 10%): the MiniLM reward
    model trained on the merged labels (people's on the routed pairs, the judge's a/b labels elsewhere) scores
    the judge-labelled pairs, and people get the ones it contradicts most (most negative margin), 5% of all
    pairs; against 5% drawn at random among the same judge-labelled pairs (mean of 50 draws) and the oracle
    that spends them on the judge's remaining mistakes. Efficiency = (after - before) / (oracle - before)."""
    n = len(pairs)
    reasons = choose_for_review(judgments, n, BUDGET, AUDIT, seed=0)
    first = {i for i, j in enumerate(judgments) if j.id in reasons}
    merged = [labels[i] if i in first else (j.winner if j.status == "ok" else None) for i, j in enumerate(judgments)]
    usable = [i for i in range(n) if merged[i] in ("a", "b")]
    rows = preference_rows(pairs, merged)
    if model_dir is None:
        print(f"training the MiniLM reward model on {len(rows)} merged labels (a few minutes on 2 cores) ...")
        model_dir = str(train_reward_model(rows, scratch / "reward-on-merged", held_out=8))
    judge_only = [i for i in usable if i not in first]
    scores = RewardModelScorer(model_dir).score(
        [pairs[i].prompt for i in judge_only for _ in (0, 1)],
        [side.text for i in judge_only for side in (pairs[i].a, pairs[i].b)],
    )
    margins = {  # r(the merged label's answer) - r(the other)
        i: (scores[2 * k] - scores[2 * k + 1]) * (1 if merged[i] == "a" else -1) for k, i in enumerate(judge_only)
    }
    contradicted = sorted((m, i) for i, m in margins.items() if m < 0)
    second = round(0.05 * n)
    routed_by_model = first | {i for _, i in contradicted[:second]}
    draws = random.Random(2)
    random_rounds = [first | set(draws.sample(judge_only, second)) for _ in range(50)]
    before = merged_agreement(labels, judgments, first)
    mistakes = [i for i in judge_only if judgments[i].winner != labels[i]]
    oracle = merged_agreement(labels, judgments, first | set(mistakes[:second]))

    def entry(routed_sets: list[set[int]]) -> dict[str, Any]:
        after = statistics.mean(merged_agreement(labels, judgments, r) for r in routed_sets)
        overturned = statistics.mean(
            sum(1 for i in r - first if judgments[i].winner != labels[i]) / max(1, len(r - first)) for r in routed_sets
        )
        return {
            "merged": round(after, 4),
            "overturned_share": round(overturned, 4),
            "efficiency": round((after - before) / (oracle - before), 3) if oracle > before else None,
        }

    return {
        "first_round": "least_confident",
        "first_round_share": BUDGET,
        "second_round_share": round(second / n, 4),
        "reward_model_trained_on": len(rows),
        "judge_labelled": len(judge_only),
        "contradicted": len(contradicted),
        "merged_after_first": round(before, 4),
        "oracle": round(oracle, 4),
        "random": entry(random_rounds),
        "reward_model_contradicts": entry([routed_by_model]),
    }


async def reward_model_judgments(model_dir: str | None, scratch: Path) -> tuple[list[Pair], list[str], list[Judgment]]:
    """The held-out hh-rlhf pairs, their human labels and the MiniLM reward model's judgments of them (trained
    here on the rest when no model is given)."""
    if model_dir is None:
        model_dir = str(scratch / "reward-minilm")
        print("training the MiniLM reward model on hh-rlhf (about 4 minutes on 2 cores) ...")
        subprocess.run(
            [RLAIF, "train", "reward", "--data", str(HH_RLHF), "--format", "hh-rlhf", "--out", model_dir]
            + ["--set", f"train.eval_size={HELD_OUT}", "--set", "train.reward.max_length=128"],
            capture_output=True,
            text=True,
            check=True,
        )
    items = load_labelled(HH_RLHF, "hh-rlhf", seed=0)[-HELD_OUT:]  # the split `rlaif train` held out
    usable = [(item, pair) for item in items if (pair := as_pair(item)) is not None]
    judge = RewardModelJudge(RewardModelScorer(model_dir), name="minilm-rm")
    judgments = await judge.judge([pair for _, pair in usable])
    return [pair for _, pair in usable], [item.label for item, _ in usable], judgments


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/routing_quality.json")
    parser.add_argument("--reward-model", help="a MiniLM reward model trained already (default: train one)")
    parser.add_argument(
        "--round-reward-model", help="the reward round's model, trained on the merged labels (default: train it)"
    )
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is missing: the shared data folder must sit beside the project")
    with tempfile.TemporaryDirectory(prefix="routing-quality-") as folder:
        pairs, labels, gpt_file, pandalm_file = imported_files(Path(folder))
        gpt, pandalm = ImportedJudge(gpt_file), ImportedJudge(pandalm_file)
        judges = {"gpt-3.5-turbo": gpt, "ensemble gpt-3.5-turbo + pandalm-7b": EnsembleJudge([gpt, pandalm])}
        document: dict[str, Any] = {
            **provenance({"scikit-learn": metadata.version("scikit-learn"), "scipy": metadata.version("scipy")}),
            "data": "PandaLM test set v1 (999 items, human majority of 3 annotators, ties included); GPT-3.5-turbo "
            "and PandaLM-7B verdicts from the PandaLM repository, imported",
            "items": len(pairs),
            "human_ties": labels.count("tie"),
            "budget": BUDGET,
            "audit_fraction": AUDIT,
            "risk": RISK,
            "calibration_set_for_coverage": CALIBRATION_SET,
            "judges": {},
        }
        for name, judge in judges.items():
            judgments = await judge.judge(pairs)
            print(f"{name}: {sum(j.status != 'ok' for j in judgments)} failed judgments of {len(judgments)}")
            document["judges"][name] = {
                "strategies": strategies(pairs, labels, judgments),
                "coverage": coverage(pairs, labels, judgments, print),
            }
            for strategy, figures in document["judges"][name]["strategies"].items():
                print(f"  {strategy:28} {figures}")
            if judge is gpt:
                document["judges"][name]["reward_round"] = reward_round(
                    pairs, labels, judgments, Path(folder), args.round_reward_model
                )
                print(f"  reward round: {document['judges'][name]['reward_round']}")
        pairs, labels, judgments = await reward_model_judgments(args.reward_model, Path(folder))
        name = "minilm-rm (hh-rlhf, 300 held-out pairs)"
        document["judges"][name] = {
            "items": len(pairs),
            "human_ties": labels.count("tie"),
            "strategies": strategies(pairs, labels, judgments),
            "coverage": coverage(pairs, labels, judgments, print),
        }
        for strategy, figures in document["judges"][name]["strategies"].items():
            print(f"  {strategy:28} {figures}")
    write_results(args.out, document)


if __name__ == "__main__":
    asyncio.run(main())
