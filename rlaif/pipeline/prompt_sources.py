"""Reading prompts: JSONL files, MT-Bench `question.jsonl`, and `datasets` datasets saved to disk.

A JSONL line is an object with either a `prompt` string or a `messages` list of {role, content};
an MT-Bench line has `question_id`, `category` and `turns` (the first turn is the prompt). Other
fields are kept as metadata; `should_refuse` (true, false or null), read by `pairs.refusal_contrast`, is
checked here. A malformed file fails naming the file, the line and what is wrong.

What reading does with prompts that are not errors but not usable as they are, counted in
`PromptCounts` (and so in report.json): a prompt seen before (same messages) is kept once, and a
prompt over `prompts.max_chars` is skipped, truncated or refused (`prompts.too_long`). An empty prompt
is an error naming its line, and so is an `id` used by two different prompts: the source's ids would
no longer say which prompt is which.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rlaif.config import Config, PromptsSection
from rlaif.errors import ExpectedError
from rlaif.pipeline.refusal_contrast import SHOULD_REFUSE_FIELD
from rlaif.run_directory import RunDirectory
from rlaif.run_files import read_jsonl, write_jsonl_atomic
from rlaif.run_storage import local_input
from rlaif.schema import PromptItem, content_id


class PromptSourceError(ExpectedError, ValueError):
    """A prompt source that cannot be read; the message names the file and line."""


@dataclass
class PromptCounts:
    """The prompts reading left out or changed (see the module docstring)."""

    duplicates: int = 0
    too_long_skipped: int = 0
    truncated: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def load_prompts(path: str | Path, limit: int | None = None, split: str = "train") -> list[PromptItem]:
    """All prompts of a source (the first `limit` when given), with duplicates removed, in file order."""
    return list(unique_prompts(path, limit, split))


def unique_prompts(
    path: str | Path,
    limit: int | None = None,
    split: str = "train",
    max_chars: int | None = None,
    too_long: str = "skip",
    counts: PromptCounts | None = None,
) -> Iterator[PromptItem]:
    """The usable prompts of a source one by one, stopping after `limit`; only their ids are kept.

    Duplicates are left out, prompts over `max_chars` handled by `too_long`, each
    counted in `counts` when given.
    """
    counts = counts if counts is not None else PromptCounts()
    seen: set[str] = set()
    source_ids: dict[str, tuple[str, str]] = {}  # a source's own id -> (where it was, prompt id)
    for where, item in _located_prompts(path, split):
        source_id = item.metadata.get("source_id")
        if source_id is not None:
            first = source_ids.setdefault(json.dumps(source_id), (where, item.id))
            if first[1] != item.id:
                raise PromptSourceError(
                    f"{where}: id {source_id!r} is already the id of a different prompt ({first[0]}); "
                    "ids must be unique"
                )
        if max_chars is not None and _chars(item) > max_chars:
            if too_long == "error":
                raise PromptSourceError(
                    f"{where}: the prompt has {_chars(item)} characters, over prompts.max_chars={max_chars} "
                    "(set prompts.too_long to skip or truncate such prompts)"
                )
            if too_long == "skip":
                counts.too_long_skipped += 1
                continue
            item = _truncated(item, max_chars)
            counts.truncated += 1
        if item.id in seen:
            counts.duplicates += 1
            continue
        seen.add(item.id)
        yield item
        if limit is not None and len(seen) >= limit:
            break
    if not seen:
        raise PromptSourceError(f"{path}: no usable prompts found ({_left_out(counts)})")


def _chars(item: PromptItem) -> int:
    return sum(len(message.content) for message in item.messages)


def _truncated(item: PromptItem, max_chars: int) -> PromptItem:
    """The prompt with its last message cut so that the whole fits in `max_chars` (its start kept)."""
    earlier = _chars(item) - len(item.messages[-1].content)
    room = max(0, max_chars - earlier)
    last = item.messages[-1].model_copy(update={"content": item.messages[-1].content[:room]})
    messages = [m.model_dump() for m in (*item.messages[:-1], last)]
    return PromptItem(messages=messages, source=item.source, metadata={**item.metadata, "truncated_from": _chars(item)})


def _left_out(counts: PromptCounts) -> str:
    return ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in counts.as_dict().items()) + " left out"


def load_configured_prompts(section: PromptsSection) -> list[PromptItem]:
    """The prompts a config's `prompts` section names; a missing path says which key to set."""
    return list(iter_configured_prompts(section))


def check_configured_prompts(section: PromptsSection) -> int:
    """Read every configured prompt (a bad line fails here, naming it) without keeping them; returns the count."""
    return sum(1 for _ in iter_configured_prompts(section))


def iter_configured_prompts(section: PromptsSection, counts: PromptCounts | None = None) -> Iterator[PromptItem]:
    """The configured prompts one by one (as `load_configured_prompts`, without holding them all); what was
    left out or truncated is added to `counts`."""
    try:
        source = local_input(section.path)  # a URL (s3://...): copied here first
    except FileNotFoundError as missing:
        raise PromptSourceError(f"prompts.path {missing}") from None
    if not source.exists():
        raise PromptSourceError(
            f"prompts.path {section.path} does not exist (relative to {Path.cwd()}); "
            "set it in the config or with --set prompts.path=FILE"
        )
    return unique_prompts(
        source,
        limit=section.limit,
        split=section.split,
        max_chars=section.max_chars,
        too_long=section.too_long,
        counts=counts,
    )


