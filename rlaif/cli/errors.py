"""The failures every command reports as one clear line (exit status 2) instead of a traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from rlaif.errors import ExpectedError

F = TypeVar("F", bound=Callable[..., Any])
EXPECTED_ERRORS = (ExpectedError, FileNotFoundError)


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


class ExpectedErrorsWithoutTraceback(logging.Formatter):
    """Log lines of expected failures without their traceback: Prefect logs a failed task's and flow's
    exception with one each, and the command ends with the failure's own one-line message anyway. Other
    handlers (the Prefect UI's log) keep the traceback; `--verbose` shows it here too."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and isinstance(record.exc_info[1], EXPECTED_ERRORS):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)
