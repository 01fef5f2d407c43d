"""Progress lines: the first and last always, the ones between at most every few seconds."""

from __future__ import annotations

from rlaif.progress import progress_printer


def test_progress_is_throttled_but_always_reports_the_end():
    lines: list[str] = []
    report = progress_printer(1000, "prompts sampled", lines.append, every_s=3600)
    for done in range(1, 1001):
        report(done)
    assert lines == ["  1/1000 prompts sampled", "  1000/1000 prompts sampled"]
