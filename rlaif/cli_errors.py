"""The failures every command reports as one clear line (exit status 2) instead of a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from judges.templates import TemplateError
from rlaif.config import ConfigError
from rlaif.generation import BackendError
from rlaif.labelled_data import LabelledDataError
from rlaif.merge import MergeError
from rlaif.model_server import ServerError
from rlaif.models import ModelError
from rlaif.prompt_sources import PromptSourceError
from rlaif.review_store import ReviewStoreError

F = TypeVar("F", bound=Callable[..., Any])
EXPECTED_ERRORS = (
    ConfigError,
    PromptSourceError,
    ModelError,
    BackendError,
    ServerError,
    TemplateError,
    LabelledDataError,
    ReviewStoreError,
    MergeError,
    FileNotFoundError,
)


def friendly_errors(command: F) -> F:
    """Print expected failures as one clear message (no traceback) and exit with status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
