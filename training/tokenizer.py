"""The tokenizer of a model being trained, with a pad token (models without one pad with their end token)."""

from __future__ import annotations

from typing import Any


def chat_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    """The token ids of a conversation rendered with the tokenizer's chat template (some tokenizers return a
    mapping with `input_ids`, others the list itself)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def load_tokenizer(model_path: str) -> Any:
    """The model's tokenizer; models without a pad token pad with their end-of-sequence token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    drop_construction_copies(tokenizer)
    return tokenizer


def drop_construction_copies(tokenizer: Any) -> None:
    """Drop the vocabulary and merges that some tokenizer classes (Qwen2's, among others) keep as Python objects
    after building their backend from them: the backend holds the same data. `datasets` pickles every attribute
    of a tokenizer to fingerprint each map and filter that uses it, which with these copies took a second or more
    per map for a 49k-token vocabulary (several per training stage), and 0.04 s without them."""
    if getattr(tokenizer, "backend_tokenizer", None) is not None:
        for name in ("_vocab", "_merges"):
            tokenizer.__dict__.pop(name, None)
