"""Progress lines for long work, printed through whatever `say` the caller uses (CLI, Prefect logger)."""

from __future__ import annotations

import time
from collections.abc import Callable


def progress_printer(total: int, what: str, say: Callable[[str], None], every_s: float = 5.0) -> Callable[[int], None]:
    """A callback taking the count done so far; says `done/total what` at most every few seconds, and at the end."""
    last = float("-inf")

    def report(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done >= total or now - last >= every_s:
            last = now
            say(f"  {done}/{total} {what}")

    return report
