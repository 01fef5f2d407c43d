"""Atomic run files: a reader sees the whole file or nothing."""

from __future__ import annotations

import json
import os
import stat

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


def test_a_run_file_gets_the_permissions_of_any_new_file(tmp_path):
    """The process's umask decides, as for a file written in place: a run directory shared by a team stays
    readable to it (a temporary file's own 0600 used to stay on every run file)."""
    previous = os.umask(0o022)
    try:
        write_jsonl_atomic(tmp_path / "shared.jsonl", [{"n": 1}])
        os.umask(0o077)
        write_jsonl_atomic(tmp_path / "private.jsonl", [{"n": 1}])
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shared.jsonl").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.jsonl").stat().st_mode) == 0o600
