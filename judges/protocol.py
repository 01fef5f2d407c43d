"""The one protocol every judge follows: pairs in, one Judgment per pair out, failures included."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from rlaif.generation.protocol import TokenUsage
from rlaif.schema import Judgment, Pair


class Judge(Protocol):
    name: str  # the judge's model as the config names it; stored on each judgment
    template_hash: str  # identifies the prompt (or scoring setup); stored on each judgment

    async def judge(self, pairs: Sequence[Pair]) -> list[Judgment]:
        """One judgment per pair, in order. A pair that could not be judged gets a failure status."""
        ...

    def usage(self) -> TokenUsage:
        """Tokens and requests spent so far."""
        ...
