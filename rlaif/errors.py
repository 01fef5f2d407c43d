"""The failures a user can fix: every command reports them as one clear line (exit status 2), no traceback.

Each module's own error class derives from `ExpectedError`, so the command line recognises them all without
importing the modules that define them (some of which, the review store's, cost a noticeable start-up)."""

from __future__ import annotations


class ExpectedError(Exception):
    """A failure whose message says what is wrong and what to do (bad input, a missing model, a refused
    request), as opposed to a bug."""
