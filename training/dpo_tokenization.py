"""Batched tokenization of conversational preference pairs, with TRL's ids.

TRL's DPOTrainer tokenizes pair by pair: three chat-template calls per pair (prompt, prompt+chosen,
prompt+rejected), each a separate call of the tokenizer; for 1,024 pairs of a few hundred tokens
that is about 5 s, as long as a third of the training loop on a GPU. Here every chat is rendered
with its template and each batch of pairs goes through the fast tokenizer in one call, which
spreads it over all cores. The split into prompt and answers is TRL's (where the prompt alone and
prompt+answer diverge), so the ids are the ones TRL makes; the tests check that.
"""

from __future__ import annotations

import logging
from typing import Any

from trl import DPOTrainer
from trl.data_utils import common_prefix_length, is_conversational

from rlaif.training.processes import main_process_first

log = logging.getLogger(__name__)

EXTRA_COLUMNS = {"tools", "chat_template_kwargs", "images", "image"}  # left to TRL's own tokenization


def tokenize_dpo_pairs(batch: dict[str, list[Any]], tokenizer: Any) -> dict[str, list[list[int]]]:
    """prompt_ids, chosen_ids and rejected_ids of a batch of conversational pairs."""

    def render(messages: list[dict[str, Any]], **options: Any) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, **options)

    prompts = [render(prompt, add_generation_prompt=True) for prompt in batch["prompt"]]
    chosen = [render(prompt + answer) for prompt, answer in zip(batch["prompt"], batch["chosen"], strict=True)]
    rejected = [render(prompt + answer) for prompt, answer in zip(batch["prompt"], batch["rejected"], strict=True)]
    ids = tokenizer(prompts + chosen + rejected, add_special_tokens=False)["input_ids"]
    count = len(prompts)
    output: dict[str, list[list[int]]] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    diverged = 0
    for prompt_ids, chosen_ids, rejected_ids in zip(ids[:count], ids[count : 2 * count], ids[2 * count :], strict=True):
        cut = min(common_prefix_length(prompt_ids, chosen_ids), common_prefix_length(prompt_ids, rejected_ids))
        diverged += cut < len(prompt_ids)
        output["prompt_ids"].append(prompt_ids[:cut])
        output["chosen_ids"].append(chosen_ids[cut:])
        output["rejected_ids"].append(rejected_ids[cut:])
    if diverged:
        log.warning(
            "%d of %d tokenized prompts are not a prefix of prompt+answer (the chat template renders the prompt "
            "alone differently): their answers start where the two diverge",
            diverged,
            count,
        )
    return output


class BatchedTokenizationDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer, tokenizing plain conversational pairs in batches (anything else goes to TRL's own)."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        from datasets import Dataset

        first = next(iter(dataset))
        if not isinstance(dataset, Dataset) or not is_conversational(first) or EXTRA_COLUMNS & set(first):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        with main_process_first():  # as TRL: one process writes the cache, the others read it
            dataset = dataset.map(
                tokenize_dpo_pairs,
                fn_kwargs={"tokenizer": getattr(processing_class, "tokenizer", processing_class)},
                batched=True,
                desc=f"Tokenizing {dataset_name} dataset",
            )
            if args.max_length is not None and args.truncation_mode == "keep_start":
                # As TRL: a prompt that fills max_length leaves no answer token to learn from.
                dataset = dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)
        return dataset
