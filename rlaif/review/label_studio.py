"""A run's exported review queue as Label Studio tasks: a pairwise choice with the labels as annotations (a
ranking, in ranking mode, as the pairwise choices it makes)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rlaif.review.ranking import pair_label
from rlaif.schema import Candidate, Pair

NAMES = {"a": "A", "b": "B", "tie": "Tie", "both_bad": "Both bad"}


def label_studio_tasks(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exported rows as Label Studio tasks (a pairwise choice between answer_a and answer_b)."""
    tasks = []
    for row in rows:
        for pair, labels in _pairs_of(row):
            annotations = [
                {
                    "completed_by": reviewer,
                    "result": [
                        {
                            "from_name": "preference",
                            "to_name": "prompt",
                            "type": "choices",
                            "value": {"choices": [NAMES[label]]},
                        }
                    ],
                }
                for reviewer, label in labels
            ]
            tasks.append(
                {
                    "id": len(tasks) + 1,
                    "data": {
                        "item_id": row["item"]["id"],
                        "pair_id": pair.id,
                        "prompt": "\n\n".join(f"{m.role}: {m.content}" for m in pair.prompt.messages),
                        "answer_a": pair.a.text,
                        "answer_b": pair.b.text,
                    },
                    "annotations": annotations,
                }
            )
    return tasks


def _pairs_of(row: dict[str, Any]) -> Iterator[tuple[Pair, list[tuple[str, str]]]]:
    """The pair of an exported row with its (reviewer, label)s; a ranking item's every pair of answers with the
    labels its rankings give."""
    pair = Pair.model_validate(row["pair"])
    if "candidates" not in row:
        yield pair, [(entry["reviewer"], entry["label"]) for entry in row["labels"] if entry["label"] is not None]
        return
    candidates = [Candidate.model_validate(c) for c in row["candidates"]]
    rankings = [(entry["reviewer"], entry["ranking"]) for entry in row["labels"] if entry.get("ranking")]
    for i, first in enumerate(candidates):
        for j in range(i + 1, len(candidates)):
            labels = [(reviewer, pair_label(ranking, i, j)) for reviewer, ranking in rankings]
            yield Pair(prompt=pair.prompt, a=first, b=candidates[j]), labels
