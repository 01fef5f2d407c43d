"""Shared-prompt DPO batches: each pair's prompt goes through the model once, and both answers branch off it.

TRL's DPO batches hold prompt+chosen and prompt+rejected as two sequences, so every prompt token is computed
twice, in the policy's forward and backward and in the reference pass. Here a pair is one row:

    prompt[:-1] | prompt[-1] chosen... | prompt[-1] rejected... | padding

Each branch starts with the prompt's last token, whose hidden state predicts the answer's first token, so the
usual next-token shift scores both answers. A 4D attention mask lets each branch see the shared prefix and
itself, never the other branch, and each branch's position ids go on from the prefix, so every answer token gets
the log-probability it gets in TRL's layout (the tests check this against TRL). The loss is DPO's sigmoid loss,
the only one our settings expose.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rlaif.training.dpo_tokenization import BatchedTokenizationDPOTrainer

PREFIX, CHOSEN, REJECTED, PADDING = 0, 1, 2, -1


def shared_row(
    prompt: list[int], chosen: list[int], rejected: list[int], max_length: int | None
) -> tuple[list[int], list[int], list[int], list[int]]:
    """(input ids, position ids, branch, completion mask) of one pair's row.

    Truncation is TRL's `keep_start` per answer: prompt + answer keeps its first `max_length` tokens.
    """
    if not prompt:
        raise ValueError("shared-prompt batches need at least one prompt token per pair")
    if max_length is not None:
        room = max(max_length - len(prompt), 0)
        chosen, rejected = chosen[:room], rejected[:room]
    p = len(prompt)
    ids = prompt + chosen + prompt[-1:] + rejected
    positions = list(range(p + len(chosen))) + list(range(p - 1, p + len(rejected)))
    branch = [PREFIX] * (p - 1) + [CHOSEN] * (len(chosen) + 1) + [REJECTED] * (len(rejected) + 1)
    completion = [0] * p + [1] * len(chosen) + [0] + [1] * len(rejected)
    return ids, positions, branch, completion


@dataclass
class SharedPromptCollator:
    """Batches of tokenized pairs (prompt_ids, chosen_ids, rejected_ids) as shared-prompt rows, right-padded."""

    pad_token_id: int
    max_length: int | None = None
    pad_to_multiple_of: int = 8

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [shared_row(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"], self.max_length) for e in examples]
        longest = max(len(ids) for ids, _, _, _ in rows)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def padded(column: int, fill: int) -> torch.Tensor:
            return torch.tensor([row[column] + [fill] * (width - len(row[column])) for row in rows])

        batch = {
            "input_ids": padded(0, self.pad_token_id),
            "position_ids": padded(1, 0),
            "branch": padded(2, PADDING),
            "completion_mask": padded(3, 0),
        }
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] for e in examples])
        return batch


def branch_attention_mask(branch: torch.Tensor) -> torch.Tensor:
    """(batch, 1, length, length) boolean mask, True where a query may attend a key.

    Causal; a branch sees the shared prefix and itself, never the other branch; padding is never seen, and
    every position sees itself so that no row of the attention is empty.
    """
    length = branch.size(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=branch.device).tril()
    query, key = branch[:, :, None], branch[:, None, :]
    visible = ((key == PREFIX) | (key == query)) & (key != PADDING) & causal
    visible |= torch.eye(length, dtype=torch.bool, device=branch.device)
    return visible[:, None]


class SharedPromptDPOTrainer(BatchedTokenizationDPOTrainer):
    """TRL's DPOTrainer (reference pre-pass, training loop, metrics) over shared-prompt rows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        dpo_args = kwargs["args"]
        plain = dpo_args.loss_type == ["sigmoid"] and dpo_args.f_divergence_type == "reverse_kl"
        if not plain or dpo_args.use_weighting or dpo_args.ld_alpha is not None or dpo_args.label_smoothing:
            raise ValueError("shared-prompt batches implement DPO's plain sigmoid loss only")
        tokenizer = kwargs["processing_class"]
        kwargs["data_collator"] = SharedPromptCollator(
            pad_token_id=tokenizer.pad_token_id, max_length=dpo_args.max_length
        )
        super().__init__(*args, **kwargs)

    def _branch_logps(self, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities of the chosen and of the rejected answer of every row."""
        attention = getattr(self.accelerator.unwrap_model(model).config, "_attn_implementation", None)
        if attention != "sdpa":
            raise ValueError(f"shared-prompt batches need the model's sdpa attention, not {attention!r}")
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        outputs = model(
            input_ids=inputs["input_ids"],
            position_ids=inputs["position_ids"],
            attention_mask=branch_attention_mask(inputs["branch"]),
            labels=labels,
            fused_lm_head=True,
            use_cache=False,
        )
        branch = inputs["branch"][:, 1:]  # log_probs[:, t] scores token t + 1
        return (outputs.log_probs * (branch == CHOSEN)).sum(1), (outputs.log_probs * (branch == REJECTED)).sum(1)

    def _reference_context(self) -> Any:
        """With a LoRA policy and no reference model, the reference is the policy with its adapter off."""
        if self.ref_model is None and hasattr(self.accelerator.unwrap_model(self.model), "disable_adapter"):
            return self.accelerator.unwrap_model(self.model).disable_adapter()
        return contextlib.nullcontext()

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), self._reference_context(), self.accelerator.autocast():
            return self._branch_logps(self.ref_model or model, inputs)

    def _compute_loss(self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool) -> Any:
        if return_outputs:
            raise NotImplementedError("shared-prompt batches return no logits (leave compute_metrics unset)")
        mode = "train" if self.model.training else "eval"
        chosen, rejected = self._branch_logps(model, inputs)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(model, inputs)
        chosen_rewards = self.beta * (chosen - ref_chosen)
        rejected_rewards = self.beta * (rejected - ref_rejected)
        loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()

        gather = self.accelerator.gather_for_metrics
        chosen_rewards, rejected_rewards = gather(chosen_rewards.detach()), gather(rejected_rewards.detach())
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "logps/chosen": gather(chosen.detach()).mean(),
            "logps/rejected": gather(rejected.detach()).mean(),
        }
        values = torch.stack(list(metrics.values())).tolist()  # one device sync, not one per metric
        for name, value in zip(metrics, values, strict=True):
            self._metrics[mode][name].append(value)
        return loss
