"""Generation through any OpenAI-compatible endpoint: vLLM, OpenAI, SGLang, llama.cpp, `transformers serve`.

Retries are the openai client's own: jittered exponential backoff on 429 (honouring Retry-After up to
its cap), 408/409, 5xx, timeouts and dropped connections. On top of it this backend adds a limit on
requests in flight (per process, and optionally one shared by every worker: `shared_limit`), several
base URLs (replicas) with failover, token accounting, and `n > 1` emulated with distinct seeds for
servers that ignore `n` (`transformers serve` does).

Replicas: each request goes to the base URL with the fewest requests in flight (ties in turn), so a
slow or hanging replica gets less. A request that fails there for good (connection, timeout, 5xx, 429
or an answer that is not a completion, after the client's retries) is sent again to another replica it
has not tried; it fails only when every replica failed it. After `max_failures_in_row` such failures in a
row a base URL's circuit breaker opens: it gets no requests for `cool_down_s`, then one trial request
(half-open); if that answers, the replica is back in the rotation, if not, another cool-down. With
every base URL out, each request fails at once with EndpointDown, which stops the run instead of routing
every remaining pair to review as a failure.

Many prompts per request: with `prompts_per_request > 1` and the model's chat template, requests go
to the completions API as rendered text, greedy ones grouped `prompts_per_request` to a request (its
`prompt` is a list: vLLM and SGLang answer each). That removes the per-request cost of client and
server, which bounds a judge that asks one short question per request. `probe_completions` finds out
first what the server takes: a list, one prompt, or no completions API (`transformers serve`), and the
backend falls back to one prompt per request or to chat requests accordingly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import openai
from openai.types import Completion
from openai.types.chat import ChatCompletion

from rlaif.generation.chat_template import ChatTemplate
from rlaif.generation.protocol import (
    BackendError,
    EndpointDown,
    EndpointFailure,
    Generation,
    GenerationRequest,
    Progress,
    RequestResult,
    TokenLogprob,
    TokenUsage,
)
from rlaif.message_text import clip, redact_url

NMode = Literal["auto", "native", "seeds"]
CompletionsSupport = Literal["list", "single", "none"]  # what a server's completions API takes
R = TypeVar("R")


class CircuitBreaker:
    """The health of one base URL. Closed: in the rotation. Open after `threshold` failures in a row (0:
    never): no requests for `cool_down_s`; then half-open: one trial request goes through, whose answer
    closes the breaker (the replica is back) and whose failure opens it for another cool-down."""

    def __init__(self, threshold: int, cool_down_s: float = 30.0) -> None:
        self.threshold = threshold
        self.cool_down_s = cool_down_s
        self.failures_in_row = 0
        self.last_failure = ""
        self._opened_at: float | None = None  # monotonic time the breaker last opened; None: closed
        self._trial_out = False  # half-open, and its one trial request is in flight

    @property
    def open(self) -> bool:
        """Whether no request may go there now: cooling down, or its trial request not back yet."""
        if self._opened_at is None:
            return False
        return self._trial_out or time.monotonic() - self._opened_at < self.cool_down_s

    def let_through(self) -> None:
        """A request goes to this base URL now; when the breaker is half-open, it is the trial."""
        if self._opened_at is not None:
            self._trial_out = True

    def succeeded(self) -> None:
        self.failures_in_row = 0
        self._opened_at = None
        self._trial_out = False

    def failed(self, failure: EndpointFailure) -> None:
        self.failures_in_row += 1
        self.last_failure = str(failure)
        tripped = self.threshold > 0 and self.failures_in_row >= self.threshold
        if tripped or self._trial_out:  # opens now, or the trial failed: another cool-down
            self._opened_at = time.monotonic()
        self._trial_out = False


@dataclass(eq=False)
class _Endpoint:
    """One base URL (credentials taken out, for messages): its client, circuit breaker and requests in flight."""

    url: str
    client: openai.AsyncOpenAI
    breaker: CircuitBreaker
    position: int  # in base_urls: breaks ties between replicas with as many requests in flight
    in_flight: int = field(default=0)


SlotFactory = Callable[[], AbstractAsyncContextManager[object]]


class OpenAIBackend:
    """Chat completions against one or more OpenAI-compatible base URLs."""

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        n_mode: NMode = "auto",
        continue_final_message: bool = False,
        prompts_per_request: int = 1,
        chat_template: ChatTemplate | None = None,
        max_failures_in_row: int = 10,
        cool_down_s: float = 30.0,
        shared_slot: SlotFactory | None = None,
    ) -> None:
        """`shared_slot`: held around every request besides the per-process `max_concurrency`, for a limit
        shared with other processes (`rlaif.generation.shared_limit.SharedSlots.slot`)."""
        if not base_urls:
            raise ValueError("OpenAIBackend needs at least one base URL")
        self.model_name = model
        self.usage = TokenUsage()
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.n_mode = n_mode
        self.continue_final_message = continue_final_message
        self.supports_prefill = continue_final_message
        if prompts_per_request > 1 and chat_template is None:
            raise ValueError("prompts_per_request > 1 needs the model's chat template")
        self.prompts_per_request = prompts_per_request
        self.chat_template = chat_template
        self._api_key = api_key  # only to take it out of error messages (servers echo a wrong key)
        self.completions: CompletionsSupport = "none"  # until probe_completions finds out
        # Local servers accept any key; the client insists on one.
        self._endpoints = [
            _Endpoint(
                redact_url(url),
                openai.AsyncOpenAI(
                    base_url=url, api_key=api_key or "unused", timeout=timeout_s, max_retries=max_retries
                ),
                CircuitBreaker(max_failures_in_row, cool_down_s),
                position,
            )
            for position, url in enumerate(base_urls)
        ]
        self._turn = itertools.count()  # whose turn it is among replicas equally loaded
        self._limit = asyncio.Semaphore(max_concurrency)
        self._shared_slot: SlotFactory = shared_slot or contextlib.nullcontext

    def _choose_endpoint(self, tried: Sequence[_Endpoint]) -> _Endpoint | None:
        """The base URL not yet tried for this request, out of its cool-down, with the fewest requests in
        flight (equally loaded ones in turn); None when there is none."""
        ready = [e for e in self._endpoints if e not in tried and not e.breaker.open]
        if not ready:
            return None
        turn, count = next(self._turn), len(self._endpoints)
        return min(ready, key=lambda e: (e.in_flight, (e.position - turn) % count))

    def _none_answering(self) -> EndpointDown:
        details = "; ".join(
            f"{e.url}: {e.breaker.failures_in_row} requests in a row failed, the last with "
            f"{e.breaker.last_failure.removeprefix(e.url + ': ')}"
            for e in self._endpoints
        )
        return EndpointDown(
            f"stopped sending requests: no endpoint is answering ({details}). "
            "Finished shards are kept; rerun the same command once the endpoint is back."
        )

    async def probe_completions(self) -> CompletionsSupport:
        """Ask the server (once) whether its completions API takes a list of prompts, one prompt, or nothing.

        Called before judging when `prompts_per_request > 1`; what it finds decides how requests are sent
        (and whether a reply can be prefilled, which the judge reads from `supports_prefill`).
        """
        if self.prompts_per_request <= 1:
            return self.completions
        url, client = self._endpoints[0].url, self._endpoints[0].client
        probe = {"model": self.model_name, "max_tokens": 1, "temperature": 0.0}
        try:
            listed = await client.post("/completions", body={**probe, "prompt": ["1", "2"]}, cast_to=Completion)
            self.completions = "list" if len(listed.choices) == 2 else "single"
        except openai.APIStatusError as exc:
            if exc.status_code in (404, 405, 501):
                self.completions = "none"
            else:
                try:
                    await client.post("/completions", body={**probe, "prompt": "1"}, cast_to=Completion)
                    self.completions = "single"
                except openai.APIStatusError:
                    self.completions = "none"
        except openai.OpenAIError as exc:
            raise BackendError(self._without_key(f"{url}: the completions probe failed: {clip(str(exc))}")) from None
        self.supports_prefill = self.completions != "none" or self.continue_final_message
        return self.completions

    async def generate(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> list[RequestResult]:
        done = 0

        def finished(count: int) -> None:
            nonlocal done
            done += count
            if progress:
                progress(done)

        async def one(request: GenerationRequest) -> RequestResult:
            try:
                return await self._generate_n(request)
            except BackendError as exc:
                self.usage.failed_requests += 1
                return exc
            finally:
                finished(1)

        async def batch(indices: list[int]) -> list[RequestResult]:
            try:
                return [[generation] for generation in await self._complete_text([requests[i] for i in indices])]
            except BackendError as exc:
                self.usage.failed_requests += len(indices)
                return [exc] * len(indices)
            finally:
                finished(len(indices))

        groups = self._text_groups(requests)
        grouped = {index for group in groups for index in group}
        singles = [i for i in range(len(requests)) if i not in grouped]
        answers = await asyncio.gather(*(batch(g) for g in groups), *(one(requests[i]) for i in singles))
        by_index: dict[int, RequestResult] = dict(zip(singles, answers[len(groups) :], strict=True))
        for group, answered in zip(groups, answers[: len(groups)], strict=True):
            by_index.update(zip(group, answered, strict=True))
        down = next((r for r in by_index.values() if isinstance(r, EndpointDown)), None)
        if down is not None:  # not a failure of some requests to report, but the end of the run
            raise down
        return [by_index[i] for i in range(len(requests))]

    def _text_groups(self, requests: Sequence[GenerationRequest]) -> list[list[int]]:
        """The requests that go to the completions API as text, grouped: greedy ones with the same settings
        share a request (up to prompts_per_request); sampled ones go one each, with their own seed."""
        if self.completions == "none":
            return []
        size = self.prompts_per_request if self.completions == "list" else 1
        by_settings: dict[tuple[Any, ...], list[int]] = {}
        groups: list[list[int]] = []
        for index, request in enumerate(requests):
            if request.n != 1 or request.json_schema is not None:
                continue
            if request.temperature > 0:
                groups.append([index])
                continue
            key = (request.max_tokens, request.top_logprobs, request.stop)
            members = by_settings.setdefault(key, [])
            members.append(index)
            if len(members) == size:
                groups.append(members)
                by_settings[key] = []
        return groups + [members for members in by_settings.values() if members]

    async def _generate_n(self, request: GenerationRequest) -> list[Generation]:
        """n answers, asked natively, by seeds, or natively with the shortfall filled by seeds."""
        base_seed = request.seed if request.seed is not None else random.randrange(2**31)
        if self.n_mode == "seeds" and request.n > 1:
            batches = await asyncio.gather(
                *(self._complete(request, n=1, seed=base_seed + i) for i in range(request.n))
            )
            return [g for batch in batches for g in batch]
        generations = await self._complete(request, n=request.n, seed=base_seed)
        if self.n_mode == "auto" and len(generations) < request.n:
            missing = range(len(generations), request.n)
            extra = await asyncio.gather(*(self._complete(request, n=1, seed=base_seed + i) for i in missing))
            generations += [g for batch in extra for g in batch]
        return generations

    async def _complete(self, request: GenerationRequest, n: int, seed: int) -> list[Generation]:
        kwargs: dict[str, Any] = {
            "model": self.model_name,
            "messages": list(request.messages),
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "seed": seed,
        }
        if n > 1:
            kwargs["n"] = n
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": request.json_schema, "strict": True},
            }
        if request.top_logprobs is not None:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = request.top_logprobs
        if request.prefill and self.continue_final_message:
            kwargs["messages"].append({"role": "assistant", "content": request.prefill})
            kwargs.update(continue_final_message=True, add_generation_prompt=False)
        response = await self._send("/chat/completions", kwargs, ChatCompletion)
        if response.usage:
            self.usage.add(response.usage.prompt_tokens, response.usage.completion_tokens)
        per_choice_tokens = response.usage.completion_tokens if response.usage and len(response.choices) == 1 else None
        return [
            Generation(
                text=choice.message.content or "",
                finish_reason=choice.finish_reason,
                completion_tokens=per_choice_tokens,
                logprobs=_logprobs(choice),
            )
            for choice in response.choices
        ]

    async def _complete_text(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """One completions request for requests of the same settings: their prompts rendered with the chat
        template (and their prefills) as a list; one generation each, in order."""
        assert self.chat_template is not None
        first = requests[0]
        prompts = [self.chat_template.render(r.messages, r.prefill) for r in requests]
        body: dict[str, Any] = {
            "model": self.model_name,
            "prompt": prompts if len(prompts) > 1 else prompts[0],
            "temperature": first.temperature,
            "top_p": first.top_p,
            "max_tokens": first.max_tokens,
        }
        if first.seed is not None and len(requests) == 1:
            body["seed"] = first.seed
        if first.stop:
            body["stop"] = list(first.stop)
        if first.top_logprobs is not None:
            body["logprobs"] = first.top_logprobs
        response = await self._send("/completions", body, Completion)
        if response.usage:
            self.usage.add(response.usage.prompt_tokens, response.usage.completion_tokens)
        choices = sorted(response.choices, key=lambda c: c.index)
        if len(choices) != len(prompts):
            raise BackendError(f"{len(prompts)} prompts sent, {len(choices)} completions returned")
        return [
            Generation(text=choice.text, finish_reason=choice.finish_reason, logprobs=_text_logprobs(choice))
            for choice in choices
        ]

    async def _send(self, path: str, body: dict[str, Any], cast_to: type[R]) -> R:
        """POST a request through the client's generic `post`: the same retries, timeouts and parsed response
        as `chat.completions.create`, without re-walking every message through its type transforms (about a
        quarter of the client's CPU per request; the body is plain JSON already).

        The request holds a slot of the process's limit (and of the shared one) while it is out. It goes to
        the least busy replica; a failure of the endpoint (not of this request: those are raised at once)
        counts towards that replica's circuit breaker and sends the request to the next replica not yet
        tried. The client retries 429 (honouring Retry-After), 5xx, timeouts and dropped connections; an
        answer that is not a completion (cut short, or some other JSON) is asked again here, as often.
        Failures come back as BackendError naming the server.
        """
        failures: list[EndpointFailure] = []
        async with self._shared_slot(), self._limit:  # the shared slot first: a finished request hands it on
            tried: list[_Endpoint] = []
            while (endpoint := self._choose_endpoint(tried)) is not None:
                tried.append(endpoint)
                self.usage.requests += 1
                endpoint.breaker.let_through()
                endpoint.in_flight += 1
                try:
                    response = await self._post_checked(endpoint, path, body, cast_to)
                except EndpointFailure as error:
                    failures.append(EndpointFailure(self._without_key(str(error))))
                    endpoint.breaker.failed(failures[-1])
                    continue
                except BackendError as error:
                    raise type(error)(self._without_key(str(error))) from None
                finally:
                    endpoint.in_flight -= 1
                endpoint.breaker.succeeded()
                return response
        if not failures:
            raise self._none_answering()
        if len(failures) == 1:
            raise failures[0]
        raise EndpointFailure(f"every replica failed this request: {'; '.join(map(str, failures))}")

    def _without_key(self, message: str) -> str:
        """The message with the API key taken out: a server may quote the key it refused."""
        return message.replace(self._api_key, "[API key]") if self._api_key else message

    async def _post_checked(self, endpoint: _Endpoint, path: str, body: dict[str, Any], cast_to: type[R]) -> R:
        url, attempts = endpoint.url, self.max_retries + 1
        for attempt in range(attempts):
            try:
                response = await endpoint.client.post(path, body=body, cast_to=cast_to)
            except openai.APITimeoutError:
                raise EndpointFailure(
                    f"{url}: no answer within {self.timeout_s:g} s ({attempts} attempts); "
                    "is the server overloaded or hung?"
                ) from None
            except openai.APIConnectionError as exc:
                raise EndpointFailure(f"{url}: connection failed after {attempts} attempts ({_cause(exc)})") from None
            except openai.APIStatusError as exc:
                said = exc.message.removeprefix(f"Error code: {exc.status_code} - ")  # the client's own prefix
                message = f"{url}: HTTP {exc.status_code}: {clip(said)}"
                if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                    raise EndpointFailure(f"{message} ({attempts} attempts)") from None
                raise BackendError(message) from None
            except openai.OpenAIError as exc:
                raise BackendError(f"{url}: {type(exc).__name__}: {clip(str(exc))}") from None
            except ValueError as exc:  # the body is not JSON: the answer was cut short
                problem = f"the answer is not valid JSON ({clip(str(exc), 80)})"
            else:
                if isinstance(getattr(response, "choices", None), list) and response.choices:  # type: ignore[attr-defined]
                    return response
                problem = "the answer is not a completion (it has no choices)"
            if attempt + 1 < attempts:
                await asyncio.sleep(min(8.0, 0.5 * 2**attempt) * random.uniform(0.75, 1.0))
        raise EndpointFailure(f"{url}: {problem} ({attempts} attempts)")

    async def aclose(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.client.close()


def _text_logprobs(choice: Any) -> tuple[TokenLogprob, ...] | None:
    """The legacy completions logprobs (parallel lists) as TokenLogprobs."""
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is None or not logprobs.tokens:
        return None
    tops = logprobs.top_logprobs or [{}] * len(logprobs.tokens)
    return tuple(
        TokenLogprob(token=token, logprob=logprob if logprob is not None else float("-inf"), top=dict(top or {}))
        for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs or [], tops, strict=False)
    )


def _logprobs(choice: Any) -> tuple[TokenLogprob, ...] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return tuple(
        TokenLogprob(
            token=item.token,
            logprob=item.logprob,
            top={alt.token: alt.logprob for alt in (item.top_logprobs or [])},
        )
        for item in content
    )


def _cause(exc: BaseException) -> str:
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    return f"{type(root).__name__}: {root}" if str(root) else type(root).__name__
