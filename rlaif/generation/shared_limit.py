"""A limit on requests to one endpoint shared by every process that sends to it: a Prefect global
concurrency limit, so that ten workers together keep the endpoint's limit instead of ten times it.

`max_concurrency` of a model section limits one process; `shared_limit` adds a limit held on the Prefect
server that every worker, flow run and command pointed at that server draws from. Every request in flight
holds one of its slots. Prefect leases the slots: those of a worker that dies come back when their lease
runs out (LEASE_S) instead of being lost.

Taking a slot from Prefect for each request costs more than many requests: Prefect's `concurrency()`
takes slots one at a time per process and, when the limit is full, waits as long as the server suggests
(seconds, from the slots' average occupancy): 120 requests of 50 ms from three workers under a limit of 4
took 24 s here that way, against 1.9 s now. So a process keeps the slots it took and passes them from one
of its requests to the next (`SharedSlots`); it gives a slot back once none of its requests has wanted it
for LINGER_S, and after HOLD_S of use even when they do, so that other workers get their turn.

With `requests_per_s`, every request also takes a token of a shared rate: a Prefect limit of that name
plus `-rate` whose slots decay at that rate (`SharedRate`). Taking one token from Prefect per request gave
2.4 requests/s for 20 configured (Prefect's client waits as long as the server suggests, one caller at a
time), so a process takes a quarter of a second's worth of tokens at once and hands them to its requests.

Prefect is imported only when a model has a shared limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from uuid import UUID

import httpx

from rlaif.config import SharedLimitSection

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

LEASE_S = 60.0  # the shortest lease Prefect's server grants: a dead worker's slots are free again within it
HOLD_S = 5.0  # a process gives a slot back after this long, for other workers waiting for one
LINGER_S = 0.5  # a slot no request of this process wants is given back after this long
POLL_S = 0.5  # while the limit is full, a process asks again within this long (one question at a time)


@dataclass(eq=False)
class _Slot:
    """One slot this process holds: its keeper task renews the lease until `give_back` is set."""

    give_back: asyncio.Event = field(default_factory=asyncio.Event)
    granted: bool = False  # Prefect granted it: the keeper releases it once it is given back
    asking: bool = False  # a request for it is on its way: Prefect may have granted it already
    taken_at: float = field(default_factory=time.monotonic)


class SharedRate:
    """This process's tokens of a shared rate limit, taken from Prefect a few at a time (see the module's
    docstring); a token is used up by one request, and Prefect's slots decay at the configured rate."""

    def __init__(self, name: str, requests_per_s: float, client: PrefectClient) -> None:
        self.name = name
        self._batch = max(1, math.ceil(requests_per_s / 4))  # a quarter of a second's worth
        self._decayed_s = self._batch / requests_per_s  # how long a batch's slots take to decay
        self._client = client
        self._tokens = 0
        self._refilling = asyncio.Lock()  # one question to Prefect at a time

    async def take(self) -> None:
        """Wait for a token of the rate, then use it."""
        async with self._refilling:
            while self._tokens == 0:
                try:
                    await self._client.increment_concurrency_slots(
                        names=[self.name], slots=self._batch, mode="rate_limit"
                    )
                except httpx.HTTPStatusError as error:  # full: ask again once about a batch has decayed
                    await asyncio.sleep(min(_wait_when_full(error), self._decayed_s * random.uniform(0.5, 1.0)))
                    continue
                self._tokens = self._batch
            self._tokens -= 1


