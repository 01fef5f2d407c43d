"""Reward-model judging: a sequence-classification model scores each answer; p(A) = sigmoid(rA - rB).

The score is symmetric in the two answers, so judging "both orders" gives the same result by
construction. The same scorer ranks candidates for best-vs-worst pairing.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence
from typing import Any

from rlaif.generation.protocol import TokenUsage
from rlaif.judges.combine import confidence_of, winner_of
from rlaif.schema import Judgment, Pair, PromptItem, content_id


def reward_input_text(messages: Sequence[dict[str, str]], answer: str, tokenizer: Any) -> tuple[str, str | None]:
    """How a (conversation, answer) is shown to a reward model: its chat template when it has one,
    else the conversation and the answer as a text pair (encoders such as MiniLM)."""
    if getattr(tokenizer, "chat_template", None):
        conversation = [*messages, {"role": "assistant", "content": answer}]
        return tokenizer.apply_chat_template(conversation, tokenize=False), None
    conversation = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return conversation, answer


def encode_reward_inputs(
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    answers: Sequence[str],
    max_length: int,
    **kwargs: Any,
) -> Any:
    """Tokenize (conversation, answer) pairs as the reward model reads them, in training and in judging alike.

    Dialogues differ at their end, so what does not fit is cut from the left, from the longer of
    conversation and answer first: the end of the answer is always kept.
    """
    texts = [reward_input_text(c, a, tokenizer) for c, a in zip(conversations, answers, strict=True)]
    firsts = [t[0] for t in texts]
    seconds = [t[1] for t in texts] if texts and texts[0][1] is not None else None
    tokenizer.truncation_side = "left"
    return tokenizer(
        firsts,
        seconds,
        truncation="longest_first",
        max_length=max_length,
        **kwargs,
    )


class RewardModelScorer:
    """Scores (prompt, answer) with a sequence-classification model with one output."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 16, max_length: int = 512) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1).to(self.device).eval()
        if self.model.config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        # A reward model trained by `rlaif train reward` records its input length in its tokenizer.
        self.max_length = min(max_length, self.tokenizer.model_max_length)
        self.usage = TokenUsage()
        self._lock = threading.Lock()

    def score(self, prompts: Sequence[PromptItem], answers: Sequence[str]) -> list[float]:
        import torch

        scores: list[float] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(answers), self.batch_size):
                batch_answers = answers[start : start + self.batch_size]
                encoded = encode_reward_inputs(
                    self.tokenizer,
                    [p.chat() for p in prompts[start : start + self.batch_size]],
                    batch_answers,
                    self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                self.usage.requests += len(batch_answers)
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
