"""The review service under load and under database faults: no error, no acknowledged label lost.

Reviewers are closed loops of real HTTP requests against `rlaif review serve` processes
(`benchmarks/review_load.py`). Faults: the PostgreSQL server crashes (stopped with `-m immediate`)
and comes back while reviewers work; a SQLite review database is locked by another writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from benchmarks.review_load import fresh_postgres_database, labels_lost, prepare, review_service, run_load
from tests.reliability.private_postgres import PrivatePostgres
from tests.review_fixtures import free_port


def load(db_url: str, reviewers: int, seconds: float, items: int, during=None, figures=None, check="") -> dict:
    names = prepare(db_url, "load", items, reviewers)
    with review_service(db_url, free_port()) as base:
        started = time.monotonic()
        record = asyncio.run(run_load(base, list(names), "load", seconds, during))
        summary = record.summary(time.monotonic() - started)
    summary["labels_lost"] = labels_lost(db_url, "load", record, names)
    print(summary)
    if figures is not None:
        figures[check] = {"reviewers": reviewers, "seconds": seconds, **summary}
    return summary


def test_ten_reviewers_on_postgresql_for_five_seconds(figures):
    with fresh_postgres_database() as db_url:
        summary = load(db_url, reviewers=10, seconds=5, items=3000, figures=figures, check="review_10_reviewers")
    assert summary["errors"] == 0 and summary["labels_lost"] == 0
    assert summary["labels_acknowledged"] > 50 and summary["unavailable_503_retried"] == 0


@pytest.mark.long
def test_long_fifty_reviewers_on_postgresql_for_sixty_seconds(figures):
    with fresh_postgres_database() as db_url:
        summary = load(db_url, reviewers=50, seconds=60, items=30000, figures=figures, check="review_load_50")
    assert summary["errors"] == 0 and summary["labels_lost"] == 0 and summary["unavailable_503_retried"] == 0


def test_postgresql_crashing_and_restarting_mid_review_loses_no_acknowledged_label(figures):
    with PrivatePostgres() as postgres:
        restarted_at: list[float] = []

        def crash_and_come_back() -> None:
            time.sleep(2.0)
            postgres.outage(seconds=2.0)  # connections die; new ones are refused until it is back
            restarted_at.append(time.monotonic())

        summary = load(
            postgres.url, 8, 8, 3000, during=crash_and_come_back, figures=figures, check="postgresql_crash_2s"
        )
    assert restarted_at, "the database was not restarted"
    assert summary["unavailable_503_retried"] + summary["transport_errors_retried"] > 0  # the outage was felt
    assert summary["errors"] == 0  # answered 503 while it was away, never 500
    assert summary["labels_lost"] == 0
    assert summary["labels_acknowledged"] > 50  # and the service went on after it came back


def test_a_sqlite_database_locked_by_another_writer_makes_reviewers_wait_not_fail(tmp_path, figures):
    path = tmp_path / "review.db"

    def hold_the_write_lock() -> None:
        time.sleep(1.5)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # another process's writer, holding the database for 3 s
        time.sleep(3.0)
        other.execute("COMMIT")
        other.close()

    summary = load(
        f"sqlite:///{path}", 6, 7, 2000, during=hold_the_write_lock, figures=figures, check="sqlite_locked_3s"
    )
    assert summary["errors"] == 0 and summary["labels_lost"] == 0
    assert summary["latency_ms"]["label"]["max"] >= 2500 or summary["latency_ms"]["next"]["max"] >= 2500


def test_a_service_that_never_comes_back_ends_the_load_run_instead_of_hanging_it(monkeypatch):
    """Every answer is 503 (the scripted server stands in for a review service whose database never returns,
    which cannot be arranged in bounded time otherwise): reviewers retry until the deadline and its grace, then
    stop, counted as given up."""
    import benchmarks.review_load as review_load
    from tests.scripted_openai_server import Action, ScriptedOpenAIServer

    monkeypatch.setattr(review_load, "RETRY_GRACE_S", 1.0)
    script = [Action(status=503, headers={"Retry-After": "0.2"}) for _ in range(1000)]
    with ScriptedOpenAIServer(script) as server:
        started = time.monotonic()
        record = asyncio.run(run_load(server.base_url, ["t1", "t2"], "load", seconds=0.5))
    assert time.monotonic() - started < 10
    assert record.gave_up == 2 and record.unavailable > 2 and not record.acknowledged and not record.errors
