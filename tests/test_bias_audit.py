"""The bias audit: how often the longer answer wins, and the self-preference warning by model family."""

from __future__ import annotations

from rlaif.config import load_config
from rlaif.pipeline.bias_audit import longer_wins_rate, model_family, self_preference_warning
from rlaif.schema import Candidate, Pair, PromptItem


def pair(first: str, second: str) -> Pair:
    prompt = PromptItem(messages=[{"role": "user", "content": f"q {first} {second}"}])
    return Pair(
        prompt=prompt,
        a=Candidate(prompt_id=prompt.id, text=first, model="m"),
        b=Candidate(prompt_id=prompt.id, text=second, model="m"),
        strategy="all",
    )


def test_longer_wins_counts_only_decided_pairs_of_unequal_length():
    choices = [
        (pair("a long answer", "short"), "a"),  # longer chosen
        (pair("short", "a long answer"), "a"),  # shorter chosen
        (pair("x" * 5, "y" * 50), "b"),  # longer chosen
        (pair("same", "size"), "a"),  # equal length: not counted
        (pair("tie one", "tie"), "tie"),  # no choice: not counted
        (pair("failed", "f"), None),
    ]
    assert longer_wins_rate(choices) == {"pairs": 3, "longer_wins": 2 / 3}
    assert longer_wins_rate([]) == {"pairs": 0, "longer_wins": None}


def test_model_family_and_the_self_preference_warning():
    assert model_family("smollm2-135m-instruct") == "smollm2"
    assert model_family("/models/SmolLM2-360M-Instruct/") == "smollm2"
    assert model_family("Qwen/Qwen2.5-7B-Instruct") == "qwen2.5"
    assert model_family("gpt-4o-mini") == "gpt"
    same = load_config(None, ["policy.model=/models/SmolLM2-135M-Instruct", "judge.model=smollm2-360m-instruct"])
    warning = self_preference_warning(same.policy.model, same.judge)
    assert warning is not None and "smollm2" in warning and "self-preference" in warning
    other = load_config(None, ["policy.model=smollm2-135m-instruct", "judge.model=Qwen/Qwen2.5-7B-Instruct"])
    assert self_preference_warning(other.policy.model, other.judge) is None
