"""Files of a run directory: written atomically, read line by line with errors that name the line.

Each file is written to a temporary name in the same directory, flushed to disk and renamed into
place, so a process killed mid-write never leaves a half-written file that looks like data. Every JSON
lines file the project reads (run files, prompt files, labelled sets, review queues) goes through
`read_jsonl`, so a bad line fails the same way everywhere: `FILE:LINE: what is wrong`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel


def write_jsonl_atomic(path: Path, rows: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write rows as JSON lines to `path` atomically; returns the number of rows."""
    count = 0

    def lines() -> Iterator[str]:
        nonlocal count
        for row in rows:
            data = row.model_dump(mode="json") if isinstance(row, BaseModel) else row
            count += 1
            yield json.dumps(data, ensure_ascii=False) + "\n"

    _write_atomic(path, lines())
    return count


def write_json_atomic(path: Path, document: Any) -> None:
    """Write one JSON document to `path` atomically."""
    _write_atomic(path, [json.dumps(document, indent=2, ensure_ascii=False) + "\n"])


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file to `path` atomically."""
    _write_atomic(path, [text])


def _write_atomic(path: Path, chunks: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # Created as any new file is (0666 less the umask), not as tempfile's 0600: the permissions stay on the file.
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_partial_writes(path: Path) -> int:
    """Delete the temporary files that writers of `path` left behind when they died mid-write; returns how many.

    Only the worker that holds the claim on `path` may call this: another writer's file in progress has
    the same form.
    """
    partial = list(path.parent.glob(f".{path.name}.*.tmp"))
    for leftover in partial:
        leftover.unlink(missing_ok=True)
    return len(partial)


def read_jsonl(path: Path, error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) for each non-blank line of a JSON lines file (gzip-compressed when it ends
    in .gz); a line that is not UTF-8, not JSON, or not text (a lone `\\ud800` escape, which no UTF-8 file can
    hold) raises `error` naming the file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(f"{where}: not valid UTF-8 (byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None
            except RecursionError:
                raise error(f"{where}: not valid JSON: nested too deeply") from None
            if _SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(value):
                raise error(f"{where}: a \\ud800-\\udfff escape without its pair is not text")
            yield number, value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether decoded JSON holds a surrogate that no UTF-8 file can store (JSON can spell one alone)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_json(path: Path) -> Any | None:
    """The JSON document in `path`, or None when there is no such file or it does not read back whole."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, a folder, cut off mid-write, not UTF-8
        return None


def count_lines(path: Path) -> int:
    """Non-blank lines of a JSON lines file: its records."""
    with path.open(encoding="utf-8") as lines:
        return sum(1 for line in lines if line.strip())
