"""Training data: any supported source as TRL's conversational prompt/chosen/rejected, split for evaluation.

Sources: a merged run (RUN_DIR or RUN_DIR/dataset: pairs with label a or b; ties and both-bad rows,
kept for analysis, are not preferences and are dropped), or a human-labelled file in the formats of
`rlaif.labelled_data` (hh-rlhf dialogues split at their shared prefix, PandaLM, LLMBar; ties dropped).
Every row gets `confidence` (for merged rows the judge's, calibrated where the run was, and 1.0 for
people's labels, 0.5 where they said "slightly better"; 1.0 for human-labelled files) so a reward model
can use it as a margin. A merged
dataset's folder is only read: the files `datasets` derives from it (the usable rows here, the trainers'
tokenization and reference log-probs later) go to a cache folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from rlaif.labelled_data import LabelledDataError, load_labelled

DataFormat = Literal["merged", "hh-rlhf", "pandalm", "llmbar"]


def label_confidence(row: dict[str, Any]) -> float:
    """How sure a merged row's label is, in [0, 1] (a reward model's margin scales with it): 1 for people's
    labels, 0.5 where they found the chosen answer only slightly better (review.strength); for the judge's,
    the calibrated probability that people keep it (as 2 q - 1, at least 0) where the run was calibrated, else
    the judge's own confidence."""
    if row.get("label_source") == "human":
        return 0.5 if row.get("human_strength") == "slightly" else 1.0
    calibrated = row.get("calibrated_agreement")
    if calibrated is not None:
        return max(0.0, 2.0 * calibrated - 1.0)
    return 1.0 if row["confidence"] is None else row["confidence"]


def load_preferences(
    path: str | Path,
    data_format: DataFormat,
    seed: int = 0,
    work_dir: Path | None = None,
    keep_both_bad: bool = False,
) -> Any:
    """A `datasets.Dataset` with prompt, chosen, rejected (message lists) and confidence, in source order;
    with `keep_both_bad` (KTO, which learns from bad answers too), a merged run's both-bad rows as well, marked
    in a `both_bad` column.

    A merged dataset's usable rows are written to a folder in `work_dir` named after the dataset's
    fingerprint (new with every merge), and `datasets` puts every later map's file beside them, instead
    of into the merged folder; the folders of earlier merges are removed. Without `work_dir` the rows are
    loaded into memory.
    """
    import datasets

    source = Path(path)
    if data_format == "merged":
        folder = source / "dataset" if (source / "dataset" / "dataset_info.json").is_file() else source
        if not (folder / "dataset_info.json").is_file():
            raise LabelledDataError(
                f"{source}: not a merged dataset (no dataset_info.json there or in its dataset/): run `rlaif merge`"
            )
        merged = datasets.load_from_disk(str(folder), keep_in_memory=work_dir is None)
        missing = {"prompt", "chosen", "rejected"} - set(merged.column_names)
        if missing:
            raise LabelledDataError(f"{folder}: a merged dataset needs the columns {sorted(missing)}")
        if "confidence" not in merged.column_names:
            merged = merged.add_column("confidence", [1.0] * len(merged))
        cache_file = None
        if work_dir is not None:
            cache_file = str(merged_data_cache(work_dir, merged._fingerprint) / "preferences.arrow")
        merged = merged.map(lambda row: {"confidence": label_confidence(row)}, cache_file_name=cache_file)
        usable = ("a", "b", "both_bad") if keep_both_bad else ("a", "b")
        if "label" in merged.column_names:
            merged = merged.filter(lambda row: row["label"] in usable)
        if keep_both_bad:
            labels = merged["label"] if "label" in merged.column_names else ["a"] * len(merged)
            merged = merged.add_column("both_bad", [label == "both_bad" for label in labels])
            return merged.select_columns(["prompt", "chosen", "rejected", "confidence", "both_bad"])
        return merged.select_columns(["prompt", "chosen", "rejected", "confidence"])
    rows = []
    for item in load_labelled(source, data_format, seed=seed):
        if item.label == "tie":
            continue
        chosen, rejected = (item.first, item.second) if item.label == "a" else (item.second, item.first)
        rows.append(
            {
                "prompt": item.prompt.chat(),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "confidence": 1.0,
            }
        )
    if not rows:
        raise LabelledDataError(f"{source}: no usable preference pairs")
    return datasets.Dataset.from_list(rows)


def merged_data_cache(work_dir: Path, fingerprint: str) -> Path:
    """work_dir/<fingerprint>, made when missing; the other merges' folders there are removed (a run's
    merged dataset is replaced by each merge, so their files would never be read again)."""
    folder = work_dir / fingerprint
    if work_dir.is_dir():
        for other in work_dir.iterdir():
            if other.is_dir() and other != folder:
                shutil.rmtree(other, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def held_out_split(dataset: Any, eval_size: int | None, eval_fraction: float) -> tuple[Any, Any | None]:
    """(train, eval): the last `eval_size` rows (or the last `eval_fraction` of them) are held out."""
    size = eval_size if eval_size is not None else round(eval_fraction * len(dataset))
    if size <= 0:
        return dataset, None
    if size >= len(dataset):
        raise LabelledDataError(f"cannot hold out {size} of {len(dataset)} pairs: nothing would be left to train on")
    cut = len(dataset) - size
    return dataset.select(range(cut)), dataset.select(range(cut, len(dataset)))
