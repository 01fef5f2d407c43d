"""Our DPO trainers against TRL's own: shared-prompt rows give the same log-probs and losses, batched
tokenization the same ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlaif.training.shared_prompt import SharedPromptCollator, branch_attention_mask, shared_row


def test_a_pair_becomes_one_row_whose_branches_start_with_the_last_prompt_token():
    ids, positions, branch, completion = shared_row([1, 2, 3], [4, 5], [6], max_length=None)
    assert ids == [1, 2, 3, 4, 5, 3, 6]
    assert positions == [0, 1, 2, 3, 4, 2, 3]
    assert branch == [0, 0, 1, 1, 1, 2, 2]
    assert completion == [0, 0, 0, 1, 1, 0, 1]
    # keep_start truncation per answer: prompt + answer keeps its first 4 tokens
    ids, positions, _, completion = shared_row([1, 2, 3], [4, 5], [6, 7], max_length=4)
    assert ids == [1, 2, 3, 4, 3, 6] and positions == [0, 1, 2, 3, 2, 3] and completion == [0, 0, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="at least one prompt token"):
        shared_row([], [4], [5], max_length=None)


def test_each_branch_sees_the_prefix_and_itself_and_padding_is_never_seen():
    batch = SharedPromptCollator(pad_token_id=0, pad_to_multiple_of=8)(
        [{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 3, 6, 0]]
    mask = branch_attention_mask(batch["branch"])[0, 0]
    seen = {query: [key for key in range(8) if mask[query, key]] for query in range(8)}
    assert seen[1] == [0, 1]
    assert seen[4] == [0, 1, 2, 3, 4]  # chosen: prefix, then its branch (the last prompt token and itself)
    assert seen[6] == [0, 1, 5, 6]  # rejected: prefix and its own branch, never the chosen answer
    assert seen[7] == [0, 1, 7]  # padding sees the prefix and itself, and nothing sees it


def dpo_args(out: Path, **changes: object) -> object:
    from trl import DPOConfig

    settings = {"max_length": 64, **changes}  # 64: some pairs are cut, so truncation must match too
    return DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=4,
        learning_rate=1e-3,  # large enough that later steps differ from the first
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        **settings,
    )


def test_shared_prompt_rows_give_trl_s_reference_log_probs_and_losses(tiny_qwen2, tmp_path):
    from trl import DPOTrainer

    from rlaif.training.shared_prompt import SharedPromptDPOTrainer
    from rlaif.training.tokenizer import load_tokenizer

    model, pairs = tiny_qwen2
    tokenizer = load_tokenizer(model)
    trainers = [
        trainer_class(
            model=model,
            args=dpo_args(tmp_path / name, precompute_ref_log_probs=precompute),
            train_dataset=pairs,
            processing_class=tokenizer,
        )
        for name, trainer_class, precompute in (
            ("trl", DPOTrainer, True),
            ("shared", SharedPromptDPOTrainer, True),
            ("shared, reference forward in each step", SharedPromptDPOTrainer, False),
        )
    ]
    trl_rows, shared_rows = (trainer.train_dataset for trainer in trainers[:2])
    assert len(trl_rows) == len(shared_rows) == 12  # TRL drops the pairs whose prompt alone fills max_length
    assert any(len(p) + len(c) > 64 for p, c in zip(trl_rows["prompt_ids"], trl_rows["chosen_ids"], strict=True))
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        torch.testing.assert_close(
            torch.tensor(shared_rows[column]), torch.tensor(trl_rows[column]), rtol=1e-5, atol=1e-3
        )
    losses = []
    for trainer in trainers:
        trainer.train()
        losses.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert len(losses[0]) == 3 and len(set(losses[0])) == 3  # 12 pairs in 3 steps: 4 prompts fill max_length
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    assert losses[2] == pytest.approx(losses[0], rel=1e-3)


def test_shared_prompt_rows_refuse_attention_that_ignores_their_mask(tiny_qwen2, tmp_path):
    from rlaif.training.shared_prompt import SharedPromptDPOTrainer
    from rlaif.training.tokenizer import load_tokenizer

    model, pairs = tiny_qwen2
    with pytest.raises(ValueError, match="sdpa attention, not 'eager'"):
        SharedPromptDPOTrainer(
            model=model,
            args=dpo_args(tmp_path, precompute_ref_log_probs=True, model_init_kwargs={"attn_implementation": "eager"}),
            train_dataset=pairs,
            processing_class=load_tokenizer(model),
        )


def test_batched_tokenization_gives_trl_s_ids_on_real_pairs(tiny_qwen2, shared_data, tmp_path):
    from trl import DPOTrainer

    from rlaif.training.data import load_preferences
    from rlaif.training.dpo_tokenization import BatchedTokenizationDPOTrainer
    from rlaif.training.tokenizer import load_tokenizer

    model, _ = tiny_qwen2
    pairs = load_preferences(shared_data / "hh_rlhf" / "harmless_base_test_0000_1799.jsonl.gz", "hh-rlhf")
    pairs = pairs.select(range(200)).select_columns(["prompt", "chosen", "rejected"])  # multi-turn prompts
    tokenizer = load_tokenizer(model)
    rows = [
        trainer_class(
            model=model,
            args=dpo_args(tmp_path / name, max_length=128),  # some prompts fill it: both drop the same pairs
            train_dataset=pairs,
            processing_class=tokenizer,
        ).train_dataset
        for name, trainer_class in (("trl", DPOTrainer), ("batched", BatchedTokenizationDPOTrainer))
    ]
    assert len(rows[1]) == len(rows[0]) < 200
    for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert rows[1][column] == rows[0][column]
