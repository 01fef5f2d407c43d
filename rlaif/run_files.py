"""Files of a run directory, written atomically: a reader sees a whole file or none.

Each file is written to a temporary name in the same directory, flushed to disk and renamed into
place, so a process killed mid-write never leaves a half-written file that looks like data.
"""

from __future__ import annotations

import json
import os
import tempfile
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
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
