"""The review service under load: reviewers labelling side by side against `rlaif review serve`.

    python benchmarks/review_load.py [--reviewers 50] [--seconds 60] [--items 20000] [--workers 1 2] [--db URL]

Each reviewer is a closed loop (ask for the next item, label it, again), so at most `--reviewers`
requests are in flight: the load is bounded. The service runs once per `--workers` count (its server
processes), each time on a new database: without --db a new database on the PostgreSQL server on
loopback (postgresql://root@127.0.0.1:5432), dropped afterwards. Prints and writes
benchmarks/results/review_load.json: per worker count, latency p50/p95/p99 per kind of request,
requests per second, errors by status, and labels lost, i.e. labels the service acknowledged (200) that
the database does not hold afterwards. A 503 (the database away for a moment) is retried after its Retry-After and
counted apart; it is not an error unless a test injected no fault.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.harness import free_port, provenance  # noqa: E402
from rlaif.review.store import ReviewStore  # noqa: E402
from rlaif.schema import Candidate, Judgment, Pair, PromptItem, ReviewItem  # noqa: E402

RLAIF = str(Path(sys.executable).parent / "rlaif")
POSTGRES_ADMIN = "postgresql://root@127.0.0.1:5432/postgres"
LABELS = ("a", "b", "tie", "both_bad")


@dataclass
class LoadRecord:
    """What the reviewers saw: latencies by request kind, statuses, and the labels acknowledged."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"next": [], "label": []})
    statuses: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    acknowledged: dict[str, tuple[str, str]] = field(default_factory=dict)  # item id -> (reviewer, label)
    unavailable: int = 0  # 503 answers, retried
    transport_errors: int = 0  # no answer at all (connection refused or dropped), retried
    gave_up: int = 0  # requests still unanswered (503 or no answer) when retrying time was up

    def summary(self, seconds: float) -> dict[str, Any]:
        requests = sum(len(values) for values in self.latencies.values())
        return {
            "requests": requests,
            "requests_per_s": round(requests / seconds, 1),
            "labels_acknowledged": len(self.acknowledged),
            "latency_ms": {kind: percentiles(values) for kind, values in self.latencies.items()},
            "statuses": dict(self.statuses),
            "errors": len(self.errors),
            "first_errors": self.errors[:5],
            "unavailable_503_retried": self.unavailable,
            "transport_errors_retried": self.transport_errors,
            "gave_up_after_retrying": self.gave_up,
        }


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {
        "p50": round(1000 * cuts[49], 2),
        "p95": round(1000 * cuts[94], 2),
        "p99": round(1000 * cuts[98], 2),
        "max": round(1000 * max(values), 2),
    }


RETRY_GRACE_S = 30.0  # past the run's deadline, how long an outage is still waited out


@dataclass
class Answer:
    """A response as the reviewer loop reads it: status, Retry-After (as sent), and the body."""

    status: int
    retry_after: str | None
    body: bytes


async def _request(
    client: aiohttp.ClientSession,
    record: LoadRecord,
    kind: str,
    method: str,
    url: str,
    give_up_at: float,
    **kwargs: Any,
) -> Answer | None:
    """One request, timed (sent and its body read); a 503 or a dropped connection is waited out and sent again
    until `give_up_at` (monotonic), then None: a service or database that never comes back ends the run instead of
    hanging it."""
    while True:
        if time.monotonic() > give_up_at:
            record.gave_up += 1
            return None
        started = time.monotonic()
        try:
            async with client.request(method, url, **kwargs) as response:
                answer = Answer(response.status, response.headers.get("Retry-After"), await response.read())
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            record.transport_errors += 1
            await asyncio.sleep(0.5)
            continue
        record.latencies[kind].append(time.monotonic() - started)
        record.statuses[f"{kind} {answer.status}"] += 1
        if answer.status == 503:
            record.unavailable += 1
            await asyncio.sleep(float(answer.retry_after or "1"))
            continue
        return answer


async def reviewer(base: str, token: str, run_id: str, deadline: float, record: LoadRecord) -> None:
    """One reviewer, on a connection of its own: next item, its label, again, until the deadline or the queue is
    empty. (aiohttp rather than httpx's async client: on the service's own machine the load generator takes a
    third of the CPU per request that httpx's does, leaving the rest to the service.)"""
    rng = random.Random(token)
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as client:
        while time.monotonic() < deadline:
            give_up_at = deadline + RETRY_GRACE_S
            answer = await _request(client, record, "next", "POST", f"{base}/api/runs/{run_id}/next", give_up_at)
            if answer is None or answer.status == 204:
                return
            if answer.status != 200:
                record.errors.append(f"next: HTTP {answer.status} {answer.body[:200].decode(errors='replace')}")
                continue
            item = json.loads(answer.body)["id"]
            label = rng.choice(LABELS)
            answer = await _request(
                client, record, "label", "POST", f"{base}/api/items/{item}/label", give_up_at, json={"label": label}
            )
            if answer is not None and answer.status == 200:
                record.acknowledged[item] = (token, label)
            elif answer is not None:
                record.errors.append(f"label: HTTP {answer.status} {answer.body[:200].decode(errors='replace')}")


