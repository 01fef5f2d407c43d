"""Did a policy stage learn the preferences? The same held-out figures for DPO, KTO and ORPO, whatever TRL logs.

For each held-out pair, the answers' summed log-probabilities under the trained policy and under the model it
started from give the implicit reward of each answer (log pi(answer) - log pi_start(answer), DPO's reward up to
beta). The margin is the chosen answer's minus the rejected one's: positive where training moved the policy
towards the preferred answer. Reported: the mean margin, the share of pairs with a positive margin, and how much
the chosen answers' log-probability rose.
"""

from __future__ import annotations

import statistics
from typing import Any


def answer_log_probs(model_path: str, pairs: Any, batch_size: int = 8) -> tuple[list[float], list[float]]:
    """Summed log-probabilities of the chosen and of the rejected answer of each pair, under `model_path` (the
    prompt rendered with the model's chat template, the answer as the assistant's reply)."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlaif.training.tokenizer import chat_ids, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    sequences: list[tuple[list[int], int]] = []  # token ids, and where the answer starts
    for row in pairs:
        answer_start = len(chat_ids(tokenizer, row["prompt"], add_generation_prompt=True))
        for side in ("chosen", "rejected"):
            sequences.append((chat_ids(tokenizer, row["prompt"] + row[side]), answer_start))
    totals: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s, _ in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in batch])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            token_logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
            for row, (sequence, answer_start) in enumerate(batch):
                totals.append(float(token_logps[row, answer_start - 1 : len(sequence) - 1].sum()))
    return totals[0::2], totals[1::2]


def held_out_margins(trainer: Any, policy_path: str, start_path: str, pairs: Any) -> dict[str, Any] | None:
    """The implicit-reward margins of the trained policy (saved at `policy_path` by `trainer`) against its start on
    held-out pairs (module docstring); None without held-out pairs, and in the processes other than the main one
    of a multi-process run (only the main one has written the folder, and only it writes the report)."""
    if pairs is None or len(pairs) == 0 or not trainer.accelerator.is_main_process:
        return None
    chosen, rejected = answer_log_probs(policy_path, pairs)
    start_chosen, start_rejected = answer_log_probs(start_path, pairs)
    margins = [(c - sc) - (r - sr) for c, sc, r, sr in zip(chosen, start_chosen, rejected, start_rejected, strict=True)]
    return {
        "pairs": len(margins),
        "margin": statistics.fmean(margins),
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "chosen_log_prob_change": statistics.fmean(c - sc for c, sc in zip(chosen, start_chosen, strict=True)),
    }
