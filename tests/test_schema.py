"""Records: content-hash ids, immutability, and failures that never carry a label."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rlaif.schema import Candidate, Judgment, Pair, PreferenceRecord, PromptItem, ReviewItem


def prompt(text: str = "What is RLAIF?") -> PromptItem:
    return PromptItem(messages=[{"role": "user", "content": text}])


def test_ids_are_content_hashes_stable_across_instances():
    assert prompt().id == prompt().id
    assert prompt().id != prompt("Something else").id
    assert len(prompt().id) == 16
    p = prompt()
    a = Candidate(prompt_id=p.id, text="one", model="m")
    assert a.id == Candidate(prompt_id=p.id, text="one", model="other", sample_index=3).id
    assert a.id != Candidate(prompt_id=p.id, text="two", model="m").id


def test_metadata_does_not_change_a_prompt_id():
    assert (
        prompt().id
        == PromptItem(messages=[{"role": "user", "content": "What is RLAIF?"}], metadata={"category": "x"}).id
    )


def test_pair_id_does_not_depend_on_the_order():
    p = prompt()
    a = Candidate(prompt_id=p.id, text="one", model="m")
    b = Candidate(prompt_id=p.id, text="two", model="m")
    assert Pair(prompt=p, a=a, b=b).id == Pair(prompt=p, a=b, b=a, swapped=True).id


def test_pair_checks_its_candidates():
    p = prompt()
    a = Candidate(prompt_id=p.id, text="one", model="m")
    stranger = Candidate(prompt_id=prompt("other").id, text="two", model="m")
    with pytest.raises(ValidationError, match="answer the pair's prompt"):
        Pair(prompt=p, a=a, b=stranger)
    with pytest.raises(ValidationError, match="two different candidates"):
        Pair(prompt=p, a=a, b=a)


def test_records_are_frozen_and_refuse_unknown_fields():
    p = prompt()
    with pytest.raises(ValidationError):
        p.source = "x"
    with pytest.raises(ValidationError, match="extra"):
        Candidate(prompt_id=p.id, text="x", model="m", colour="red")


def test_prompt_must_end_with_a_non_empty_user_turn():
    with pytest.raises(ValidationError, match="role 'user'"):
        PromptItem(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    with pytest.raises(ValidationError, match="empty"):
        PromptItem(messages=[{"role": "user", "content": "   "}])


def test_a_failed_judgment_cannot_carry_a_winner():
    with pytest.raises(ValidationError, match="cannot carry a winner"):
        Judgment(pair_id="p", winner="a", status="parse_error", judge_model="j", template_hash="t")
    failed = Judgment(
        pair_id="p", winner=None, status="backend_error", judge_model="j", template_hash="t", error="timeout"
    )
    assert failed.p_a is None
    with pytest.raises(ValidationError, match="needs p_a"):
        Judgment(pair_id="p", winner="a", status="ok", judge_model="j", template_hash="t")


def test_judgment_id_depends_on_pair_judge_and_template():
    base = dict(pair_id="p", winner="a", p_a=0.9, confidence=0.8, status="ok", judge_model="j", template_hash="t")
    assert Judgment(**base).id == Judgment(**{**base, "p_a": 0.7}).id
    assert Judgment(**base).id != Judgment(**{**base, "template_hash": "u"}).id


def test_review_item_and_preference_record_round_trip():
    item = ReviewItem(run_id="r", pair_id="p", reason="audit")
    assert item.status == "pending" and ReviewItem.model_validate(item.model_dump()) == item
    record = PreferenceRecord(
        prompt=[{"role": "user", "content": "q"}],
        chosen=[{"role": "assistant", "content": "good"}],
        rejected=[{"role": "assistant", "content": "bad"}],
        prompt_id="x",
        pair_id="p",
        label="a",
        label_source="judge",
        confidence=0.9,
    )
    row = record.to_row()
    assert row["chosen"] == [{"role": "assistant", "content": "good"}]
    assert row["label_source"] == "judge"


def test_pair_from_plain_dicts_gets_the_same_id():
    p = prompt()
    a = Candidate(prompt_id=p.id, text="one", model="m")
    b = Candidate(prompt_id=p.id, text="two", model="m")
    from_dicts = Pair(
        prompt={"messages": [{"role": "user", "content": "What is RLAIF?"}]},
        a={"prompt_id": p.id, "text": "one", "model": "m"},
        b={"prompt_id": p.id, "text": "two", "model": "m"},
    )
    assert from_dicts.id == Pair(prompt=p, a=a, b=b).id
