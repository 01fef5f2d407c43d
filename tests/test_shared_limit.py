"""A limit on one endpoint shared by every worker (a Prefect global concurrency limit) holds across
processes, and is used: the workers together keep it about full.

The endpoint is a fake model server in a process of its own (tests/fake_server_process.py, a stand-in for
a model server) that records the most requests it ever had in flight; the workers are separate processes
that open the model from its config section, as a flow's worker does, and share the test session's
Prefect server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx

from rlaif.config import ModelSection
from tests.fake_server_process import fake_servers

WORKER = """
import asyncio, json, sys
from rlaif.config import ModelSection
from rlaif.generation.factory import open_backend
from rlaif.generation.protocol import GenerationRequest

async def main():
    section = ModelSection.model_validate(json.loads(sys.argv[1]))
    async with open_backend(section, where="judge", say=print) as backend:
        asked = [GenerationRequest(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=4) for i in range(40)]
        results = await backend.generate(asked)
    print("failed", sum(isinstance(r, Exception) for r in results))

asyncio.run(main())
"""


def section(base_url: str, **shared_limit: object) -> ModelSection:
    return ModelSection(
        backend="openai", model="m", base_urls=[base_url], max_concurrency=8, shared_limit=shared_limit or None
    )


def three_workers(limited: ModelSection) -> list[str]:
    """Three worker processes sending 40 requests each through the model section; their output, once each
    has ended with every request answered."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, limited.model_dump_json()],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [worker.communicate(timeout=240)[0] for worker in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0 and "failed 0" in output, output[-2000:]
    return outputs


def test_three_workers_together_keep_a_limit_of_four(tmp_path, prefect_server):
    with fake_servers(tmp_path, 50) as (server,):
        limited = section(f"{server.url}/v1", name="fake-endpoint", max_concurrency=4)
        outputs = three_workers(limited)
        seen = server.stats()
    assert "at most 4 requests in flight over every worker" in outputs[0]
    assert seen["requests"] == 3 * 40
    # Each worker alone may have 8 in flight; together they never had more than the shared 4, and kept it
    # about full (slots passed between a worker's requests, not asked of Prefect for each).
    assert seen["max_in_flight"] <= 4 and seen["mean_in_flight"] >= 2, seen
    limit = httpx.get(f"{prefect_server}/v2/concurrency_limits/fake-endpoint").json()
    assert limit["limit"] == 4 and limit["active_slots"] == 0  # every slot given back


def test_three_workers_together_keep_a_shared_rate(tmp_path, prefect_server):
    """requests_per_s: 20 a second over the three workers (bursts of one second's worth): their 120 requests,
    which the concurrency limit alone lets through in about 2 s, take at least 5 s at the server (shown
    failing without the rate: 1.9 s)."""
    with fake_servers(tmp_path, 50) as (server,):
        limited = section(f"{server.url}/v1", name="rated-endpoint", max_concurrency=4, requests_per_s=20)
        outputs = three_workers(limited)
        seen = server.stats()
    assert "at most 20 requests per second over every worker" in outputs[0]
    assert seen["requests"] == 3 * 40 and seen["max_in_flight"] <= 4
    # Never faster than the rate: (120 - a burst of 20) / 20 per s = 5 s at least. No upper bound: slower
    # is the test machine's, not the rate's (Prefect answers each worker's request for tokens in turn, usually
    # in 17-30 s; on a loaded 2-core CI machine this process's SQLite Prefect server answered "database is
    # locked" and Prefect's client retried with backoff: 136.7 s).
    assert seen["active_window_s"] >= 5.0, seen
    limit = httpx.get(f"{prefect_server}/v2/concurrency_limits/rated-endpoint-rate").json()
    assert limit["limit"] == 20 and limit["slot_decay_per_second"] == 20


class AnswersLate:
    """Prefect's client whose answer to a request for a slot arrives half a second after the server granted it
    (a slow network): the server holds the slot while this process does not yet know its lease."""

    def __init__(self, client: object) -> None:
        self._client = client

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    async def increment_concurrency_slots_with_lease(self, **asked: object) -> object:
        response = await self._client.increment_concurrency_slots_with_lease(**asked)
        await asyncio.sleep(0.5)
        return response


def test_a_slot_granted_while_the_process_closes_is_given_back(prefect_server):
    """A worker that ends while its request for a slot is on its way gives that slot back at once, instead of
    leaving it taken until its lease runs out (a minute of the endpoint's capacity lost)."""
    from prefect.client.orchestration import get_client

    from rlaif.config import SharedLimitSection
    from rlaif.generation.shared_limit import SharedSlots

    async def close_while_asking() -> dict:
        async with get_client() as client:
            await client.upsert_global_concurrency_limit_by_name("closing-endpoint", 2)
            slots = SharedSlots(SharedLimitSection(name="closing-endpoint", max_concurrency=2), 2, AnswersLate(client))

            async def one_request() -> None:
                async with slots.slot():
                    pass

            request = asyncio.create_task(one_request())
            await asyncio.sleep(0.2)  # the server has granted the slot; its answer is on the way
            request.cancel()  # the run ends: its requests are cancelled and the slots closed
            await slots.aclose()
            return (await client.read_global_concurrency_limit_by_name("closing-endpoint")).model_dump()

    limit = asyncio.run(close_while_asking())
    assert limit["active_slots"] == 0, limit
