"""Fixtures of the reliability suite. Its long variants are marked `long` (see README: Reliability)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "reliability.json"


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """What the reliability checks measured, by check (each test adds its own). A session that ran the long
    variant (`make reliability`) writes them to benchmarks/results/reliability.json with the machine, versions,
    date and command, and how many tests ran and failed: the README's Reliability table comes from that file."""
    recorded: dict[str, Any] = {}
    yield recorded
    session = request.session
    if not recorded or not any(item.get_closest_marker("long") for item in session.items):
        return
    from benchmarks.harness import provenance, write_results

    write_results(
        RESULTS,
        {
            **provenance(),
            "command": 'make reliability (python -m pytest tests/reliability -m "long or not long" -s)',
            "tests": {"collected": len(session.items), "failed": session.testsfailed},
            "tests_by_module": dict(Counter(item.module.__name__.rsplit(".", 1)[-1] for item in session.items)),
            "figures": recorded,
        },
    )
