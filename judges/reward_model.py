"""Reward-model judging: a sequence-classification model scores each answer; p(A) = sigmoid(rA - rB).

The score is symmetric in the two answers, so judging "both orders" gives the same result by
construction. The same scorer ranks candidates for best-vs-worst pairing.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence

from judges.combine import confidence_of, winner_of
from rlaif.generation import TokenUsage
from rlaif.schema import Judgment, Pair, PromptItem, content_id


def reward_input_text(prompt: PromptItem, answer: str, tokenizer: object) -> tuple[str, str | None]:
    """How a (prompt, answer) is shown to a reward model: its chat template when it has one,
    else the conversation and the answer as a text pair (encoders such as MiniLM)."""
    chat_template = getattr(tokenizer, "chat_template", None)
    if chat_template:
        messages = [*prompt.chat(), {"role": "assistant", "content": answer}]
        return tokenizer.apply_chat_template(messages, tokenize=False), None  # type: ignore[attr-defined]
    conversation = "\n\n".join(f"{m.role}: {m.content}" for m in prompt.messages)
    return conversation, answer


class RewardModelScorer:
    """Scores (prompt, answer) with a sequence-classification model with one output."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 16, max_length: int = 512) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.truncation_side = "left"  # dialogues differ at their end: keep the end
        self.model = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1).to(self.device).eval()
        if self.model.config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length
        self.usage = TokenUsage()
        self._lock = threading.Lock()

    def score(self, prompts: Sequence[PromptItem], answers: Sequence[str]) -> list[float]:
        import torch

        scores: list[float] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(answers), self.batch_size):
                texts = [
                    reward_input_text(p, a, self.tokenizer)
                    for p, a in zip(
                        prompts[start : start + self.batch_size], answers[start : start + self.batch_size], strict=True
                    )
                ]
                firsts = [t[0] for t in texts]
                seconds = [t[1] for t in texts] if texts[0][1] is not None else None
                encoded = self.tokenizer(
                    firsts,
                    seconds,
                    truncation="only_first" if seconds else True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                self.usage.requests += len(texts)
                self.usage.add(int(encoded["attention_mask"].sum()), 0)
                logits = self.model(**encoded.to(self.device)).logits
                scores.extend(float(v) for v in logits[:, 0])
        return scores


class RewardModelJudge:
    def __init__(self, scorer: RewardModelScorer, name: str) -> None:
        self.scorer = scorer
        self.name = name
        self.template_hash = content_id("reward_model", name)

    def usage(self) -> TokenUsage:
        return self.scorer.usage

    async def judge(self, pairs: Sequence[Pair]) -> list[Judgment]:
        prompts = [p.prompt for p in pairs for _ in (0, 1)]
        answers = [c.text for p in pairs for c in (p.a, p.b)]
        scores = await asyncio.to_thread(self.scorer.score, prompts, answers)
        judgments = []
        for index, pair in enumerate(pairs):
            r_a, r_b = scores[2 * index], scores[2 * index + 1]
            p_a = 1.0 / (1.0 + math.exp(-(r_a - r_b)))
            judgments.append(
                Judgment(
                    pair_id=pair.id,
                    winner=winner_of(p_a),
                    p_a=p_a,
                    confidence=confidence_of(p_a),
                    status="ok",
                    raw_outputs=(f"reward_a={r_a:.6g}", f"reward_b={r_b:.6g}"),
                    judge_model=self.name,
                    template_hash=self.template_hash,
                )
            )
        return judgments
