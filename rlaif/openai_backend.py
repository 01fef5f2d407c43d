"""Generation through any OpenAI-compatible endpoint: vLLM, OpenAI, SGLang, llama.cpp, `transformers serve`.

Retries are the openai client's own: jittered exponential backoff on 429 (honouring Retry-After up to
its cap), 408/409, 5xx, timeouts and dropped connections. On top of it this backend adds a limit on
requests in flight, round-robin over several base URLs (replicas), token accounting, and `n > 1`
emulated with distinct seeds for servers that ignore `n` (`transformers serve` does).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import openai

from rlaif.generation import (
    BackendError,
    Generation,
    GenerationRequest,
    Progress,
    RequestResult,
    TokenLogprob,
    TokenUsage,
)

NMode = Literal["auto", "native", "seeds"]


def redact_url(url: str) -> str:
    """The URL without user:password, for messages."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


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
    ) -> None:
        if not base_urls:
            raise ValueError("OpenAIBackend needs at least one base URL")
        self.model_name = model
        self.usage = TokenUsage()
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.n_mode = n_mode
        self.supports_prefill = continue_final_message
        # Local servers accept any key; the client insists on one.
        self._clients = [
            (
                redact_url(url),
                openai.AsyncOpenAI(
                    base_url=url, api_key=api_key or "unused", timeout=timeout_s, max_retries=max_retries
                ),
            )
            for url in base_urls
        ]
        self._next_client = itertools.cycle(self._clients)
        self._limit = asyncio.Semaphore(max_concurrency)

    async def generate(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> list[RequestResult]:
        done = 0

        async def one(request: GenerationRequest) -> RequestResult:
            nonlocal done
            try:
                return await self._generate_n(request)
            except BackendError as exc:
                self.usage.failed_requests += 1
                return exc
            finally:
                done += 1
                if progress:
                    progress(done)

        return list(await asyncio.gather(*(one(r) for r in requests)))

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
        url, client = next(self._next_client)
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
        if request.prefill and self.supports_prefill:
            kwargs["messages"].append({"role": "assistant", "content": request.prefill})
            kwargs["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        async with self._limit:
            self.usage.requests += 1
            try:
                response = await client.chat.completions.create(**kwargs)
            except openai.APITimeoutError:
                raise BackendError(
                    f"{url}: no answer within {self.timeout_s:g} s "
                    f"({self.max_retries + 1} attempts); is the server overloaded or hung?"
                ) from None
            except openai.APIConnectionError as exc:
                raise BackendError(
                    f"{url}: connection failed after {self.max_retries + 1} attempts ({_cause(exc)})"
                ) from None
            except openai.APIStatusError as exc:
                raise BackendError(f"{url}: HTTP {exc.status_code}: {_short(exc.message)}") from None
            except openai.OpenAIError as exc:
                raise BackendError(f"{url}: {type(exc).__name__}: {_short(str(exc))}") from None
        if response.usage:
            self.usage.add(response.usage.prompt_tokens, response.usage.completion_tokens)
        if not response.choices:
            raise BackendError(f"{url}: the response has no choices")
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

    async def aclose(self) -> None:
        for _, client in self._clients:
            await client.close()


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


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."