def run_prompts(config: Config, counts: PromptCounts | None = None) -> Iterator[PromptItem]:
    """The prompts a run samples and labels: the configured ones less, with `eval.held_out_fraction`, those held
    out for evaluating the trained policy (written to RUN_DIR/eval_prompts.jsonl); every command that samples
    for a run reads them here, so none of them sees a held-out prompt."""
    prompts = iter_configured_prompts(config.prompts, counts)
    if not config.eval.held_out_fraction:
        return prompts
    held_out = RunDirectory(config.run.directory()).eval_prompts
    return hold_out_prompts(prompts, config.eval.held_out_fraction, config.run.seed, held_out)


def hold_out_prompts(prompts: Iterable[PromptItem], fraction: float, seed: int, held_out: Path) -> Iterator[PromptItem]:
    """The prompts that stay in the run; a seeded `fraction` of them (chosen by prompt id, so the same whatever
    the order) is left out and written to `held_out` once every prompt has been read (`eval.held_out_fraction`:
    prompts no stage trains on, for evaluating the trained policy)."""
    kept_out: list[PromptItem] = []
    for prompt in prompts:
        if int(content_id("held-out", seed, prompt.id)[:8], 16) < fraction * 16**8:
            kept_out.append(prompt)
        else:
            yield prompt
    write_jsonl_atomic(held_out, kept_out)


def iter_prompts(path: str | Path, split: str = "train") -> Iterator[PromptItem]:
    """Prompts one by one from a JSONL file or a saved dataset directory."""
    for _, item in _located_prompts(path, split):
        yield item


def _located_prompts(path: str | Path, split: str) -> Iterator[tuple[str, PromptItem]]:
    """(where, prompt) for each record: where is `file:line` or `directory row N`."""
    source = Path(path)
    if not source.exists():
        raise PromptSourceError(f"{source}: no such file or directory")
    if source.is_dir():
        yield from _iter_dataset(source, split)
    else:
        yield from _iter_jsonl(source)


def _iter_jsonl(path: Path) -> Iterator[tuple[str, PromptItem]]:
    for number, record in read_jsonl(path, PromptSourceError):
        where = f"{path}:{number}"
        yield where, prompt_from_record(record, where, source=path.name)


def _iter_dataset(path: Path, split: str) -> Iterator[tuple[str, PromptItem]]:
    import datasets  # heavy import, only when a dataset directory is read

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise PromptSourceError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise PromptSourceError(f"{path}: no split {split!r} (has {', '.join(loaded)}); set prompts.split")
        loaded = loaded[split]
    for index, record in enumerate(loaded):
        where = f"{path} row {index}"
        yield where, prompt_from_record(record, where, source=path.name)


def prompt_from_record(record: Any, where: str, source: str = "") -> PromptItem:
    """One PromptItem from a decoded record; `where` (file:line) prefixes every error."""
    if not isinstance(record, Mapping):
        raise PromptSourceError(f"{where}: expected a JSON object, got {type(record).__name__}")
    fields = dict(record)
    if "turns" in fields and "prompt" not in fields and "messages" not in fields:
        messages = _mt_bench_messages(fields.pop("turns"), where)
    elif "messages" in fields:
        messages = _messages(fields.pop("messages"), where)
        fields.pop("prompt", None)
    elif "prompt" in fields:
        prompt = fields.pop("prompt")
        if not isinstance(prompt, str):
            raise PromptSourceError(f"{where}: field 'prompt' must be a string, got {type(prompt).__name__}")
        messages = [{"role": "user", "content": prompt}]
    else:
        raise PromptSourceError(f"{where}: needs a 'prompt' string or a 'messages' list (has {sorted(fields)})")
    should_refuse = fields.get(SHOULD_REFUSE_FIELD)
    if should_refuse is not None and not isinstance(should_refuse, bool):
        raise PromptSourceError(
            f"{where}: field '{SHOULD_REFUSE_FIELD}' must be true, false or null (not known), got {should_refuse!r}"
        )
    fields.pop("id", None)  # ids are content hashes; a source's own id is kept as metadata below
    if "id" in record:
        fields["source_id"] = record["id"]
    try:
        return PromptItem(messages=messages, source=source, metadata=_json_safe(fields))
    except ValidationError as exc:
        problem = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'prompt'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise PromptSourceError(f"{where}: {problem}") from None


def _mt_bench_messages(turns: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
        raise PromptSourceError(f"{where}: field 'turns' must be a non-empty list of strings")
    return [{"role": "user", "content": turns[0]}]


def _messages(messages: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise PromptSourceError(f"{where}: field 'messages' must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
            raise PromptSourceError(f"{where}: messages[{index}] must be an object with 'role' and 'content'")
        if not isinstance(message["content"], str):
            raise PromptSourceError(f"{where}: messages[{index}].content must be a string")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _json_safe(fields: dict[str, Any]) -> dict[str, Any]:
    """Metadata as JSON round-trips it, so ids computed later do not depend on Python types."""
    return json.loads(json.dumps(fields, default=str))
