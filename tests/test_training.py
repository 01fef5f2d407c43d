"""Training stages: loaders, the reward model (usable as a judge with the same figure), DPO and PPO on a
dataset the pipeline merged (checkpoints load back), and PPO's mechanics on tiny models with a toy reward."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import datasets
import pytest
import torch

from rlaif.config import PPOSection, load_config
from rlaif.labelled_data import LabelledDataError
from rlaif.review.store import ReviewStore
from rlaif.training.data import held_out_split, load_preferences
from rlaif.training.ppo import PPOTrainer, ValueModel, gae, token_bonus_reward
from tests.review_fixtures import RLAIF

HH = "hh_rlhf/harmless_base_test_0000_1799.jsonl.gz"


def test_hh_rlhf_pandalm_and_llmbar_load_as_conversational_pairs(shared_data):
    hh = load_preferences(shared_data / HH, "hh-rlhf")
    row = hh[0]
    assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
    assert row["chosen"] != row["rejected"] and len(hh) > 1700
    assert not any("Human:" in m["content"] for m in row["prompt"])  # the dialogue is split into turns
    for name, data_format in (("pandalm/testset-v1.json", "pandalm"), ("llmbar/natural.json", "llmbar")):
        pairs = load_preferences(shared_data / name, data_format)
        assert {"prompt", "chosen", "rejected", "confidence"} <= set(pairs.column_names) and len(pairs) > 50
    train, held_out = held_out_split(hh, 300, 0.1)
    assert len(held_out) == 300 and len(train) == len(hh) - 300 and held_out[0] == hh[len(hh) - 300]
    with pytest.raises(LabelledDataError, match="nothing would be left"):
        held_out_split(hh, len(hh), 0.1)


def file_names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_folder_that_is_not_a_merged_dataset_is_named(tmp_path):
    with pytest.raises(LabelledDataError, match="not a merged dataset"):
        load_preferences(tmp_path, "merged")


def test_a_merged_dataset_loads_usable_pairs_and_its_folder_is_only_read(tmp_path):
    folder = tmp_path / "dataset"
    answer = [{"role": "assistant", "content": "an answer"}]
    rows = [
        {
            "prompt": [{"role": "user", "content": f"question {i}"}],
            "chosen": answer,
            "rejected": answer,
            "label": ["a", "b", "tie", "both_bad"][i % 4],
            "confidence": None if i % 2 else 0.75,
        }
        for i in range(12)
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    files = file_names(folder)
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    for work in (work_dir, None):
        pairs = load_preferences(tmp_path, "merged", work_dir=work)
        assert len(pairs) == 6 and pairs.column_names == ["prompt", "chosen", "rejected", "confidence"]
        assert pairs["confidence"] == [0.75, 1.0] * 3  # the judge's, or 1.0 where it gave none
        pairs.map(lambda row: {"length": len(row["prompt"])})  # as a trainer's tokenization would
    assert file_names(folder) == files
    assert any(work_dir.iterdir())


def test_a_merged_label_is_as_sure_as_people_or_the_calibrated_judge(tmp_path):
    answer = [{"role": "assistant", "content": "an answer"}]
    cases = [("human", 0.2, 0.55, 1.0), ("judge", 1.0, 0.9, 0.8), ("judge", 1.0, 0.3, 0.0), ("judge", 0.6, None, 0.6)]
    rows = [
        {
            "prompt": [{"role": "user", "content": f"question {i}"}],
            "chosen": answer,
            "rejected": answer,
            "label": "a",
            "label_source": source,
            "confidence": confidence,
            "calibrated_agreement": calibrated,
        }
        for i, (source, confidence, calibrated, _) in enumerate(cases)
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "dataset"))
    pairs = load_preferences(tmp_path, "merged")
    assert pairs["confidence"] == pytest.approx([expected for *_, expected in cases])


def test_a_dpo_rerun_on_the_same_merged_data_reuses_its_tokenization_and_reference_log_probs(tiny_qwen2, tmp_path):
    from rlaif.training.stages import data_cache, run_stage

    model, pairs = tiny_qwen2
    merged = tmp_path / "run" / "dataset"
    pairs.save_to_disk(str(merged))
    dataset_files = file_names(merged)
    settings = ["train.dpo.batch_size=4", "train.dpo.max_length=64", "train.eval_size=4"]
    config = load_config(None, [f"run.dir={tmp_path / 'run'}", f"train.dpo.model={model}", *settings])

    def cache_files() -> dict[str, float]:
        return {str(path): path.stat().st_mtime for path in data_cache(config).glob("*/*")}

    first = run_stage(config, "dpo", say=print)
    cached = cache_files()
    columns = [datasets.Dataset.from_file(name).column_names for name in cached]
    assert any("ref_chosen_logps" in names for names in columns)  # the reference pass is among them
    second = run_stage(config, "dpo", say=print)
    assert cache_files() == cached  # nothing computed again, nothing rewritten
    assert second["train_loss"] == pytest.approx(first["train_loss"])
    assert file_names(merged) == dataset_files
    assert not any((tmp_path / "run" / "train" / "dpo").glob("*.arrow"))
    (first_merge,) = data_cache(config).iterdir()
    datasets.load_from_disk(str(merged)).select(range(15)).save_to_disk(
        str(tmp_path / "merged-again")
    )  # a new merge replaces the dataset (and its fingerprint)
    shutil.rmtree(merged)
    (tmp_path / "merged-again").rename(merged)
    run_stage(config, "dpo", say=print)
    (second_merge,) = data_cache(config).iterdir()  # the first merge's files are gone
    assert second_merge != first_merge


def test_a_tokenizer_is_cheap_to_fingerprint_and_tokenizes_renders_and_saves_as_the_model_s_own(tiny_qwen2, tmp_path):
    """`datasets` pickles the tokenizer a map or filter uses to fingerprint it; the tiny model's tokenizer class
    (Qwen2's) keeps its vocabulary and merges as Python objects beside the backend, which made each map a second or
    more. load_tokenizer drops that copy and nothing else."""
    from datasets.utils._dill import dumps
    from transformers import AutoTokenizer

    from rlaif.training.tokenizer import chat_ids, load_tokenizer

    model, _ = tiny_qwen2
    own, loaded = AutoTokenizer.from_pretrained(model), load_tokenizer(model)
    backend = len(dumps(loaded.backend_tokenizer))
    assert len(dumps(loaded)) < 1.2 * backend < len(dumps(own))  # the backend, and little besides
    text = "A poem:\n\tline  two, ünïcode 123 <|im_end|>"
    messages = [{"role": "user", "content": text}]
    assert loaded(text)["input_ids"] == own(text)["input_ids"]
    assert chat_ids(loaded, messages, add_generation_prompt=True) == chat_ids(own, messages, add_generation_prompt=True)
    loaded.save_pretrained(tmp_path / "saved")
    assert AutoTokenizer.from_pretrained(tmp_path / "saved")(text)["input_ids"] == own(text)["input_ids"]


def test_reward_model_trains_and_the_judge_reports_the_same_accuracy(shared_data, tmp_path):
    """A short run on the start of hh-rlhf (the full recipe is benchmarks/reward_model_cpu.py): the command's
    report and the judge's reading of the saved model agree. That the reward model learns is
    tests/test_stage_learning.py's test, on pairs separable by construction."""
    sample = tmp_path / "hh.jsonl"
    import gzip

    with gzip.open(shared_data / HH, "rt") as source:
        sample.write_text("".join(next(source) for _ in range(160)))
    out = tmp_path / "rm"
    result = subprocess.run(
        [
            RLAIF,
            "train",
            "reward",
            "--data",
            str(sample),
            "--format",
            "hh-rlhf",
            "--out",
            str(out),
            "--set",
            "train.eval_size=40",
            "--set",
            "train.reward.max_length=96",
            "--set",
            "train.reward.epochs=1",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "eval_report.json").read_text())
    assert report["eval_pairs"] == 40 and report["accuracy"] * 40 == round(report["accuracy"] * 40)
    assert json.loads(result.stdout)["accuracy"] == report["accuracy"]
    evaluated = subprocess.run(
        [
            RLAIF,
            "judge",
            "eval",
            "--data",
            str(sample),
            "--format",
            "hh-rlhf",
            "--last",
            "40",
            "--out",
            str(tmp_path / "eval.json"),
            "--set",
            "judge.mode=reward_model",
            "--set",
            f"judge.model={out}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    judged = json.loads((tmp_path / "eval.json").read_text())
    # The same pairs, scored by the judge's code path (other batches, other padding): a barely trained model
    # has margins so close to 0 that float noise may flip one pair, hardly more.
    assert judged["n"] == 40 and judged["agreement"] == pytest.approx(report["accuracy"], abs=1.01 / 40)


def tiny_trainer(kl_coef: float, seed: int = 0) -> PPOTrainer:
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    policy = LlamaForCausalLM(config)
    reference = LlamaForCausalLM(config)
    reference.load_state_dict(policy.state_dict())
    settings = PPOSection(
        batch_size=16,
        mini_batch_size=8,
        ppo_epochs=2,
        learning_rate=3e-3,
        value_learning_rate=3e-3,
        max_new_tokens=8,
        kl_coef=kl_coef,
    )
    return PPOTrainer(policy, reference, ValueModel(LlamaModel(config), 32), token_bonus_reward(7), settings, 0, None)


def run_tiny(trainer: PPOTrainer, steps: int = 30) -> list[dict[str, float]]:
    rng = random.Random(0)
    prompts = [[rng.randrange(1, 32) for _ in range(rng.randrange(3, 7))] for _ in range(64)]
    return [trainer.step(rng.sample(prompts, 16)) for _ in range(steps)]


def test_ppo_raises_the_toy_reward_and_the_kl_coefficient_holds_the_policy_near_the_reference():
    free = run_tiny(tiny_trainer(kl_coef=0.01))
    held = run_tiny(tiny_trainer(kl_coef=1.0))
    mean = lambda log, key, part: sum(s[key] for s in part(log)) / len(part(log))  # noqa: E731
    first, last = (lambda log: log[:5]), (lambda log: log[-5:])
    assert mean(free, "score", last) > mean(free, "score", first) + 0.3  # the bonus token is learnt
    assert mean(free, "kl", last) > 5.0  # with a tiny coefficient the policy moves far from the reference
    assert mean(held, "kl", last) < 1.0  # with a large one it stays close
    assert mean(held, "kl", last) < mean(free, "kl", last) / 5
    for stats in free + held:
        assert {"entropy", "clip_fraction", "policy_loss", "value_loss", "kl", "score"} <= set(stats)


def test_the_adaptive_kl_coefficient_moves_towards_its_target():
    trainer = tiny_trainer(kl_coef=0.01)
    trainer.settings = trainer.settings.model_copy(update={"kl_target": 0.5, "kl_horizon": 100})
    from rlaif.training.ppo import AdaptiveKLController

    trainer.controller = AdaptiveKLController(0.01, 0.5, 100)
    log = run_tiny(trainer, steps=20)
    assert log[-1]["kl_coef"] > 0.01  # KL above the target raises the coefficient


def test_gae_with_gamma_and_lambda_one_is_the_reward_to_go():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    assert returns.tolist() == [[1.0, 1.0, 1.0, 0.0]] and advantages.tolist() == returns.tolist()


@pytest.fixture(scope="module")
def merged_run(tmp_path_factory, prefect_server):
    """A run the pipeline labelled (scripted endpoint) and merged with the judge's labels for review items."""
    from rlaif.pipeline.merge import merge_run
    from tests.test_merge import labelled_run

    config = labelled_run(tmp_path_factory.mktemp("merged"), "merge.on_pending=judge")
    with ReviewStore.open(config.review_db()) as store:
        merge_run(config.run.directory(), config, store)
    return config


def test_the_train_flow_then_ppo_run_on_smollm2_from_a_merged_run_and_checkpoints_load_back(
    merged_run, smollm2_dir, tiny_qwen2
):
    from transformers import AutoConfig, AutoModelForCausalLM
    from typer.testing import CliRunner

    from rlaif.cli.main import app
    from rlaif.flows.train import train_pipeline

    run = merged_run.run.directory()
    assert datasets.load_from_disk(str(run / "dataset")).num_rows > 5
    dataset_files = file_names(run / "dataset")
    common = [f"run.dir={run}", "train.eval_size=4"]
    config = load_config(
        None,
        [
            *common,
            "train.method=dpo",
            "train.reward.epochs=1",
            "train.reward.max_length=64",
            "train.dpo.max_steps=2",
            "train.dpo.batch_size=2",
            "train.dpo.max_length=128",
            "eval.after_training=false",  # the policy evaluation has tests of its own (test_policy_eval, the demo)
        ],
    )
    reports = train_pipeline(config)
    assert set(reports) == {"reward", "dpo"} and reports["dpo"]["steps"] == 2
    assert reports["reward"]["accuracy"] is not None and reports["dpo"]["implicit_reward_accuracy"] is not None
    ppo_flags = [
        "train.ppo.steps=2",
        "train.ppo.batch_size=2",
        "train.ppo.mini_batch_size=2",
        "train.ppo.ppo_epochs=1",  # one optimizer step per iteration: PPO's learning has a test of its own
        "train.ppo.max_new_tokens=8",
    ]
    # The command in this process (CliRunner): its own process start would add the imports of torch,
    # transformers and TRL again, for each of the three commands (test_cli starts the real command).
    result = CliRunner().invoke(
        app, ["train", "ppo", *[item for flag in [*common, *ppo_flags] for item in ("--set", flag)]]
    )
    assert result.exit_code == 0, result.output[-3000:]
    ppo = json.loads((run / "train" / "ppo" / "eval_report.json").read_text())
    assert ppo["reward_model"] == str(run / "train" / "reward") and ppo["held_out_score_after"] is not None
    assert len((run / "train" / "ppo" / "ppo_log.jsonl").read_text().splitlines()) == 2
    # Three more stages from the command line, on the two-layer model (each of them on SmolLM2 took 9-14 s to train
    # and save; what they learn has tests of their own: test_stage_learning, test_training_resume).
    tiny, _ = tiny_qwen2
    extra = {
        "dpo-lora": ("dpo", ["train.dpo.lora.enabled=true", "train.dpo.lora.r=4"]),
        "sft": ("sft", []),
        "cpo": ("cpo", []),
    }
    shared = [f"model={tiny}", "max_steps=2", "batch_size=2", "max_length=128"]  # each stage's section
    for name, (stage, flags) in extra.items():
        settings = [*common, *[f"train.{stage}.{setting}" for setting in shared], *flags]
        sets = [item for flag in settings for item in ("--set", flag)]
        result = CliRunner().invoke(app, ["train", stage, "--out", str(run / "train" / name), *sets])
        assert result.exit_code == 0, (name, result.output[-3000:])
        assert json.loads(result.stdout)["steps"] == 2  # stdout holds the report alone
    for stage, start in [("dpo", smollm2_dir), ("ppo", smollm2_dir), *[(name, tiny) for name in extra]]:
        saved = AutoModelForCausalLM.from_pretrained(run / "train" / stage).config  # each loads back
        started = AutoConfig.from_pretrained(start)
        assert (saved.vocab_size, saved.num_hidden_layers) == (started.vocab_size, started.num_hidden_layers), stage
    assert not (run / "train" / "dpo-lora" / "adapter_config.json").exists()  # the adapters are merged in
    assert not (run / "train" / "dpo-lora" / "lora-adapter").exists()  # merged from its saved files, then removed
    base = AutoModelForCausalLM.from_pretrained(tiny).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(run / "train" / "dpo-lora").state_dict()
    changed = [name for name in base if "q_proj" in name and not torch.equal(base[name], merged[name])]
    assert changed, "the merged model holds the base weights unchanged: the trained adapter was not merged in"
    # The stages' tokenization and reference log-probs were not cached into the merged dataset's folder.
    assert file_names(run / "dataset") == dataset_files


def test_ppo_without_a_reward_model_says_how_to_get_one(tmp_path, shared_data):
    result = subprocess.run(
        [
            RLAIF,
            "train",
            "ppo",
            "--data",
            str(shared_data / "llmbar" / "natural.json"),
            "--format",
            "llmbar",
            "--set",
            f"run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "PPO needs a reward model" in result.stderr


def test_train_rejects_an_unknown_stage_and_bad_settings():
    assert subprocess.run([RLAIF, "train", "grpoo"], capture_output=True, text=True).returncode == 2
    with pytest.raises(Exception, match="train.dpo.beta"):
        load_config(None, ["train.dpo.beta=-1"])


def stage_arguments(stage: str, output_dir: Path, seed: int, **settings: Any) -> Any:
    """The TRL config a stage makes from its config section built with `settings`."""
    from rlaif.config import (
        CPOSection,
        DPOSection,
        KTOSection,
        OnlineRLSection,
        ORPOSection,
        RewardSection,
        SFTSection,
    )
    from rlaif.training.dpo import dpo_arguments
    from rlaif.training.kto import kto_arguments
    from rlaif.training.online_rl import online_arguments
    from rlaif.training.reference_free import cpo_arguments, orpo_arguments
    from rlaif.training.reward import reward_arguments
    from rlaif.training.sft import sft_arguments

    made = {
        "reward": lambda: reward_arguments(RewardSection(**settings), output_dir, seed),
        "dpo": lambda: dpo_arguments(DPOSection(**settings), output_dir, seed, train_pairs=8),
        "sft": lambda: sft_arguments(SFTSection(**settings), output_dir, seed),
        "kto": lambda: kto_arguments(KTOSection(**settings), output_dir, seed),
        "orpo": lambda: orpo_arguments(ORPOSection(**settings), output_dir, seed),
        "cpo": lambda: cpo_arguments(CPOSection(**settings), output_dir, seed),
        "grpo": lambda: online_arguments("grpo", OnlineRLSection(**settings), output_dir, seed),
        "rloo": lambda: online_arguments("rloo", OnlineRLSection(**settings), output_dir, seed),
    }
    return made[stage]()


TRL_STAGES = ["reward", "dpo", "sft", "kto", "orpo", "cpo", "grpo", "rloo"]


@pytest.mark.parametrize("stage", TRL_STAGES)
@pytest.mark.parametrize("checkpointing", [True, False])
def test_gradient_checkpointing_is_our_setting_and_set_without_a_deprecation_warning(tmp_path, stage, checkpointing):
    """TRL's configs default to checkpointing on; ours to off. Newer transformers warn about the old field name."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        arguments = stage_arguments(stage, tmp_path, 0, gradient_checkpointing=checkpointing)
    assert arguments.gradient_checkpointing is checkpointing
    assert getattr(arguments, "activation_checkpointing", checkpointing) is checkpointing


def test_stages_default_to_no_gradient_checkpointing():
    from rlaif.config import TrainSection

    sections = TrainSection()
    assert not any(getattr(sections, stage).gradient_checkpointing for stage in TRL_STAGES)


@pytest.mark.parametrize("stage", TRL_STAGES)
def test_every_stage_takes_the_shared_trainer_arguments_from_its_section(tmp_path, stage):
    """bf16, learning rate, batch size, epochs, save_steps and seed mean the same in every stage (the reward stage
    used to force bf16 to "on a GPU" whatever its section said)."""
    shared = {"bf16": True, "learning_rate": 3e-4, "batch_size": 4, "epochs": 2.0, "save_steps": 7}
    arguments = stage_arguments(stage, tmp_path, 5, **shared)
    assert arguments.bf16 is True
    assert (arguments.learning_rate, arguments.per_device_train_batch_size, arguments.num_train_epochs) == (
        3e-4,
        4,
        2.0,
    )
    assert (arguments.save_steps, arguments.seed, arguments.use_cpu) == (7, 5, True)


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_the_online_stages_sample_with_vllm_on_a_gpu_or_when_asked(tmp_path, stage):
    """use_vllm reaches TRL's config (colocated in the training process); by default only where vllm and a GPU
    are (neither is here: vLLM itself cannot run on this CPU machine, so only the setting is checked)."""
    assert not stage_arguments(stage, tmp_path, 0).use_vllm
    assert not stage_arguments(stage, tmp_path, 0, use_vllm=False).use_vllm
    arguments = stage_arguments(stage, tmp_path, 0, use_vllm=True)
    assert arguments.use_vllm and arguments.vllm_mode == "colocate"


def test_every_dpo_loss_of_the_installed_trl_trains_and_a_wrong_one_is_named(tiny_qwen2, tmp_path):
    """Each of TRL's DPO losses (and a weighted mix) runs a step; those the shared-prompt rows do not implement
    say so and train on TRL's rows; an unknown loss, or exo_pair without label smoothing, stops before anything
    is computed, naming the key."""
    from rlaif.config import ConfigError, DPOSection
    from rlaif.training.dpo import build_dpo_trainer, installed_losses

    tiny, pairs = tiny_qwen2
    losses = installed_losses()
    assert {"sigmoid", "ipo", "hinge", "robust", "apo_zero", "sigmoid_norm"} <= set(losses)
    runs = [[loss] for loss in losses] + [["sigmoid", "ipo"]]
    for loss_type in runs:
        settings = DPOSection(
            loss_type=loss_type,
            loss_weights=[1.0, 0.5] if len(loss_type) == 2 else None,
            label_smoothing=0.1 if loss_type == ["exo_pair"] else 0.0,
            max_steps=1,
            batch_size=4,
            max_length=64,
            precompute_ref_log_probs=False,
        )
        said: list[str] = []
        trainer = build_dpo_trainer(pairs, None, settings, tiny, tmp_path / "_".join(loss_type), say=said.append)
        assert trainer.train().global_step == 1, loss_type
        assert trainer.args.loss_type == loss_type
        fell_back = loss_type != ["sigmoid"] or settings.label_smoothing > 0
        assert (said == [f"train dpo: shared-prompt rows implement the sigmoid loss only; {loss_type} trains on "
                         "TRL's rows"]) is fell_back  # fmt: skip
    with pytest.raises(ConfigError, match="train.dpo.loss_type: 'sigmod' is not a DPO loss of the installed TRL"):
        build_dpo_trainer(pairs, None, DPOSection(loss_type="sigmod"), tiny, tmp_path / "wrong")
    with pytest.raises(ConfigError, match="exo_pair needs train.dpo.label_smoothing"):
        build_dpo_trainer(pairs, None, DPOSection(loss_type="exo_pair"), tiny, tmp_path / "exo")
    with pytest.raises(Exception, match="loss_weights: 1 weights for 2 losses"):
        load_config(None, ["train.dpo.loss_type=[sigmoid, ipo]", "train.dpo.loss_weights=[1.0]"])


def test_kto_calls_an_answer_good_or_bad_only_on_an_absolute_signal():
    from rlaif.training.kto import unpaired_rows

    def pair(name: str, confidence: float, both_bad: bool = False) -> dict[str, Any]:
        answer = [{"role": "user", "content": name}]
        return {"prompt": answer, "chosen": [{"role": "assistant", "content": f"{name}+"}],
                "rejected": [{"role": "assistant", "content": f"{name}-"}], "confidence": confidence,
                "both_bad": both_bad}  # fmt: skip

    pairs = [pair("sure", 0.9), pair("people", 1.0), pair("unsure", 0.3), pair("bad", 1.0, both_bad=True)]
    labelled = {(r["completion"][0]["content"], r["label"]) for r in unpaired_rows(pairs, 0.6)}
    assert labelled == {("sure+", True), ("sure-", False), ("people+", True), ("people-", False),
                        ("bad+", False), ("bad-", False)}  # fmt: skip
    # With the reward model's scores: "sure"'s chosen answer scores below the median, "people"'s rejected one above.
    scores = ([0.0, 5.0, 1.0, 0.0], [-3.0, 4.0, 1.0, 0.0])
    labelled = {(r["completion"][0]["content"], r["label"]) for r in unpaired_rows(pairs, 0.6, scores)}
    assert labelled == {("sure-", False), ("people+", True), ("bad+", False), ("bad-", False)}


def test_every_accelerate_config_loads_with_the_installed_accelerate():
    """The example files of configs/accelerate/ are read by the installed accelerate as `accelerate launch`
    reads them (an unknown or misspelt key fails); their runs need GPUs, which this machine has not."""
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    kinds = {path.stem: load_config_from_file(str(path)).distributed_type.value for path in folder.glob("*.yaml")}
    assert kinds == {"ddp": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED", "fsdp": "FSDP"}
