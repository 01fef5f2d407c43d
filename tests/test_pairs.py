"""Pairs from K candidates: strategies, duplicate answers dropped, random recorded order."""

from __future__ import annotations

import pytest

from rlaif.pipeline.pair import make_pairs
from rlaif.schema import Candidate, PromptItem

PROMPT = PromptItem(messages=[{"role": "user", "content": "Say something."}])


def candidates(*texts: str) -> list[Candidate]:
    return [Candidate(prompt_id=PROMPT.id, text=t, model="m", sample_index=i) for i, t in enumerate(texts)]


def test_all_pairs_of_distinct_answers():
    pairs = make_pairs(PROMPT, candidates("one", "two", "three", "four"), "all", seed=0)
    assert len(pairs) == 6
    assert len({p.id for p in pairs}) == 6
    assert all(p.strategy == "all" for p in pairs)


def test_identical_answers_exact_and_after_whitespace_are_one():
    pairs = make_pairs(PROMPT, candidates("one", "one", "two  words", " two\nwords ", "three"), "all")
    texts = {frozenset((p.a.text, p.b.text)) for p in pairs}
    assert len(pairs) == 3
    assert frozenset(("two  words", "three")) in texts  # the first spelling is the one kept
    assert make_pairs(PROMPT, candidates("same", "same"), "all") == []


def test_order_is_random_recorded_and_seeded():
    cands = candidates(*(f"answer {i}" for i in range(8)))
    pairs = make_pairs(PROMPT, cands, "all", seed=1)
    assert {p.swapped for p in pairs} == {True, False}
    index = {c.id: c.sample_index for c in cands}
    for pair in pairs:  # swapped means A was sampled after B
        assert pair.swapped == (index[pair.a.id] > index[pair.b.id])
    again = make_pairs(PROMPT, cands, "all", seed=1)
    assert [(p.a.id, p.b.id) for p in pairs] == [(p.a.id, p.b.id) for p in again]
    other = make_pairs(PROMPT, cands, "all", seed=2)
    assert [(p.a.id, p.b.id) for p in pairs] != [(p.a.id, p.b.id) for p in other]


def test_random_strategy_draws_m_distinct_pairs():
    pairs = make_pairs(PROMPT, candidates("a", "b", "c", "d", "e"), "random", seed=3, per_prompt=3)
    assert len(pairs) == 3 and len({p.id for p in pairs}) == 3
    assert len(make_pairs(PROMPT, candidates("a", "b"), "random", per_prompt=5)) == 1


def test_best_against_worst_by_score():
    cands = candidates("meh", "best", "worst", "fine")
    scores = {c.id: {"meh": 0.1, "best": 2.0, "worst": -1.5, "fine": 0.7}[c.text] for c in cands}
    [pair] = make_pairs(PROMPT, cands, "best_worst", scores=scores)
    assert {pair.a.text, pair.b.text} == {"best", "worst"}
    with pytest.raises(ValueError, match="needs a score"):
        make_pairs(PROMPT, cands, "best_worst", scores={})