async def run_load(
    base: str, tokens: list[str], run_id: str, seconds: float, during: Callable[[], None] | None = None
) -> LoadRecord:
    """All reviewers at once for `seconds`; `during`, if given, runs in a thread meanwhile (a fault to inject)."""
    record = LoadRecord()
    deadline = time.monotonic() + seconds
    work = [reviewer(base, token, run_id, deadline, record) for token in tokens]
    if during is not None:
        work.append(asyncio.to_thread(during))
    await asyncio.gather(*work)
    return record


def labels_lost(db_url: str, run_id: str, record: LoadRecord, names: dict[str, str]) -> int:
    """Acknowledged labels the database does not hold (by item, reviewer and label)."""
    with ReviewStore.open(db_url) as store:
        decisions = store.decisions(run_id)
    stored = {(d.item_id, reviewer, label) for d in decisions.values() for reviewer, label in d.labels}
    return sum(1 for item, (token, label) in record.acknowledged.items() if (item, names[token], label) not in stored)


def queue_entries(run_id: str, count: int) -> Iterator[tuple[ReviewItem, Pair, Judgment]]:
    """`count` routed pairs of short synthetic answers."""
    for i in range(count):
        prompt = PromptItem(messages=[{"role": "user", "content": f"Load question {i}: explain something."}])
        a = Candidate(prompt_id=prompt.id, text=f"Answer A to question {i}.", model="policy")
        b = Candidate(prompt_id=prompt.id, text=f"Answer B to question {i}.", model="policy")
        pair = Pair(prompt=prompt, a=a, b=b)
        judgment = Judgment(
            pair_id=pair.id, winner="a", p_a=0.55, confidence=0.1, status="ok", judge_model="judge", template_hash="t"
        )
        yield ReviewItem(run_id=run_id, pair_id=pair.id, reason="low_confidence"), pair, judgment


def prepare(db_url: str, run_id: str, items: int, reviewers: int) -> dict[str, str]:
    """Queue `items` items and add `reviewers` reviewers; returns token -> reviewer name."""
    with ReviewStore.open(db_url) as store:
        store.enqueue(run_id, queue_entries(run_id, items))
        return {store.add_reviewer(f"reviewer{i:02d}"): f"reviewer{i:02d}" for i in range(reviewers)}


@contextmanager
def review_service(db_url: str, port: int, workers: int = 1) -> Iterator[str]:
    """`rlaif review serve` as its own process (with `workers` server processes); yields its base URL."""
    process = subprocess.Popen(
        [RLAIF, "review", "serve", "--db", db_url, "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/api/runs", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the review service did not start") from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def fresh_postgres_database(prefix: str = "rlaif_load") -> Iterator[str]:
    """A new, empty database on the loopback PostgreSQL server (as root, trust auth); dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://root@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(db_url: str, reviewers: int, seconds: float, items: int, workers: int) -> dict[str, Any]:
    names = prepare(db_url, "load", items, reviewers)
    with review_service(db_url, free_port(), workers) as base:
        started = time.monotonic()
        record = asyncio.run(run_load(base, list(names), "load", seconds))
        elapsed = time.monotonic() - started
    return {
        "workers": workers,
        "reviewers": reviewers,
        "seconds": round(elapsed, 1),
        "items": items,
        **record.summary(elapsed),
        "labels_lost": labels_lost(db_url, "load", record, names),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviewers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes, one run each")
    parser.add_argument("--db", help="review database URL (default: a new database on the local PostgreSQL)")
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results" / "review_load.json")
    args = parser.parse_args()
    if args.db and len(args.workers) > 1:
        parser.error("--db takes one --workers count: each run needs a database of its own")
    runs = []
    for workers in args.workers:
        if args.db:
            runs.append(measure(args.db, args.reviewers, args.seconds, args.items, workers))
        else:
            with fresh_postgres_database() as db_url:
                runs.append(measure(db_url, args.reviewers, args.seconds, args.items, workers))
    result = {"runs": runs, "database": "postgresql" if not args.db else args.db.split(":")[0], **provenance()}
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
