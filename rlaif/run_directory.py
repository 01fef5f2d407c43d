"""The layout of a run directory, and the shard files that make a rerun skip finished work.

    runs/<name>/
      prompts/shard-00000-<key>.jsonl       one shard of the run's prompts (deduplicated, in source order)
      candidates/shard-00000-<key>.jsonl    sampled answers of one shard of prompts
      pairs/shard-00000-<key>.jsonl         the pairs built from them
      judgments/shard-00000-<key>.jsonl     the judge's verdicts on those pairs
      routing.jsonl                         review or judge, with the reason, for every judged pair
      review_queue.jsonl                    the routed pairs with their judgments, for people
      manifest.json                         the shard files of the labelled run and the routed pairs
      claims/                               lock files by which workers on one run split its shards
      config.yaml                           the effective config of the run
      report.json                           counts and rates of the run
      dataset/                              the merged dataset (`rlaif merge`), its card and figures

A shard's key hashes everything its content depends on: its input, the settings that matter and
the source code of the step that makes it. A shard file whose key matches is finished work (files
are written atomically) and is reused; anything else is computed again. Every file is JSON lines,
readable with `datasets.load_dataset("json", data_files=...)`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from rlaif.run_files import read_jsonl

if TYPE_CHECKING:
    from rlaif.run_storage import RunStorage

T = TypeVar("T", bound=BaseModel)


def source_hash(*files: Path) -> str:
    """A hash of the source files of the code that computes a step: changing the code invalidates its shards."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


class RunDirectory:
    """A run's files on local disk; `storage`: the store that keeps them when the run is on object storage."""

    def __init__(self, root: Path, storage: RunStorage | None = None) -> None:
        self.root = root
        self.storage = storage

    def shard(self, stage: str, index: int, key: str) -> Path:
        return self.root / stage / f"shard-{index:05d}-{key}.jsonl"

    @property
    def routing(self) -> Path:
        return self.root / "routing.jsonl"

    @property
    def review_queue(self) -> Path:
        return self.root / "review_queue.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def certification(self) -> Path:
        return self.root / "certification.json"

    @property
    def eval_prompts(self) -> Path:
        return self.root / "eval_prompts.jsonl"

    @property
    def reward_round(self) -> Path:
        return self.root / "reward_round.json"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"


def read_manifest(run: RunDirectory) -> dict[str, Any]:
    """The labelled run's shard files and routed pairs, written when it was routed."""
    try:
        return json.loads(run.manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{run.manifest} not found: {run.root} is not a labelled run directory (run `rlaif label` first)"
        ) from None


def read_records(path: Path, model: type[T], keep: Callable[[str], bool] | None = None) -> Iterator[T]:
    """The records of a JSONL file, validated as `model`; with `keep`, only the lines whose `id` it accepts
    (read from the line first, so the others are not validated: a tenth of a run's pairs costs a tenth)."""
    for number, row in read_jsonl(path):
        if keep is not None and not (isinstance(row, dict) and keep(row.get("id", ""))):
            continue
        try:
            yield model.model_validate(row)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not a valid {model.__name__}: {exc}") from None
