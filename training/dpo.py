"""DPO: TRL's DPOTrainer with defaults chosen for speed, LoRA as an option, held-out implicit-reward accuracy.

Speed levers (see `dpo_arguments`): pairs are tokenized in batches (training/dpo_tokenization.py), each
pair's prompt runs once with both answers branching off it (`shared_prompt`, training/shared_prompt.py),
the reference log-probs are computed once before training instead of in every step
(`precompute_ref_log_probs`), pairs of similar length are batched together so little of each batch is
padding (`length_grouped_order`; TRL 1.16 has padding-free DPO switched off), bf16 on a GPU, and
gradient checkpointing as a switch for memory. TRL builds the reference model from the
policy's path, so the policy is always given as a saved folder; another reference (`reference`, as in
iterative rounds that keep the original model as the reference) is loaded here and handed to TRL.
"""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlaif.config import ConfigError, DPOSection
from rlaif.training.arguments import trainer_arguments, training_log
from rlaif.training.checkpoints import checkpoint_folder
from rlaif.training.preference_margin import held_out_margins
from rlaif.training.tokenizer import load_tokenizer

MEGABATCH = 50  # batches per length-sorted window: enough to group lengths, small enough to stay shuffled


def length_grouped_order(dataset: Any, batch_size: int, seed: int, shared_prompt: bool = True) -> Any:
    """The dataset reordered so that each batch holds pairs of similar length, batches in random order.

    Like transformers' LengthGroupedSampler, but done once on the data (by character length, a good
    proxy for tokens), so it works whatever columns the trainer keeps. The length is that of a batch
    row: prompt + chosen + rejected with a shared prompt, else prompt + the longer answer.
    """

    def row_length(row: dict[str, Any]) -> int:
        prompt, chosen, rejected = (
            sum(len(m["content"]) for m in row[side]) for side in ("prompt", "chosen", "rejected")
        )
        return prompt + chosen + rejected if shared_prompt else prompt + max(chosen, rejected)

    lengths = [row_length(row) for row in dataset.select_columns(["prompt", "chosen", "rejected"])]
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = MEGABATCH * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return dataset.select([i for batch in batches for i in batch])


def dpo_arguments(settings: DPOSection, output_dir: Path, seed: int, train_pairs: int) -> Any:
    """DPOConfig from our settings (`trainer_arguments`) and the DPO stage's own.

    The reference pass is precomputed only when training sees every pair at least once: a short run
    (max_steps) would pay for log-probs of pairs it never trains on.
    """
    from trl import DPOConfig

    pairs_seen = settings.max_steps * settings.batch_size * settings.gradient_accumulation_steps
    precompute = settings.precompute_ref_log_probs and (settings.max_steps < 0 or pairs_seen >= train_pairs)
    return trainer_arguments(
        DPOConfig,
        settings,
        output_dir,
        seed,
        beta=settings.beta,
        max_steps=settings.max_steps,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        max_length=settings.max_length,
        precompute_ref_log_probs=precompute,
        loss_type=settings.losses(),
        loss_weights=settings.loss_weights,
        label_smoothing=settings.label_smoothing,
        # The reference pass goes through the training order at the training batch size, so its batches
        # are the length-grouped ones: a larger batch would join groups of different lengths and pad.
        precompute_ref_batch_size=settings.batch_size,
        train_sampling_strategy="sequential" if settings.group_by_length else "random",
        eval_strategy="no",
    )


def installed_losses() -> list[str]:
    """The DPO losses of the installed TRL, as its DPOConfig documents them (TRL checks a name only at the first
    step, after the tokenization and the reference pass)."""
    from trl import DPOConfig

    field = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type")
    return re.findall(r"`'(\w+)'`", field.metadata["help"])


def check_losses(settings: DPOSection) -> None:
    """A clear error for a loss the installed TRL does not have, before anything is computed."""
    import trl

    known = installed_losses()
    for loss in settings.losses():
        if loss not in known:
            raise ConfigError(
                f"train.dpo.loss_type: {loss!r} is not a DPO loss of the installed TRL {trl.__version__}; "
                f"it has {', '.join(known)}"
            )
    if "exo_pair" in settings.losses() and not settings.label_smoothing:
        raise ConfigError("train.dpo.loss_type exo_pair needs train.dpo.label_smoothing above 0 (e.g. 0.001)")


def uses_shared_prompt(settings: DPOSection) -> bool:
    """Shared-prompt rows implement DPO's plain sigmoid loss only: any other loss trains on TRL's rows."""
    return settings.shared_prompt and settings.losses() == ["sigmoid"] and not settings.label_smoothing


