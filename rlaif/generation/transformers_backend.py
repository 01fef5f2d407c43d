"""In-process generation with transformers: batched, with true token log-probabilities on request.

The CPU default. Requests with the same sampling settings run in batches of `batch_size` prompts,
padded on the left (after the opening they share); each batch runs in a worker thread so the event loop
stays responsive.
Log-probabilities come from the model's raw logits (before temperature or top-p), so they are the
model's own probabilities whatever the sampling settings. Sampling uses `rlaif.generation.nucleus_sampling`.

Work shared between rows runs once, and its key/value cache is copied to the rows that share it: the
opening every prompt of a batch shares (a judge's system prompt and instructions, a chat template's
default system prompt) runs once per batch, and with n answers per prompt each prompt runs once
(transformers' own `num_return_sequences` runs it n times).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from rlaif.generation.protocol import (
    BackendError,
    Generation,
    GenerationRequest,
    Progress,
    RequestResult,
    TokenLogprob,
    TokenUsage,
)

SHARED_OPENING_MIN_TOKENS = 16  # a shorter shared opening is not worth its own model call


class TransformersBackend:
    """A causal LM loaded in this process."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", batch_size: int = 8) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_name = model
        self.usage = TokenUsage()
        self.batch_size = batch_size
        self.supports_prefill = True
        self.shared_opening_min_tokens = SHARED_OPENING_MIN_TOKENS  # benchmarks set it past any prompt to compare
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dtype == "auto":
            torch_dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device)
        except OSError as exc:
            raise BackendError(f"cannot load model {model}: {exc}") from None
        self.model.eval()
        # the key/value cache argument: `cache` in newer transformers, `past_key_values` before
        self._cache_keyword = (
            "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._lock = threading.Lock()  # one generation at a time on the shared model

    async def generate(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> list[RequestResult]:
        return await asyncio.to_thread(self._generate_all, list(requests), progress)

    def _generate_all(self, requests: list[GenerationRequest], progress: Progress | None) -> list[RequestResult]:
        results: list[RequestResult | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            key = (
                request.n,
                request.temperature,
                request.top_p,
                request.max_tokens,
                request.top_logprobs,
                request.prefill is not None,
                request.stop,
            )
            groups[key].append(index)
        done = 0
        for indices in groups.values():
            # Similar lengths share a batch: less padding, less wasted compute.
            indices.sort(key=lambda i: sum(len(m["content"]) for m in requests[i].messages))
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                try:
                    with self._lock:
                        outputs = self._generate_batch([requests[i] for i in batch])
                except (RuntimeError, ValueError) as exc:  # e.g. out of memory, a template that fails
                    error = BackendError(f"{self.model_name}: generation failed: {exc}")
                    outputs = [error] * len(batch)
                    self.usage.failed_requests += len(batch)
                for index, output in zip(batch, outputs, strict=True):
                    results[index] = output
                done += len(batch)
                if progress:
                    progress(done)
        return [r for r in results if r is not None]

    def _generate_batch(self, batch: list[GenerationRequest]) -> list[RequestResult]:
        import torch

        from rlaif.generation.nucleus_sampling import NucleusSampler

        first = batch[0]
        texts = [
            self.tokenizer.apply_chat_template(list(r.messages), tokenize=False, add_generation_prompt=True)
            + (r.prefill or "")
            for r in batch
        ]
        prompts, shared = self._encode(texts)
        # n rows per prompt (row b * n + k is answer k of prompt b): greedy decoding takes one sequence per row
        inputs = {name: tensor.repeat_interleave(first.n, dim=0) for name, tensor in prompts.items()}
        if first.seed is not None:
            torch.manual_seed(first.seed)
        # Sampling runs through NucleusSampler, which hands greedy decoding the token it drew: same
        # distribution as transformers' temperature + top-p, without sorting the vocabulary each step.
        sampler = [NucleusSampler(first.temperature, first.top_p)] if first.temperature > 0 else None
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                **self._prompt_cache(prompts, shared, first.n),
                do_sample=False,
                logits_processor=sampler,
                max_new_tokens=first.max_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_logits=first.top_logprobs is not None,
                stop_strings=list(first.stop) or None,
                tokenizer=self.tokenizer if first.stop else None,
            )
        prompt_length = prompts["input_ids"].shape[1]
        new_tokens = out.sequences[:, prompt_length:]
        logprob_rows = _token_logprobs(out.logits, new_tokens) if first.top_logprobs is not None else None
        eos_ids = _eos_ids(self.model.generation_config, self.tokenizer)
        results: list[RequestResult] = []
        for b, request in enumerate(batch):
            prompt_tokens = int(prompts["attention_mask"][b].sum())
            generations = []
            for k in range(request.n):
                row = b * request.n + k
                length, finished = _answer_length(new_tokens[row].tolist(), eos_ids)
                self.usage.add(prompt_tokens, length)
                decoded = self.tokenizer.decode(new_tokens[row, :length], skip_special_tokens=True)
                text = _cut_at_stop(decoded, request.stop)
                generations.append(
                    Generation(
                        text=text.strip(),
                        finish_reason="stop" if finished or text != decoded else "length",
                        completion_tokens=length,
                        logprobs=self._logprob_items(logprob_rows, row, length, request.top_logprobs),
                    )
                )
            self.usage.requests += 1
            results.append(generations)
        return results

    def _encode(self, texts: list[str]) -> tuple[dict[str, Any], int]:
        """Token ids and attention mask laid out as [shared opening][left padding][rest of the prompt], and
        the shared opening's length: the tokens every prompt starts with come first, so they run once.

        The opening stops at least one token before the end of the shortest prompt. Without a shared
        opening this is plain left padding.
        """
        import torch

        rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        shared = 0
        shortest = min(len(row) for row in rows)
        while shared < shortest - 1 and all(row[shared] == rows[0][shared] for row in rows):
            shared += 1
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        ids, mask = [], []
        for row in rows:
            padding = width - len(row)
            ids.append(row[:shared] + [pad] * padding + row[shared:])
            mask.append([1] * shared + [0] * padding + [1] * (len(row) - shared))
        tensors = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        return {name: tensor.to(self.device) for name, tensor in tensors.items()}, shared

    def _prompt_cache(self, prompts: dict[str, Any], shared: int, n: int) -> dict[str, Any]:
        """The prompts' key/value cache, each part computed once and copied to the rows that share it.

        The shared opening runs once for the batch (when it is at least `shared_opening_min_tokens` long
        and the batch has several prompts); with n > 1, the rest of each prompt, but its last token, runs
        once for its n answer rows. `generate` runs whatever the cache does not hold. Positions follow the
        attention mask (padding takes none), as `generate`'s own do.
        """
        from transformers import DynamicCache

        ids, mask = prompts["input_ids"], prompts["attention_mask"]
        batch, length = ids.shape
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        cached = 0

        def run(rows: slice, start: int, end: int) -> None:  # tokens start:end of these rows, into the cache
            self.model(
                input_ids=ids[rows, start:end],
                attention_mask=mask[rows, :end],
                position_ids=positions[rows, start:end],
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_keyword: cache},
            )

        if batch > 1 and shared >= self.shared_opening_min_tokens:
            run(slice(0, 1), 0, shared)
            cache.batch_repeat_interleave(batch)
            cached = shared
        if n > 1 and length - 1 > cached:
            run(slice(None), cached, length - 1)
            cached = length - 1
        if cached == 0:
            return {}
        cache.batch_repeat_interleave(n)
        return {self._cache_keyword: cache}

    def _logprob_items(self, rows: Any, row: int, length: int, top: int | None) -> tuple[TokenLogprob, ...] | None:
        if rows is None or top is None:
            return None
        chosen, log_probs, tokens = rows
        items = []
        for position in range(length):
            values, ids = log_probs[row, position].topk(max(top, 1))
            items.append(
                TokenLogprob(
                    token=self.tokenizer.decode([int(tokens[row, position])]),
                    logprob=float(chosen[row, position]),
                    top={self.tokenizer.decode([int(i)]): float(v) for v, i in zip(values, ids, strict=True)}
                    if top > 0
                    else {},
                )
            )
        return tuple(items)

    async def aclose(self) -> None:
        self.model = None
        self.tokenizer = None


def _token_logprobs(logits: Sequence[Any], tokens: Any) -> tuple[Any, Any, Any]:
    """Log-softmax of the raw logits at each step, and the log-probability of each generated token."""
    import torch

    log_probs = torch.stack(list(logits), dim=1).float().log_softmax(dim=-1)  # [rows, steps, vocab]
    chosen = log_probs.gather(-1, tokens[:, : log_probs.shape[1]].unsqueeze(-1)).squeeze(-1)
    return chosen, log_probs, tokens


def _eos_ids(generation_config: Any, tokenizer: Any) -> set[int]:
    eos = generation_config.eos_token_id if generation_config.eos_token_id is not None else tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else {eos}


def _answer_length(tokens: list[int], eos_ids: set[int]) -> tuple[int, bool]:
    """Tokens before the first end-of-sequence token, and whether one was generated."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return position, True
    return len(tokens), False


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string (as OpenAI-compatible servers return it)."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text[:cut] if cut >= 0 else text
