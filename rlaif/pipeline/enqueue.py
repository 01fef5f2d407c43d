"""Enqueue: the run's routed pairs (RUN_DIR/review_queue.jsonl) into the review database for people."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rlaif.config import Config
from rlaif.review.store import ReviewStore, ReviewStoreError, RunSettings
from rlaif.run_directory import RunDirectory
from rlaif.run_files import read_jsonl
from rlaif.schema import Judgment, Pair, ReviewItem


def read_review_queue(path: Path) -> Iterator[tuple[ReviewItem, Pair, Judgment]]:
    """The rows of a review_queue.jsonl: (item, pair, judgment)."""
    for number, row in read_jsonl(path, ReviewStoreError):
        try:
            yield (
                ReviewItem.model_validate(row["item"]),
                Pair.model_validate(row["pair"]),
                Judgment.model_validate(row["judgment"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReviewStoreError(f"{path}:{number}: not a review queue row: {exc}") from None


def enqueue_routed(run: RunDirectory, config: Config, store: ReviewStore) -> int:
    """Put the run's routed pairs into the review database, with the page's settings from the config; returns
    how many were new."""
    return store.enqueue(
        config.run.name,
        read_review_queue(run.review_queue),
        labels_needed=config.review.labels_per_item,
        max_skips=config.review.max_skips,
        settings=run_settings(config),
    )


def run_settings(config: Config) -> RunSettings:
    """What the review page offers the run's reviewers: review.guidelines (the file's text), strength, tags."""
    guidelines = None
    if config.review.guidelines:
        path = Path(config.review.guidelines)
        try:
            guidelines = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReviewStoreError(f"review.guidelines: cannot read {path}: {exc}") from None
    return RunSettings(guidelines, config.review.strength, tuple(config.review.tags))
