"""PPO for language models (TRL >= 1.13 has no PPOTrainer, so this one is ours).

One iteration (`PPOTrainer.step`), as in Ziegler et al. 2019 and Ouyang et al. 2022:
1. sample a response for each prompt from the policy (temperature `settings.temperature`);
2. score each whole response with the reward function (the reward model of `training/reward.py`);
3. per-token rewards: -kl_coef * (log pi(token) - log pi_ref(token)) for every response token, plus
   the score on the last one (the KL penalty keeps the policy near the frozen reference);
4. advantages by GAE (gamma, lambda) from a value model (the policy's backbone with a scalar head),
   whitened over the batch;
5. `ppo_epochs` passes of minibatch updates: clipped policy-ratio loss plus clipped value loss.
With `kl_target` set, the KL coefficient adapts towards that KL per sequence (Ziegler's controller).
Each iteration logs score, KL, entropy, clip fraction and the losses.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlaif.config import PPOSection
from rlaif.run_files import write_json_atomic
from rlaif.training.checkpoints import STATE_FILE, checkpoint_folder
from rlaif.training.tokenizer import chat_ids, load_tokenizer

CHECKPOINT_FILE = "ppo_state.pt"

# score(queries, query_mask, responses, response_mask) -> one reward per sequence
RewardFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class ValueModel(nn.Module):
    """A transformer backbone with a linear head: V(state) for every position."""

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> ValueModel:
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(path, **kwargs)
        return cls(backbone, backbone.config.hidden_size)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


@dataclass
class Rollouts:
    queries: torch.Tensor  # (B, Lq), left-padded
    query_mask: torch.Tensor
    responses: torch.Tensor  # (B, Lr), padded after the end
    response_mask: torch.Tensor
    logprobs: torch.Tensor  # (B, Lr) under the sampling policy
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # (B,)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns over the response tokens (0 past each response's end)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


class AdaptiveKLController:
    """Moves the KL coefficient towards a target KL per sequence (Ziegler et al. 2019)."""

    def __init__(self, coef: float, target: float, horizon: int) -> None:
        self.value = coef
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, rollouts: int) -> None:
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.value *= 1 + error * rollouts / self.horizon


class PPOTrainer:
    """Policy, frozen reference, value model and a reward function, trained by PPO on token prompts."""

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module,
        value_model: ValueModel,
        reward: RewardFunction,
        settings: PPOSection,
        pad_token_id: int,
        eos_token_id: int | None,
        seed: int = 0,
    ) -> None:
        self.policy, self.reference, self.value_model = policy, reference, value_model
        self.reference.eval().requires_grad_(False)
        self.reward = reward
        self.settings = settings
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.device = next(policy.parameters()).device
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in policy.parameters() if p.requires_grad], "lr": settings.learning_rate},
                {"params": list(value_model.parameters()), "lr": settings.value_learning_rate},
            ]
        )
        self.kl_coef: float = settings.kl_coef
        self.controller = (
            AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
            if settings.kl_target is not None
            else None
        )
        self.bf16 = settings.bf16 if settings.bf16 is not None else self.device.type == "cuda"
        torch.manual_seed(seed)
        self.rng = random.Random(seed)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue as this one would: the trained weights (the
        reference is frozen), the optimizer, the KL coefficient and the random states."""
        return {
            "policy": self.policy.state_dict(),
            "value_model": self.value_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "kl_coef": self.kl_coef,
            "python_rng": self.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value_model.load_state_dict(state["value_model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_coef = state["kl_coef"]
        if self.controller is not None:
            self.controller.value = self.kl_coef
        self.rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # -- rollouts -------------------------------------------------------------------------------------

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _left_pad(self, queries: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(q) for q in queries)
        ids = torch.full((len(queries), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(queries), width), dtype=torch.long)
        for row, query in enumerate(queries):
            ids[row, width - len(query) :] = torch.tensor(query, dtype=torch.long)
            mask[row, width - len(query) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def generate(self, queries: Sequence[Sequence[int]], greedy: bool = False) -> tuple[torch.Tensor, ...]:
        """(query ids, query mask, response ids, response mask): responses end at the first eos (kept)."""
        ids, mask = self._left_pad(queries)
        self.policy.eval()
        with self._autocast():
            output = self.policy.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=not greedy,
                temperature=self.settings.temperature if not greedy else None,
                top_k=0 if not greedy else None,
                top_p=1.0 if not greedy else None,
                max_new_tokens=self.settings.max_new_tokens,
                min_new_tokens=1,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.eos_token_id,
            )
        responses = output[:, ids.shape[1] :]
        response_mask = torch.ones_like(responses)
        if self.eos_token_id is not None:
            is_eos = responses == self.eos_token_id
            after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # tokens after the first eos
            response_mask = (~after_eos).long()
            responses = responses.masked_fill(after_eos, self.pad_token_id)
        return ids, mask, responses, response_mask

    def _forward(
        self,
        model: nn.Module,
        queries: torch.Tensor,
        query_mask: torch.Tensor,
        responses: torch.Tensor,
        response_mask: torch.Tensor,
        values: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-response-token log-probs (and entropies), or values, for query+response."""
        ids = torch.cat([queries, responses], dim=1)
        mask = torch.cat([query_mask, response_mask], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        start = queries.shape[1] - 1
        with self._autocast():
            if values:
                return model(ids, mask, positions)[:, start:-1], None
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, start:-1].float()
        logits = logits / self.settings.temperature
        log_probs = torch.log_softmax(logits, dim=-1)
        token_logprobs = log_probs.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return token_logprobs, entropy

    @torch.no_grad()
    def rollout(self, queries: Sequence[Sequence[int]]) -> Rollouts:
        ids, mask, responses, response_mask = self.generate(queries)
        self.policy.eval()
        self.value_model.eval()
        logprobs, _ = self._forward(self.policy, ids, mask, responses, response_mask)
        ref_logprobs, _ = self._forward(self.reference, ids, mask, responses, response_mask)
        values, _ = self._forward(self.value_model, ids, mask, responses, response_mask, values=True)
        scores = self.reward(ids, mask, responses, response_mask).to(self.device).float()
        return Rollouts(ids, mask, responses, response_mask.float(), logprobs, ref_logprobs, values, scores)

    # -- one PPO iteration ----------------------------------------------------------------------------

    def step(self, queries: Sequence[Sequence[int]]) -> dict[str, float]:
        """One iteration on a batch of prompts (token ids); returns its statistics."""
        started = time.monotonic()
        batch = self.rollout(queries)
        mask = batch.response_mask
        kl = (batch.logprobs - batch.ref_logprobs) * mask
        rewards = -self.kl_coef * kl
        last = (mask.sum(dim=1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(last)), last] += batch.scores
        if self.settings.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = gae(rewards, batch.values, mask, self.settings.gamma, self.settings.lam)
        advantages = masked_whiten(advantages, mask) * mask

        self.policy.train()
        self.value_model.train()
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_fraction": [], "entropy": []}
        stats["approx_kl"] = []
        size = len(queries)
        for _ in range(self.settings.ppo_epochs):
            order = list(range(size))
            self.rng.shuffle(order)
            for start in range(0, size, self.settings.mini_batch_size):
                index = torch.tensor(order[start : start + self.settings.mini_batch_size], device=self.device)
                m = mask[index]
                new_logprobs, entropy = self._forward(
                    self.policy,
                    batch.queries[index],
                    batch.query_mask[index],
                    batch.responses[index],
                    m.long(),
                )
                new_values, _ = self._forward(
                    self.value_model,
                    batch.queries[index],
                    batch.query_mask[index],
                    batch.responses[index],
                    m.long(),
                    values=True,
                )
                ratio = torch.exp(new_logprobs - batch.logprobs[index])
                adv = advantages[index]
                clip = self.settings.clip_range
                policy_loss = masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)), m)
                old_values = batch.values[index]
                clipped_values = old_values + (new_values - old_values).clamp(
                    -self.settings.clip_range_value, self.settings.clip_range_value
                )
                value_loss = 0.5 * masked_mean(
                    torch.max((new_values - returns[index]) ** 2, (clipped_values - returns[index]) ** 2), m
                )
                loss = policy_loss + self.settings.value_coef * value_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(
                    [p for group in self.optimizer.param_groups for p in group["params"]], max_norm=1.0
                )
                self.optimizer.step()
                with torch.no_grad():
                    stats["policy_loss"].append(policy_loss.item())
                    stats["value_loss"].append(value_loss.item())
                    stats["clip_fraction"].append(masked_mean(((ratio - 1).abs() > clip).float(), m).item())
                    stats["entropy"].append(masked_mean(entropy, m).item())
                    stats["approx_kl"].append(0.5 * masked_mean((new_logprobs - batch.logprobs[index]) ** 2, m).item())

        kl_per_sequence = kl.sum(dim=1).mean().item()
        if self.controller is not None:
            self.controller.update(kl_per_sequence, size)
            self.kl_coef = self.controller.value
        summary = {key: sum(values) / len(values) for key, values in stats.items()}
        summary.update(
            score=batch.scores.mean().item(),
            kl=kl_per_sequence,
            kl_coef=self.kl_coef,
            reward=(rewards * mask).sum(dim=1).mean().item(),
            response_length=mask.sum(dim=1).mean().item(),
            seconds=time.monotonic() - started,
        )
        return summary


def token_bonus_reward(token_id: int) -> RewardFunction:
    """A toy reward: the share of response tokens equal to `token_id` (for tests and demonstrations)."""

    def reward(
        queries: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        mask = mask.float()
        return ((responses == token_id).float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    return reward


def reward_model_reward(
    scorer: Any, tokenizer: Any, conversations: dict[tuple[int, ...], list[dict[str, str]]]
) -> RewardFunction:
    """The reward model's score of each (prompt, decoded response), prompts looked up by their token ids."""
    from rlaif.schema import PromptItem

    def reward(
        queries: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        prompts, answers = [], []
        for query, query_used, response, response_mask in zip(queries, query_mask, responses, mask, strict=True):
            key = tuple(query[query_used.bool()].tolist())
            prompts.append(PromptItem(messages=conversations[key]))
            answers.append(tokenizer.decode(response[response_mask.bool()], skip_special_tokens=True))
        return torch.tensor(scorer.score(prompts, answers))

    return reward


def train_ppo(
    train: Any,
    held_out: Any | None,
    settings: PPOSection,
    model_path: str,
    reward_model_path: str,
    out: Path,
    seed: int = 0,
    say: Callable[[str], None] = print,
    resume_from: Path | None = None,
    reference_path: str | None = None,
) -> dict[str, Any]:
    """PPO on the prompts of a preference dataset, rewarded by a reward model, with the KL penalty towards the
    model at `reference_path` (default: the policy's start), continuing from the checkpoint `resume_from` when
    given; saves the policy and its log to `out`; returns its report."""
    from transformers import AutoModelForCausalLM

    from rlaif.judges.reward_model import RewardModelScorer

    started = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(model_path)
    policy = AutoModelForCausalLM.from_pretrained(model_path).to(device)
    reference = AutoModelForCausalLM.from_pretrained(reference_path or model_path).to(device)
    value_model = ValueModel.from_pretrained(model_path).to(device)
    scorer = RewardModelScorer(reward_model_path, device=device)

    def encode(conversation: list[dict[str, str]]) -> tuple[int, ...]:
        ids = chat_ids(tokenizer, conversation, add_generation_prompt=True)
        return tuple(ids[-settings.max_prompt_length :])

    conversations = {encode(row["prompt"]): row["prompt"] for row in train}
    eval_conversations = {encode(row["prompt"]): row["prompt"] for row in held_out} if held_out is not None else {}
    reward = reward_model_reward(scorer, tokenizer, {**conversations, **eval_conversations})
    trainer = PPOTrainer(
        policy, reference, value_model, reward, settings, tokenizer.pad_token_id, tokenizer.eos_token_id, seed
    )
    prompts = list(conversations)
    eval_prompts = list(eval_conversations)[:64]
    rng = random.Random(seed)  # which prompts each iteration samples
    done: int = 0
    log: list[dict[str, Any]] = []
    if resume_from is None:
        before = mean_score(trainer, eval_prompts) if eval_prompts else None
    else:
        saved = torch.load(resume_from / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        trainer.load_state_dict(saved["trainer"])
        rng.setstate(saved["prompt_rng"])
        done, log, before = saved["step"], saved["log"], saved["before"]
    out.mkdir(parents=True, exist_ok=True)
    for step in range(done + 1, settings.steps + 1):
        batch = rng.sample(prompts, min(settings.batch_size, len(prompts)))
        stats = trainer.step(batch)
        log.append({"step": step, **stats})
        say(
            f"ppo step {step}/{settings.steps}: score {stats['score']:.3f}, kl {stats['kl']:.3f}, "
            f"entropy {stats['entropy']:.2f}, clip {stats['clip_fraction']:.2f}, {stats['seconds']:.1f} s"
        )
        if settings.save_steps and step % settings.save_steps == 0 and step < settings.steps:
            state = {"trainer": trainer.state_dict(), "prompt_rng": rng.getstate()}
            save_checkpoint(checkpoint_folder(out), step, {**state, "step": step, "log": log, "before": before})
    after = mean_score(trainer, eval_prompts) if eval_prompts else None
    policy.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    torch.save(value_model.head.state_dict(), out / "value_head.pt")
    (out / "ppo_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log), encoding="utf-8")
    report = {
        "stage": "ppo",
        "model": model_path,
        "reference": reference_path or model_path,
        "reward_model": reward_model_path,
        "prompts": len(prompts),
        "steps": settings.steps,
        "held_out_score_before": before,
        "held_out_score_after": after,
        "final": log[-1] if log else None,
        "steps_per_s": len(log) / sum(row["seconds"] for row in log) if log else None,
        "settings": settings.model_dump(mode="json"),
        "log": log,  # per step: score, kl, losses (also ppo_log.jsonl)
        "wall_s": round(time.monotonic() - started, 1),
        "device": device,
    }
    return report


def save_checkpoint(folder: Path, step: int, state: dict[str, Any]) -> None:
    """folder/checkpoint-STEP: the state, then trainer_state.json (which marks it complete); earlier
    checkpoints are removed once it is."""
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoint / CHECKPOINT_FILE)
    write_json_atomic(checkpoint / STATE_FILE, {"global_step": step})
    for earlier in folder.glob("checkpoint-*"):
        if earlier != checkpoint:
            shutil.rmtree(earlier)


@torch.no_grad()
def mean_score(trainer: PPOTrainer, prompts: Sequence[Sequence[int]], batch_size: int = 16) -> float:
    """Mean reward of greedy responses to `prompts` under the current policy."""
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        queries = prompts[start : start + batch_size]
        ids, query_mask, responses, response_mask = trainer.generate(queries, greedy=True)
        total += trainer.reward(ids, query_mask, responses, response_mask).sum().item()
    return total / len(prompts) if prompts else math.nan
