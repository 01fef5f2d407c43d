"""What every training stage shares: its tokenizer (with a pad token) and its finished output folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rlaif.run_files import write_json_atomic


def load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer; models without a pad token pad with their end-of-sequence token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def finish_stage(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Write OUT/eval_report.json and drop the trainer's intermediate checkpoints; returns the report."""
    write_json_atomic(out / "eval_report.json", report)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return report
