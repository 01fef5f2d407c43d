"""Human-labelled preference sets as (prompt, first answer, second answer, human label).

Formats (see ../shared/data/README.md):
- llmbar: a JSON list of {input, output_1, output_2, label: 1|2}.
- pandalm: a JSON list of {instruction, input, response1, response2, annotator1..3: 0 tie|1|2};
  the label is the majority of the three annotators (a tie when they all differ or the majority says tie).
- hh-rlhf: JSON lines (optionally .gz) of {chosen, rejected}, whole "\\n\\nHuman: ...\\n\\nAssistant: ..."
  dialogues that share their beginning; the shared turns are the prompt, the last Assistant turns the
  answers. Which answer comes first is drawn per item (seeded), so "always A" scores about 0.5.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlaif.errors import ExpectedError
from rlaif.run_files import read_jsonl
from rlaif.schema import PromptItem, content_id

Format = Literal["llmbar", "pandalm", "hh-rlhf"]
HumanLabel = Literal["a", "b", "tie"]
_TURN = re.compile(r"\n\n(Human|Assistant):\s?")


class LabelledDataError(ExpectedError, ValueError):
    """A labelled file that cannot be read; the message names the file and record."""


@dataclass(frozen=True)
class LabelledPair:
    prompt: PromptItem
    first: str
    second: str
    label: HumanLabel  # which answer people preferred: a = first, b = second
    source_index: int


def load_labelled(path: str | Path, data_format: Format, seed: int = 0) -> list[LabelledPair]:
    source = Path(path)
    if not source.is_file():
        raise LabelledDataError(f"{source}: no such file")
    if data_format == "llmbar":
        return [_llmbar(r, i, source) for i, r in enumerate(_json_list(source))]
    if data_format == "pandalm":
        return [_pandalm(r, i, source) for i, r in enumerate(_json_list(source))]
    if data_format == "hh-rlhf":
        return _hh_rlhf(source, seed)
    raise LabelledDataError(f"unknown format {data_format!r} (llmbar, pandalm, hh-rlhf)")


def _json_list(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabelledDataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise LabelledDataError(f"{path}: expected a JSON list of records")
    return data


def _field(record: Any, name: str, path: Path, index: int) -> Any:
    if not isinstance(record, dict) or name not in record:
        raise LabelledDataError(f"{path}: record {index} has no field {name!r}")
    return record[name]


def _user_prompt(text: str) -> PromptItem:
    return PromptItem(messages=[{"role": "user", "content": text}])


def _llmbar(record: Any, index: int, path: Path) -> LabelledPair:
    label = _field(record, "label", path, index)
    if label not in (1, 2):
        raise LabelledDataError(f"{path}: record {index}: label must be 1 or 2, got {label!r}")
    return LabelledPair(
        prompt=_user_prompt(_field(record, "input", path, index)),
        first=_field(record, "output_1", path, index),
        second=_field(record, "output_2", path, index),
        label="a" if label == 1 else "b",
        source_index=index,
    )


def _pandalm(record: Any, index: int, path: Path) -> LabelledPair:
    votes = Counter(_field(record, f"annotator{k}", path, index) for k in (1, 2, 3))
    top, count = votes.most_common(1)[0]
    label: HumanLabel = "tie" if count == 1 or top == 0 else ("a" if top == 1 else "b")
    instruction = _field(record, "instruction", path, index)
    extra = record.get("input") or ""
    return LabelledPair(
        prompt=_user_prompt(f"{instruction}\n\n{extra}" if extra.strip() else instruction),
        first=_answer(_field(record, "response1", path, index)),
        second=_answer(_field(record, "response2", path, index)),
        label=label,
        source_index=index,
    )


def _answer(value: Any) -> str:
    """An answer as text: PandaLM stores some one-word answers as JSON booleans or numbers (e.g. true)."""
    return value if isinstance(value, str) else json.dumps(value) if value is not None else ""


def parse_hh_dialogue(text: str) -> list[dict[str, str]]:
    """An hh-rlhf dialogue as chat messages."""
    parts = _TURN.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    return messages


def split_hh_pair(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str] | None:
    """(prompt messages, chosen answer, rejected answer), or None when the dialogues do not share a prompt."""
    chosen_messages, rejected_messages = parse_hh_dialogue(chosen), parse_hh_dialogue(rejected)
    if not chosen_messages or not rejected_messages:
        return None
    if chosen_messages[-1]["role"] != "assistant" or rejected_messages[-1]["role"] != "assistant":
        return None
    prompt = chosen_messages[:-1]
    if prompt != rejected_messages[:-1] or not prompt or prompt[-1]["role"] != "user":
        return None
    return prompt, chosen_messages[-1]["content"], rejected_messages[-1]["content"]


def _hh_rlhf(path: Path, seed: int) -> list[LabelledPair]:
    items = []
    for number, record in read_jsonl(path, LabelledDataError):
        index = number - 1
        split = split_hh_pair(_field(record, "chosen", path, index), _field(record, "rejected", path, index))
        if split is None or split[1] == split[2]:
            continue  # no shared prompt, or nothing to prefer: not a usable pair
        prompt, chosen, rejected = split
        chosen_first = random.Random(content_id("hh-order", seed, index)).random() < 0.5
        items.append(
            LabelledPair(
                prompt=PromptItem(messages=prompt),
                first=chosen if chosen_first else rejected,
                second=rejected if chosen_first else chosen,
                label="a" if chosen_first else "b",
                source_index=index,
            )
        )
    return items
