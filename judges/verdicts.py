"""Reading a judge's reply: the label from its text, or p(A) from the label tokens' log-probabilities."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from rlaif.generation.protocol import TokenLogprob
from rlaif.judges.templates import Labels

Verdict = str  # "a" | "b" | "tie"
_BRACKETS = re.compile(r"\[\[\s*([^\[\]\s]{1,16})\s*\]\]")
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


class VerdictParseError(ValueError):
    """A reply with no recognisable verdict."""


def parse_verdict(text: str, labels: Labels, output: str) -> Verdict:
    """The verdict in a reply: the last [[label]] (brackets), or the `verdict` field of the last JSON object."""
    by_label = {labels.a.upper(): "a", labels.b.upper(): "b"}
    if labels.tie:
        by_label[labels.tie.upper()] = "tie"
    if output == "json":
        for candidate in reversed(_JSON_OBJECT.findall(text)):
            try:
                value = json.loads(candidate).get("verdict")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(value, str) and value.strip().upper() in by_label:
                return by_label[value.strip().upper()]
        raise VerdictParseError("no JSON object with a valid 'verdict' in the reply")
    for found in reversed(_BRACKETS.findall(text)):
        if found.upper() in by_label:
            return by_label[found.upper()]
    raise VerdictParseError(f"no [[{labels.a}]] / [[{labels.b}]] verdict in the reply")


def verdict_probability(verdict: Verdict) -> float:
    """p(first shown answer is better) for a parsed verdict."""
    return {"a": 1.0, "b": 0.0, "tie": 0.5}[verdict]


def label_probability(tokens: Sequence[TokenLogprob], labels: Labels, first_is_verdict: bool = False) -> float:
    """p(A) = P(A) / (P(A) + P(B)) at the verdict position.

    The verdict position is the first token of the reply when the reply was prefilled up to the
    verdict (`first_is_verdict`), else the first generated token that is a label. Variants of a
    label token (" A", "A") are summed. A label missing from the top alternatives is given the
    smallest listed probability, an upper bound, so confidence is never overstated.
    """
    if not tokens:
        raise VerdictParseError("the reply has no token log-probabilities (does the server return them?)")
    wanted = {labels.a, labels.b} | ({labels.tie} if labels.tie else set())
    position = next((item for item in tokens if item.token.strip() in wanted), None)
    if first_is_verdict and any(t.strip() in (labels.a, labels.b) for t in tokens[0].top):
        position = tokens[0]
    if position is None:
        raise VerdictParseError(f"no {labels.a}/{labels.b} label token in the reply")
    if not position.top:
        raise VerdictParseError("the server returned no top log-probabilities")
    floor = min(position.top.values())
    log_a = _logsumexp([v for t, v in position.top.items() if t.strip() == labels.a])
    log_b = _logsumexp([v for t, v in position.top.items() if t.strip() == labels.b])
    if log_a is None and log_b is None:
        raise VerdictParseError(f"neither {labels.a} nor {labels.b} is among the top alternatives")
    return 1.0 / (1.0 + math.exp((log_b if log_b is not None else floor) - (log_a if log_a is not None else floor)))


def _logsumexp(values: list[float]) -> float | None:
    if not values:
        return None
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))
