"""The pairwise LLM judge: a chat prompt from a template, judged in both orders, in verdict or logprob mode.

verdict: the label is parsed from the reply; a sampled reply that does not parse is asked again once
at temperature 0 (a greedy one would only repeat itself), then the pair gets status parse_error.
logprob: one greedy pass; p(A) is read from the label tokens' probabilities at the verdict position
(the RLAIF paper's method). It needs token log-probabilities: the in-process transformers backend,
vLLM or OpenAI (`transformers serve` does not return them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlaif.generation.protocol import BackendError, Generation, GenerationBackend, GenerationRequest, TokenUsage
from rlaif.judges.combine import combine_orders, confidence_of, winner_of
from rlaif.judges.templates import JudgeTemplate
from rlaif.judges.verdicts import VerdictParseError, label_probability, parse_verdict, verdict_probability
from rlaif.schema import Judgment, Pair, content_id

LOGPROB_MAX_TOKENS = 16  # without a prefill, logprob mode reads the label among the first tokens of the reply


@dataclass
class _Order:
    """One judge call: a pair shown in one order."""

    pair: Pair
    swapped: bool  # False: A shown first; True: B shown first
    principle: str | None
    messages: list[dict[str, str]]
    generation: Generation | None = None
    p_first: float | None = None
    error: str | None = None
    failure: str | None = None  # "parse_error" | "backend_error"


def judge_messages(
    template: JudgeTemplate, pair: Pair, swapped: bool, seed: int
) -> tuple[list[dict[str, str]], str | None]:
    """The judge's chat messages for a pair shown in one order (B first when `swapped`), and the principle
    drawn for the pair (constitution templates)."""
    principle = template.draw_principle(seed, pair.id)
    earlier = pair.prompt.messages[:-1]
    conversation = "\n\n".join(f"{m.role.upper()}: {m.content}" for m in earlier)
    first, second = (pair.b, pair.a) if swapped else (pair.a, pair.b)
    messages = template.render(
        question=pair.prompt.messages[-1].content,
        answer_a=first.text,
        answer_b=second.text,
        conversation=conversation,
        principle=principle,
    )
    return messages, principle


class PairwiseLLMJudge:
    def __init__(
        self,
        backend: GenerationBackend,
        template: JudgeTemplate,
        mode: str,
        name: str,
        temperature: float = 0.0,
        max_tokens: int = 512,
        top_logprobs: int = 20,
        seed: int = 0,
        response_format: bool = False,
    ) -> None:
        if mode not in ("verdict", "logprob"):
            raise ValueError(f"PairwiseLLMJudge judges in verdict or logprob mode, not {mode!r}")
        self.backend = backend
        self.template = template
        self.mode = mode
        self.name = name
        self.template_hash = template.hash
        self.temperature = temperature
        # With a prefill ending just before the label ("[["), the next token is the verdict.
        self.prefill = template.header.prefill if backend.supports_prefill else None
        # A verdict-first reply ends with its label: stop there instead of running on to max_tokens.
        self.stop: tuple[str, ...] = ("]]",) if self.prefill and template.header.output == "brackets" else ()
        if mode == "logprob":
            max_tokens = 1 if self.prefill else min(max_tokens, LOGPROB_MAX_TOKENS)
        self.max_tokens = max_tokens
        self.top_logprobs = top_logprobs
        self.seed = seed
        labels = template.header.labels
        self.json_schema = (
            {
                "type": "object",
                "properties": {
                    "verdict": {"type": "string", "enum": [v for v in (labels.a, labels.b, labels.tie) if v]}
                },
                "required": ["verdict"],
                "additionalProperties": False,
            }
            if response_format and mode == "verdict" and template.header.output == "json"
            else None
        )

    def usage(self) -> TokenUsage:
        return self.backend.usage

    def prompt_messages(self, pair: Pair, swapped: bool = False) -> list[dict[str, str]]:
        """The judge's chat messages for a pair in one order (what a person auditing the judge would read)."""
        return self._order(pair, swapped).messages

    def _order(self, pair: Pair, swapped: bool) -> _Order:
        messages, principle = judge_messages(self.template, pair, swapped, self.seed)
        return _Order(pair=pair, swapped=swapped, principle=principle, messages=messages)

    def _request(self, order: _Order, temperature: float) -> GenerationRequest:
        return GenerationRequest(
            messages=order.messages,
            temperature=temperature if self.mode == "verdict" else 0.0,
            max_tokens=self.max_tokens,
            seed=int(content_id("judge-seed", self.seed, order.pair.id, order.swapped)[:8], 16),
            top_logprobs=self.top_logprobs if self.mode == "logprob" else None,
            prefill=self.prefill,
            stop=self.stop,
            json_schema=self.json_schema,
        )

    async def judge(self, pairs: Sequence[Pair]) -> list[Judgment]:
        orders = [self._order(pair, swapped) for pair in pairs for swapped in (False, True)]
        await self._run(orders, self.temperature)
        if self.mode == "verdict":
            unparsed = [o for o in orders if o.failure == "parse_error"]
            if unparsed and self.temperature > 0:  # one more try, greedy (a greedy reply would only repeat)
                await self._run(unparsed, 0.0)
        return [self._judgment(orders[2 * i], orders[2 * i + 1]) for i in range(len(pairs))]

    async def _run(self, orders: list[_Order], temperature: float) -> None:
        results = await self.backend.generate([self._request(o, temperature) for o in orders])
        for order, result in zip(orders, results, strict=True):
            order.failure = order.error = None
            if isinstance(result, BackendError):
                order.failure, order.error = "backend_error", str(result)
                continue
            order.generation = result[0]
            try:
                if self.mode == "verdict":
                    reply = self._reply(order.generation)
                    verdict = parse_verdict(reply, self.template.header.labels, self.template.header.output)
                    order.p_first = verdict_probability(verdict)
                else:
                    order.p_first = label_probability(
                        order.generation.logprobs or (),
                        self.template.header.labels,
                        first_is_verdict=bool(self.prefill),
                    )
            except VerdictParseError as exc:
                order.failure, order.error = "parse_error", str(exc)

    def _reply(self, generation: Generation) -> str:
        """The whole reply: the prefill, the generated text, and the stop string when the reply ended on it
        (servers leave the stop string out of the text)."""
        ended_on_stop = self.stop and self.mode == "verdict" and generation.finish_reason == "stop"
        return (self.prefill or "") + generation.text + (self.stop[0] if ended_on_stop else "")

    def _judgment(self, ab: _Order, ba: _Order) -> Judgment:
        raw = tuple(self._reply(o.generation) if o.generation else "" for o in (ab, ba))
        common = dict(
            pair_id=ab.pair.id,
            raw_outputs=raw,
            judge_model=self.name,
            template_hash=self.template_hash,
            principle=ab.principle,
        )
        failed = next((o for o in (ab, ba) if o.failure), None)
        if failed is not None:
            which = "B-A" if failed.swapped else "A-B"
            status = "backend_error" if any(o.failure == "backend_error" for o in (ab, ba)) else "parse_error"
            return Judgment(winner=None, status=status, error=f"{which} order: {failed.error}", **common)
        assert ab.p_first is not None and ba.p_first is not None
        p_a, disagree = combine_orders(ab.p_first, ba.p_first)
        return Judgment(
            winner=winner_of(p_a),
            p_a=p_a,
            confidence=confidence_of(p_a),
            status="ok",
            order_disagreement=disagree,
            **common,
        )
