"""Prompt sources: JSONL, MT-Bench, saved datasets, and errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.pipeline.prompt_sources import PromptSourceError, load_prompts


def jsonl(tmp_path: Path, lines: list[str], name: str = "prompts.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prompt_and_messages_lines(tmp_path):
    path = jsonl(
        tmp_path,
        [
            json.dumps({"prompt": "Write a haiku.", "id": "h1", "topic": "poetry"}),
            "",
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Define entropy."},
                    ]
                }
            ),
        ],
    )
    first, second = load_prompts(path)
    assert first.chat() == [{"role": "user", "content": "Write a haiku."}]
    assert first.metadata == {"topic": "poetry", "source_id": "h1"}
    assert [m.role for m in second.messages] == ["system", "user"]


def test_mt_bench_question_file(mt_bench_file):
    prompts = load_prompts(mt_bench_file)
    assert len(prompts) == 80
    assert prompts[0].metadata["category"] == "writing"
    assert prompts[0].messages[0].content.startswith("Compose an engaging travel blog post")
    assert len(load_prompts(mt_bench_file, limit=3)) == 3


def test_duplicates_are_dropped(tmp_path):
    line = json.dumps({"prompt": "same"})
    assert len(load_prompts(jsonl(tmp_path, [line, line]))) == 1


def test_saved_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"prompt": "one"}, {"prompt": "two"}]).save_to_disk(tmp_path / "ds")
    assert [p.messages[0].content for p in load_prompts(tmp_path / "ds")] == ["one", "two"]
    datasets.DatasetDict({"test": datasets.Dataset.from_list([{"prompt": "three"}])}).save_to_disk(tmp_path / "dd")
    assert load_prompts(tmp_path / "dd", split="test")[0].messages[0].content == "three"
    with pytest.raises(PromptSourceError, match="no split 'train' .*has test"):
        load_prompts(tmp_path / "dd")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"prompt": "ok"', "2: not valid JSON"),
        ('["a list"]', "2: expected a JSON object, got list"),
        ('{"text": "hi"}', "2: needs a 'prompt' string or a 'messages' list"),
        ('{"prompt": 42}', "2: field 'prompt' must be a string, got int"),
        ('{"prompt": "   "}', "2: .*the prompt is empty"),
        ('{"messages": []}', "2: field 'messages' must be a non-empty list"),
        ('{"messages": [{"role": "user"}]}', r"2: messages\[0\] must be an object with 'role' and 'content'"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "2: messages.0.role"),
        ('{"messages": [{"role": "assistant", "content": "x"}]}', "2: .*must have role 'user'"),
        ('{"turns": []}', "2: field 'turns' must be a non-empty list of strings"),
    ],
)
def test_malformed_lines_name_file_line_and_problem(tmp_path, line, problem):
    path = jsonl(tmp_path, [json.dumps({"prompt": "fine"}), line])
    with pytest.raises(PromptSourceError, match=f"{path.name}:{problem}"):
        load_prompts(path)


def test_invalid_utf8_is_reported_with_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "\xff\xfe"}\n')
    with pytest.raises(PromptSourceError, match=r"bad.jsonl:2: not valid UTF-8"):
        load_prompts(path)


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(PromptSourceError, match="no such file"):
        load_prompts(tmp_path / "absent.jsonl")
    with pytest.raises(PromptSourceError, match="no usable prompts found"):
        load_prompts(jsonl(tmp_path, [""]))
