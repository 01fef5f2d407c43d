"""A model's chat template, rendered to the raw prompt text a completions endpoint takes.

The completions API (used to judge many prompts per request) takes text, not messages, so the
client renders the chat template itself. The template is read from the model folder
(`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`) and rendered the way
transformers' `apply_chat_template` does (sandboxed Jinja2, trim_blocks and lstrip_blocks, the special
tokens, `raise_exception`), without importing transformers and torch: seconds of start-up that a
client of a remote server does not need. A test checks the text equals transformers' own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A model folder without a usable chat template; the message names the folder."""


class ChatTemplate:
    """Renders conversations with one model's chat template."""

    def __init__(self, source: str, special_tokens: Mapping[str, str], origin: str = "chat template") -> None:
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise
        environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"{origin}:{exc.lineno}: not a valid Jinja2 template: {exc.message}") from None
        self._special_tokens = dict(special_tokens)

    @classmethod
    def from_model_dir(cls, folder: str | Path) -> ChatTemplate:
        """The chat template of a local model folder (as `rlaif models prepare` or `save_pretrained` write it)."""
        folder = Path(folder)
        config_file = folder / "tokenizer_config.json"
        try:
            config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        except (OSError, json.JSONDecodeError) as exc:
            raise ChatTemplateError(f"{config_file}: cannot read the tokenizer config: {exc}") from None
        template_file = folder / "chat_template.jinja"
        if template_file.is_file():
            source, origin = template_file.read_text(encoding="utf-8"), str(template_file)
        else:
            source, origin = _template_from_config(config.get("chat_template")), str(config_file)
        if not source:
            raise ChatTemplateError(
                f"{folder}: no chat template (neither chat_template.jinja nor tokenizer_config.json)"
            )
        tokens = {key: _token_text(value) for key, value in config.items() if key.endswith("_token") and value}
        return cls(source, tokens, origin)

    def render(self, messages: Sequence[Mapping[str, str]], prefill: str | None = None) -> str:
        """The prompt text for `messages`, ready for the assistant's reply, which starts with `prefill`."""
        text = self._template.render(
            messages=[dict(m) for m in messages], add_generation_prompt=True, **self._special_tokens
        )
        return text + (prefill or "")


def _template_from_config(value: Any) -> str | None:
    if isinstance(value, list):  # named templates: the default one
        value = next((t.get("template") for t in value if isinstance(t, dict) and t.get("name") == "default"), None)
    return value if isinstance(value, str) else None


def _token_text(value: Any) -> str:
    return value.get("content", "") if isinstance(value, dict) else str(value)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators)


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)
