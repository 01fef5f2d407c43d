"""Atomic run files: a reader sees the whole file or nothing."""

from __future__ import annotations

import json

import pytest

from rlaif.run_files import write_jsonl_atomic
from rlaif.schema import PromptItem


def test_rows_are_written_as_json_lines(tmp_path):
    path = tmp_path / "deep" / "prompts.jsonl"
    item = PromptItem(messages=[{"role": "user", "content": "héllo"}])
    assert write_jsonl_atomic(path, [item, {"plain": 1}]) == 2
    first, second = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    assert first["id"] == item.id and first["messages"][0]["content"] == "héllo"
    assert second == {"plain": 1}


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "candidates.jsonl"
    write_jsonl_atomic(path, [{"n": 1}])

    def rows_then_crash():
        yield {"n": 2}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, rows_then_crash())
    assert path.read_text() == '{"n": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["candidates.jsonl"]
