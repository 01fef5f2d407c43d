"""Helpers of the review tests: synthetic queues, a fresh PostgreSQL database, a real review server process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.review_load import fresh_postgres_database  # noqa: F401 - the one helper, used by conftest
from rlaif.review.store import QueuedItem, ReviewStore
from rlaif.schema import Candidate, Judgment, Pair, PromptItem, ReviewItem

RLAIF = str(Path(sys.executable).parent / "rlaif")


def queue_entries(run_id: str, count: int, text: str = "answer") -> list[tuple[ReviewItem, Pair, Judgment]]:
    """`count` routed pairs with ok judgments (winner a, confidence 0.2) for a run."""
    entries = []
    for i in range(count):
        prompt = PromptItem(messages=[{"role": "user", "content": f"question {i}"}])
        a = Candidate(prompt_id=prompt.id, text=f"{text} A{i}", model="policy")
        b = Candidate(prompt_id=prompt.id, text=f"{text} B{i}", model="policy")
        pair = Pair(prompt=prompt, a=a, b=b)
        judgment = Judgment(
            pair_id=pair.id, winner="a", p_a=0.6, confidence=0.2, status="ok", judge_model="judge", template_hash="t"
        )
        reason = "audit" if i % 3 == 0 else "low_confidence"
        entries.append((ReviewItem(run_id=run_id, pair_id=pair.id, reason=reason), pair, judgment))
    return entries


def entry(
    run_id: str, question: str, first: str, second: str, finish_reasons: tuple[str | None, str | None] = (None, None)
) -> tuple[ReviewItem, Pair, Judgment]:
    """One routed pair of two given answers (a coin-flip judgment), for pages that show particular texts."""
    prompt = PromptItem(messages=[{"role": "user", "content": question}])
    pair = Pair(
        prompt=prompt,
        a=Candidate(prompt_id=prompt.id, text=first, model="p", finish_reason=finish_reasons[0]),
        b=Candidate(prompt_id=prompt.id, text=second, model="p", finish_reason=finish_reasons[1]),
    )
    judgment = Judgment(
        pair_id=pair.id, winner="a", p_a=0.5, confidence=0, status="ok", judge_model="j", template_hash="t"
    )
    return ReviewItem(run_id=run_id, pair_id=pair.id, reason="audit"), pair, judgment


def label_every_item(db_url: str, run_id: str, label_of: Callable[[QueuedItem], str]) -> Counter[str]:
    """Simulated people: reviewer alice claims each open item of a run and labels it `label_of(item)`; returns how
    many items were labelled for each routing reason."""
    given: Counter[str] = Counter()
    with ReviewStore.open(db_url) as store:
        while (item := store.claim_next(run_id, "alice")) is not None:
            store.submit(item.item.id, "alice", label_of(item), None)
            given[item.item.reason] += 1
    return given


def start_reviewing(page: Any, url: str, token: str, run_id: str, form: str = "#label-form") -> Any:
    """In a browser page: sign in on the run's page, press Start, and wait for the first item (its `form`)."""
    page.goto(f"{url}/runs/{run_id}")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_selector("#start-form")
    with page.expect_navigation():
        page.click("#start-form button")
    page.wait_for_selector(form)
    return page


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ReviewServer:
    """`rlaif review serve` as a real process on a free loopback port."""

    def __init__(self, db: str, *extra: str, port: int | None = None, prefect_api_url: str | None = None) -> None:
        self.db = db
        self.env = {"PREFECT_API_URL": prefect_api_url}  # no URL: the service emits no Prefect events
        self.extra = extra
        self.port = port or free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ReviewServer:
        self.process = subprocess.Popen(
            [RLAIF, "review", "serve", "--db", self.db, "--port", str(self.port), *self.extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={key: value for key, value in {**os.environ, **self.env}.items() if value is not None},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"review server exited: {self.process.stdout.read() if self.process.stdout else ''}")
            try:
                httpx.get(self.url + "/api/runs", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("review server did not start in 60 s")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ReviewServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
