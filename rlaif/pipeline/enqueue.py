"""Enqueue: the run's routed pairs (RUN_DIR/review_queue.jsonl) into the review database for people."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from rlaif.config import Config
from rlaif.pipeline.shard_plan import judged_shards
from rlaif.review.store import LABELS, ReviewStore, ReviewStoreError, RunSettings
from rlaif.run_directory import RunDirectory, read_records
from rlaif.run_files import read_jsonl
from rlaif.schema import Candidate, Judgment, Pair, PromptItem, ReviewItem, ReviewLabel


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
    """Put the run's routed pairs into the review database, with the page's settings from the config and any
    gold pairs (review.gold) mixed in; returns how many were new."""
    gold = read_gold(Path(config.review.gold), config.run.name) if config.review.gold else []
    routed: Iterable[Entry] = read_review_queue(run.review_queue)
    rankings: dict[str, list[Candidate]] = {}
    if config.review.mode == "ranking":
        routed, rankings = ranking_items(run, list(routed))
    return store.enqueue(
        config.run.name,
        with_gold(routed, gold, config.review.gold_every),
        labels_needed=config.review.labels_per_item,
        max_skips=config.review.max_skips,
        settings=run_settings(config),
        gold={item.id: label for (item, _, _), label in gold},
        rankings=rankings,
    )


def ranking_items(run: RunDirectory, routed: list[Entry]) -> tuple[list[Entry], dict[str, list[Candidate]]]:
    """Ranking mode: one item per prompt the routing picked (its first routed pair stands for it, with reason
    audit when any of its pairs was drawn for the audit), holding every distinct answer of the prompt in the
    run's pairs (all of them, with pairs.strategy all), for people to rank."""
    by_prompt: dict[str, list[Entry]] = {}
    for entry in routed:
        by_prompt.setdefault(entry[1].prompt.id, []).append(entry)
    answers: dict[str, dict[str, Candidate]] = {prompt_id: {} for prompt_id in by_prompt}
    for shard in judged_shards(run):
        for pair in read_records(shard.pairs, Pair):
            if pair.prompt.id in answers:
                for candidate in (pair.a, pair.b):
                    answers[pair.prompt.id].setdefault(candidate.id, candidate)
    items = []
    rankings = {}
    for prompt_id, entries in by_prompt.items():
        item, pair, judgment = entries[0]
        if any(entry[0].reason == "audit" for entry in entries):
            item = ReviewItem(run_id=item.run_id, pair_id=item.pair_id, reason="audit")
        items.append((item, pair, judgment))
        rankings[item.id] = sorted(answers[prompt_id].values(), key=lambda candidate: candidate.id)
    return items, rankings


Entry = tuple[ReviewItem, Pair, Judgment]


def read_gold(path: Path, run_id: str) -> list[tuple[Entry, ReviewLabel]]:
    """Gold pairs of review.gold as queue entries (reason gold, no judgment: the judge never saw them) with their
    known answers; a bad line is named by file and line."""
    gold = []
    for number, row in read_jsonl(path, ReviewStoreError):
        try:
            prompt = row["prompt"]
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            item = PromptItem(messages=messages)
            pair = Pair(
                prompt=item,
                a=Candidate(prompt_id=item.id, text=row["a"], model="gold"),
                b=Candidate(prompt_id=item.id, text=row["b"], model="gold"),
            )
            label = row["label"]
            if label not in LABELS:
                raise ValueError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise ReviewStoreError(f"review.gold: {path}:{number}: not a gold pair: {exc}") from None
        judgment = Judgment.not_judged(pair.id, "a gold pair: not judged", judge="gold")
        gold.append(((ReviewItem(run_id=run_id, pair_id=pair.id, reason="gold"), pair, judgment), label))
    return gold


def with_gold(routed: Iterable[Entry], gold: list[tuple[Entry, ReviewLabel]], every: int) -> Iterator[Entry]:
    """The routed entries with one gold entry between each `every` of them. Gold is offered only while routed
    items remain, so gold beyond that room goes at the end, where a reviewer meets it only while the last routed
    items are still open."""
    waiting = [entry for entry, _ in gold]
    for number, entry in enumerate(routed):
        if number and number % every == 0 and waiting:
            yield waiting.pop(0)
        yield entry
    yield from waiting


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
