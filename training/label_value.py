"""What the human labels bought, in this run: the reward-model recipe trained on the merged labels and on the
judge's labels alone, both scored on held-out human labels.

Held out of both: the audit pairs people labelled a or b (drawn at random, so a fair test of the judge's
world). The rest of the merged rows train two reward models with the run's `train.reward` settings and seed:
- merged: the rows as merged (people's labels where they gave one);
- judge only: each row people labelled carries the judge's label instead (`judge_label`: chosen and
  rejected swapped where they differ; left out where the judge failed or said tie). Pairs people called a
  tie or both bad are not in the merged dataset (unless merge.keep_ties / keep_both_bad), so neither set
  has them.
Each model's accuracy on the held-out pairs (the human-chosen answer scores higher), and the difference,
merged minus judge only, with a 95% percentile bootstrap interval over the held-out pairs (paired: both
models score the same pairs; scipy.stats.bootstrap, seeded). When people changed no training label the two
sets are the same: nothing is trained and the difference is 0 by construction. The models are scratch
(trained in a temporary folder under <train.out or RUN_DIR/train>, removed after scoring); the figures go
to <train.out or RUN_DIR/train>/label_value.json (with a one-sentence `summary`), keyed by the merge and the
settings, so a rerun on the same merge reuses them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlaif.config import Config
from rlaif.models import resolve_model
from rlaif.run_files import read_json, write_json_atomic
from rlaif.schema import content_id
from rlaif.training.data import label_confidence
from rlaif.training.reward import PairCollator, pair_margins, tokenize_reward_pairs, train_reward_model
from rlaif.training.stages import training_folder

RESAMPLES = 2000


def label_value_path(config: Config) -> Path:
    return training_folder(config) / "label_value.json"


def split_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(merged training rows, judge-only training rows, held-out human-labelled audit rows) of merged rows."""
    preference = [row for row in rows if row["label"] in ("a", "b")]
    held_out = [row for row in preference if row["label_source"] == "human" and row["review_reason"] == "audit"]
    merged = [row for row in preference if not (row["label_source"] == "human" and row["review_reason"] == "audit")]
    judge_only = []
    for row in merged:
        if row["label_source"] != "human":
            judge_only.append(row)
        elif row["judge_label"] == row["label"]:
            judge_only.append({**row, "label_source": "judge"})
        elif row["judge_label"] in ("a", "b"):  # people overturned the judge: the judge's label puts them back
            swapped = {"chosen": row["rejected"], "rejected": row["chosen"], "label": row["judge_label"]}
            judge_only.append({**row, **swapped, "label_source": "judge"})
    return merged, judge_only, held_out


def difference_interval(differences: list[float], seed: int) -> list[float]:
    """95% percentile bootstrap interval of the mean of paired differences."""
    import numpy as np
    from scipy.stats import bootstrap

    if len(set(differences)) <= 1:  # no spread to resample: the interval is the value
        value = differences[0] if differences else 0.0
        return [value, value]
    result = bootstrap(
        (np.asarray(differences),),
        np.mean,
        confidence_level=0.95,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def held_out_correct(model_dir: Path, held_out: Any, max_length: int) -> list[bool]:
    """Whether the reward model in `model_dir` scores each held-out pair's chosen answer higher."""
    from transformers import AutoModelForSequenceClassification

    from rlaif.training.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    tokens = tokenize_reward_pairs(held_out, tokenizer, max_length, 0.0)
    return [margin > 0 for margin in pair_margins(model, tokens, PairCollator(tokenizer.pad_token_id))]


def measure_label_value(config: Config, say: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Train and score both reward models (see the module docstring); None when the run's merged dataset has no
    human-labelled audit pair to test on or no row people labelled (nothing to compare)."""
    import datasets

    folder = config.run.directory() / "dataset"
    if not (folder / "dataset_info.json").is_file():
        return None
    dataset = datasets.load_from_disk(str(folder))
    if not {"label", "label_source", "review_reason", "judge_label"} <= set(dataset.column_names):
        return None  # merged before the judge's label was kept: merge again to measure
    merged, judge_only, held_out = split_rows(list(dataset))
    changed = sum(1 for row in merged if row["label_source"] == "human" and row["judge_label"] != row["label"])
    if not held_out or not any(row["label_source"] == "human" for row in merged) or len(judge_only) < 2:
        return None
    settings = config.train.reward
    model_path = str(resolve_model(settings.model, say=say))
    key = content_id("label-value", dataset._fingerprint, settings.model_dump(mode="json"), config.run.seed, model_path)
    earlier = read_json(label_value_path(config))
    if earlier is not None and earlier.get("key") == key:
        return earlier
    figures: dict[str, Any] = {
        "key": key,
        "held_out_pairs": len(held_out),
        "training_pairs": {"merged": len(merged), "judge_only": len(judge_only)},
        "human_labels_in_training": sum(1 for row in merged if row["label_source"] == "human"),
        "labels_people_changed": changed,
        "reward_model": settings.model,
    }
    if changed == 0:
        say("label value: people changed no training label; the judge-only set is the merged one")
        figures.update(accuracy={"merged": None, "judge_only": None}, difference=0.0, ci95=[0.0, 0.0])
    else:
        say(f"label value: training the reward model on merged and on judge-only labels ({len(held_out)} held out)")
        test = datasets.Dataset.from_list(held_out).select_columns(["prompt", "chosen", "rejected"])
        correct = {}
        training_folder(config).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".label-value-", dir=training_folder(config)) as scratch:
            for name, rows in (("merged", merged), ("judge_only", judge_only)):
                weighted = [{**row, "confidence": label_confidence(row)} for row in rows]  # as `rlaif train` weighs
                train = datasets.Dataset.from_list(weighted).select_columns(
                    ["prompt", "chosen", "rejected", "confidence"]
                )
                out = Path(scratch) / name
                train_reward_model(train, None, settings, model_path, out, config.run.seed)
                correct[name] = held_out_correct(out, test, settings.max_length)
                shutil.rmtree(out, ignore_errors=True)
        differences = [float(m) - float(j) for m, j in zip(correct["merged"], correct["judge_only"], strict=True)]
        figures.update(
            accuracy={name: sum(values) / len(values) for name, values in correct.items()},
            difference=sum(differences) / len(differences),
            ci95=difference_interval(differences, config.run.seed),
        )
    figures["summary"] = label_value_summary(figures)
    write_json_atomic(label_value_path(config), figures)
    return figures


def label_value_summary(figures: dict[str, Any], few: int = 10) -> str:
    """One sentence for the demo's summary and the report page (label_value.json's `summary`); no rate below
    `few` held-out pairs."""
    n = figures["held_out_pairs"]
    if figures["labels_people_changed"] == 0:
        return (
            f"people changed none of the judge's labels on the {figures['human_labels_in_training']} training pairs "
            "they labelled: the human labels bought nothing measurable in this run"
        )
    accuracy = figures["accuracy"]
    if n < few:
        return (
            f"people changed {figures['labels_people_changed']} training labels; {n} held-out audit pairs are too few "
            "to say what that bought"
        )
    low, high = figures["ci95"]
    return (
        f"reward-model accuracy on {n} audit pairs people labelled: merged labels {100 * accuracy['merged']:.1f}%, "
        f"judge-only {100 * accuracy['judge_only']:.1f}%; difference {100 * figures['difference']:+.1f} points "
        f"(95% interval {100 * low:+.1f} to {100 * high:+.1f}), from {figures['labels_people_changed']} labels "
        "people changed"
    )
