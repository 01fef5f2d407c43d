"""The judge's known biases, measured in every run: preference for the longer answer, position (order)
consistency, and self-preference (judge and policy of one model family).

Length: among decided pairs whose answers differ in length, how often the chosen answer is the longer one,
for the judge on all its pairs and, on the random audit, for the judge and for people side by side (a judge
that picks the longer answer much more often than people do is rewarding length, and a policy trained on
its labels learns to ramble). Position consistency is the share of judgments whose two orders agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from rlaif.config import JudgeSection
from rlaif.schema import Pair


def longer_answer(pair: Pair) -> str | None:
    """Which answer is longer ("a" or "b"), by characters; None when they are the same length."""
    if len(pair.a.text) == len(pair.b.text):
        return None
    return "a" if len(pair.a.text) > len(pair.b.text) else "b"


def longer_wins_rate(choices: Iterable[tuple[Pair, str | None]]) -> dict[str, Any]:
    """How often the chosen answer ("a" or "b") is the longer one, over pairs of unequal length."""
    counted = wins = 0
    for pair, chosen in choices:
        longer = longer_answer(pair)
        if longer is None or chosen not in ("a", "b"):
            continue
        counted += 1
        wins += chosen == longer
    return {"pairs": counted, "longer_wins": wins / counted if counted else None}


def model_family(model: str) -> str:
    """A model's family from its name or path: the last path part up to its first size or variant suffix
    ("SmolLM2-135M-Instruct" -> "smollm2", "Qwen/Qwen2.5-7B-Instruct" -> "qwen2.5", "gpt-4o-mini" -> "gpt")."""
    name = PurePosixPath(model.replace("\\", "/").rstrip("/")).name.lower()
    return re.split(r"[-_ ]", name, maxsplit=1)[0]


def self_preference_warning(policy_model: str, judge: JudgeSection) -> str | None:
    """A warning when the judge (or an ensemble member) is of the policy's family: judges prefer answers of
    their own family."""
    family = model_family(policy_model)
    same = [member.model for member in judge.ensemble or [judge] if model_family(member.model) == family]
    if not same:
        return None
    return (
        f"the judge {same[0]} is of the policy's model family ({family}): judges tend to prefer answers of their "
        "own family (self-preference); check the audit agreement, or judge with another family"
    )