class SharedSlots:
    """This process's slots of a shared limit, passed between its requests (see the module's docstring).

    It talks to Prefect's API through the client's lease calls directly: Prefect's `concurrency()` context
    manager waits as long as the server suggests, one caller at a time, and logs an error for each refusal
    when told not to wait.
    """

    def __init__(
        self, limit: SharedLimitSection, most: int, client: PrefectClient, rate: SharedRate | None = None
    ) -> None:
        self.limit = limit
        self._rate = rate
        self._most = most  # slots this process holds at most (its max_concurrency)
        self._client = client
        self._waiting: deque[asyncio.Future[_Slot]] = deque()
        self._idle: list[_Slot] = []  # held, between two requests
        self._keepers: dict[asyncio.Task[None], _Slot] = {}
        self._taking = 0  # keepers still asking Prefect for their slot

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for one request (after a token of the shared rate, when there is one)."""
        if self._rate is not None:
            await self._rate.take()
        held = await self._take()
        try:
            yield
        finally:
            self._pass_on(held)

    async def _take(self) -> _Slot:
        if self._idle:
            return self._idle.pop()
        waiter: asyncio.Future[_Slot] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._keep_enough()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted as it was cancelled: pass it on
                self._pass_on(waiter.result())
            raise

    def _keep_enough(self) -> None:
        """Start keepers for the requests waiting, up to the slots this process may hold."""
        while self._taking < len(self._waiting) and len(self._keepers) < self._most:
            self._taking += 1
            held = _Slot()
            task = asyncio.get_running_loop().create_task(self._keep(held))
            self._keepers[task] = held
            task.add_done_callback(self._keeper_done)

    def _keeper_done(self, task: asyncio.Task[None]) -> None:
        del self._keepers[task]
        if not task.cancelled():
            self._keep_enough()  # a keeper gave its slot back: the requests still waiting may need another

    async def _keep(self, held: _Slot) -> None:
        """Take one slot from Prefect (asking again while the limit is full, as long as requests of this
        process wait), pass it to a request, and renew its lease until the slot is given back."""
        try:
            while any(not waiter.done() for waiter in self._waiting):
                held.asking = True
                try:
                    response = await self._client.increment_concurrency_slots_with_lease(
                        names=[self.limit.name], slots=1, mode="concurrency", lease_duration=LEASE_S
                    )
                except httpx.HTTPStatusError as error:
                    held.asking = False
                    await asyncio.sleep(_wait_when_full(error))
                    continue
                held.granted = True
                self._taking -= 1
                lease = UUID(response.json()["lease_id"])
                try:
                    held.taken_at = time.monotonic()
                    self._pass_on(held)
                    while not held.give_back.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(held.give_back.wait(), LEASE_S / 3)
                        if not held.give_back.is_set():  # a long request: keep the slot
                            await self._client.renew_concurrency_lease(lease, LEASE_S)
                finally:
                    await asyncio.shield(self._client.release_concurrency_slots_with_lease(lease))
                return
        except Exception as error:  # Prefect refused or is unreachable: the requests waiting fail with its reason
            while self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
            raise
        finally:
            if not held.granted:
                self._taking -= 1

    def _pass_on(self, held: _Slot) -> None:
        """A slot a request is done with (or a new one): to the next waiting request, else back to Prefect."""
        if time.monotonic() - held.taken_at >= HOLD_S:
            held.give_back.set()  # its turn is over; a new keeper asks Prefect for the requests waiting
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(held)
                return
        self._idle.append(held)  # for a request about to ask; given back if none does within LINGER_S
        asyncio.get_running_loop().call_later(LINGER_S, self._linger_over, held)

    def _linger_over(self, held: _Slot) -> None:
        if held in self._idle:
            self._idle.remove(held)
            held.give_back.set()

    async def aclose(self) -> None:
        """Give every slot back to Prefect: the keepers holding one release it, and so do those whose request for
        one is on its way (cancelled, they would leave a granted slot taken until its lease ran out); the others
        stop asking."""
        for waiter in self._waiting:
            waiter.cancel()
        for task, held in list(self._keepers.items()):
            held.give_back.set()
            if not held.granted and not held.asking:
                task.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)


def _wait_when_full(error: httpx.HTTPStatusError) -> float:
    """How long to wait before asking again when Prefect refused because the limit is full (HTTP 423);
    any other refusal is raised. Prefect's own client waits as long as the server suggests (up to 30 s,
    from the slots' average occupancy); a model request takes far less, so this asks again within POLL_S."""
    if error.response.status_code != 423:
        raise error
    suggested = float(error.response.headers.get("Retry-After", POLL_S))
    return min(suggested, POLL_S) * random.uniform(0.5, 1.0)


@contextlib.asynccontextmanager
async def open_shared_limit(
    limit: SharedLimitSection, most: int, say: Callable[[str], None]
) -> AsyncIterator[SharedSlots]:
    """Create or update the limit on the Prefect server to match the config, and hold this process's slots
    of it until the block ends (`most`: how many it may hold, its own max_concurrency)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    async def upsert(name: str, most: int, decay: float | None = None) -> None:
        for attempt in range(3):
            try:
                await client.upsert_global_concurrency_limit_by_name(name, most, slot_decay_per_second=decay)
                return
            except (ObjectAlreadyExists, httpx.HTTPStatusError):
                # Another worker created it between this one's read and create (Prefect's SQLite server then
                # answers 500, not 409): read it again and update it.
                if attempt == 2:
                    raise
                await asyncio.sleep(random.uniform(0.05, 0.2))

    async with get_client() as client:
        await upsert(limit.name, limit.max_concurrency)
        say(f"shared limit {limit.name!r}: at most {limit.max_concurrency} requests in flight over every worker")
        rate = None
        if limit.requests_per_s is not None:
            name = f"{limit.name}-rate"
            await upsert(name, max(1, round(limit.requests_per_s)), limit.requests_per_s)  # a second's worth
            say(f"shared rate {name!r}: at most {limit.requests_per_s:g} requests per second over every worker")
            rate = SharedRate(name, limit.requests_per_s, client)
        slots = SharedSlots(limit, most, client, rate)
        try:
            yield slots
        finally:
            await slots.aclose()
