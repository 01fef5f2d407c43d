"""The tokenizer of a model being trained, with a pad token (models without one pad with their end token)."""

from __future__ import annotations

from typing import Any


def load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer; models without a pad token pad with their end-of-sequence token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