def save_merged_adapter(trainer: Any, model_path: str, out: Path) -> None:
    """The LoRA adapter merged into its base model, saved in `out` as a plain model.

    Merged from the saved files, not in the trainer's own model: under DeepSpeed ZeRO-3 each process holds
    only a shard of every weight, and merging those in place would save empty weights. The trainer saves
    the adapter (gathering it from every process), then the main process loads the base model and the
    adapter and merges them; the others wait until the folder is written.
    """
    adapter = out / "lora-adapter"
    trainer.save_model(str(adapter))  # every process takes part; the main process writes
    if trainer.args.should_save:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype="auto")
        merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        merged.save_pretrained(str(out))
        trainer.processing_class.save_pretrained(str(out))
        shutil.rmtree(adapter)
    trainer.accelerator.wait_for_everyone()


def lora_config(settings: DPOSection) -> Any:
    if not settings.lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora.r,
        lora_alpha=settings.lora.alpha,
        lora_dropout=settings.lora.dropout,
        target_modules=settings.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def build_dpo_trainer(
    train: Any,
    held_out: Any | None,
    settings: DPOSection,
    model_path: str,
    out: Path,
    seed: int = 0,
    arguments: Any | None = None,
    reference_path: str | None = None,
    say: Callable[[str], None] = print,
) -> Any:
    """A DPOTrainer over prompt/chosen/rejected pairs with our defaults (the reference pass runs here).

    `arguments` replaces the DPOConfig made from `settings` (the benchmarks change one field at a time);
    `reference_path`: the frozen reference's folder, when it is not the policy at `model_path`.
    """
    from rlaif.training.dpo_tokenization import BatchedTokenizationDPOTrainer
    from rlaif.training.shared_prompt import SharedPromptDPOTrainer

    check_losses(settings)
    shared = uses_shared_prompt(settings)
    if settings.shared_prompt and not shared:
        say(f"train dpo: shared-prompt rows implement the sigmoid loss only; {settings.losses()} trains on TRL's rows")
    tokenizer = load_tokenizer(model_path)
    columns = ["prompt", "chosen", "rejected"]
    train = train.select_columns(columns)
    if settings.group_by_length:
        train = length_grouped_order(train, settings.batch_size, seed, shared)
    trainer_class = SharedPromptDPOTrainer if shared else BatchedTokenizationDPOTrainer
    return trainer_class(
        model=model_path,
        args=arguments or dpo_arguments(settings, checkpoint_folder(out), seed, len(train)),
        train_dataset=train,
        eval_dataset=held_out.select_columns(columns) if held_out is not None else None,
        processing_class=tokenizer,
        peft_config=lora_config(settings),
        ref_model=load_reference(reference_path) if reference_path and reference_path != model_path else None,
    )


def load_reference(path: str) -> Any:
    """A frozen reference model from its folder (TRL's own default loads the policy's folder again)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def train_dpo(
    train: Any,
    held_out: Any | None,
    settings: DPOSection,
    model_path: str,
    out: Path,
    seed: int = 0,
    resume_from: Path | None = None,
    reference_path: str | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Align the policy at `model_path` on prompt/chosen/rejected pairs against the reference at `reference_path`
    (default: the policy's start), continuing from the checkpoint `resume_from` when given; save it (LoRA merged)
    to `out`; returns its report."""
    started = time.monotonic()
    trainer = build_dpo_trainer(
        train, held_out, settings, model_path, out, seed, reference_path=reference_path, say=say
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics = trainer.evaluate() if held_out is not None else {}
    out.mkdir(parents=True, exist_ok=True)
    if settings.lora.enabled:
        save_merged_adapter(trainer, model_path, out)
    else:
        trainer.save_model(str(out))  # the model and tokenizer, by the main process
    report = {
        "stage": "dpo",
        "model": model_path,
        "reference": reference_path or model_path,
        "train_pairs": len(train),
        "eval_pairs": len(held_out) if held_out is not None else 0,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "implicit_reward_accuracy": metrics.get("eval_rewards/accuracies"),
        "eval_margin": metrics.get("eval_rewards/margins"),
        "eval_loss": metrics.get("eval_loss"),
        "held_out": held_out_margins(trainer, str(out), reference_path or model_path, held_out),
        "settings": settings.model_dump(mode="json"),
        "log": training_log(trainer),
        "wall_s": round(time.monotonic() - started, 1),
    }
    return report
