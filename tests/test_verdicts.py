"""Reading verdicts and combining orders and judges."""

from __future__ import annotations

import math

import pytest

from rlaif.generation.protocol import TokenLogprob
from rlaif.judges.combine import combine_judges, combine_orders, confidence_of, winner_of
from rlaif.judges.templates import Labels
from rlaif.judges.verdicts import VerdictParseError, label_probability, parse_verdict

LABELS = Labels()


def test_brackets_take_the_last_verdict():
    assert parse_verdict("[[A]]", LABELS, "brackets") == "a"
    assert parse_verdict("A is fine but [[B]] wins", LABELS, "brackets") == "b"
    assert parse_verdict("Reasoning mentions [[A]]... final: [[ c ]]", LABELS, "brackets") == "tie"
    with pytest.raises(VerdictParseError):
        parse_verdict("A is better", LABELS, "brackets")


def test_json_verdicts():
    assert parse_verdict('thinking... {"verdict": "B"}', LABELS, "json") == "b"
    with pytest.raises(VerdictParseError):
        parse_verdict('{"winner": "B"}', LABELS, "json")


def test_label_probability_at_the_verdict_position():
    tokens = [
        TokenLogprob("The", -0.1, {"The": -0.1}),
        TokenLogprob(" A", math.log(0.6), {" A": math.log(0.6), "A": math.log(0.1), " B": math.log(0.2)}),
    ]
    assert label_probability(tokens, LABELS) == pytest.approx(0.7 / 0.9)
    # prefilled up to the verdict: position 0 is read even when the model picked something else
    prefilled = [TokenLogprob("x", -0.5, {"x": math.log(0.5), "A": math.log(0.1), "B": math.log(0.3)})]
    assert label_probability(prefilled, LABELS, first_is_verdict=True) == pytest.approx(0.25)
    with pytest.raises(VerdictParseError):
        label_probability(prefilled, LABELS)
    with pytest.raises(VerdictParseError, match="no token log-probabilities"):
        label_probability([], LABELS)


def test_a_missing_label_gets_the_floor_not_zero():
    tokens = [TokenLogprob("A", math.log(0.9), {"A": math.log(0.9), "x": math.log(0.05)})]
    assert label_probability(tokens, LABELS) == pytest.approx(0.9 / 0.95)


def test_combining_orders_cancels_position_bias():
    # always prefers the first answer shown: the orders disagree and cancel out
    p_a, disagree = combine_orders(1.0, 1.0)
    assert p_a == 0.5 and disagree and winner_of(p_a) == "tie" and confidence_of(p_a) == 0.0
    p_a, disagree = combine_orders(0.9, 0.2)  # A-B says A (0.9); B-A says A (1 - 0.2)
    assert p_a == pytest.approx(0.85) and not disagree and winner_of(p_a) == "a"
    assert confidence_of(p_a) == pytest.approx(0.7)
    assert combine_judges([0.9, 0.2]) == (pytest.approx(0.55), True)
    assert combine_judges([0.9, 0.7]) == (pytest.approx(0.8), False)
