"""A run's exported review queue as Label Studio tasks: a pairwise choice with the labels as annotations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rlaif.schema import Pair


def label_studio_tasks(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Exported rows as Label Studio tasks (a pairwise choice between answer_a and answer_b)."""
    names = {"a": "A", "b": "B", "tie": "Tie", "both_bad": "Both bad"}
    tasks = []
    for number, row in enumerate(rows, start=1):
        pair = Pair.model_validate(row["pair"])
        annotations = [
            {
                "completed_by": entry["reviewer"],
                "result": [
                    {
                        "from_name": "preference",
                        "to_name": "prompt",
                        "type": "choices",
                        "value": {"choices": [names[entry["label"]]]},
                    }
                ],
            }
            for entry in row["labels"]
            if entry["label"] is not None
        ]
        tasks.append(
            {
                "id": number,
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
