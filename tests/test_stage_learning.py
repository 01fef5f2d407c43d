"""Every training stage learns, not only runs: on a tiny preference set that is separable by construction, each
stage must move the model the right way, by a margin that flipped labels would reverse.

The set: random-word prompts; each answer is a few random words, ending in the marker word " banana" in the
preferred answer and " apple" in the other (the same words otherwise). Held-out pairs have other prompts and
words. The reward model (MiniLM) must rank held-out pairs well above chance; DPO, KTO, ORPO and CPO must give held-out
pairs a positive implicit-reward margin against the starting model and raise the preferred answers'
log-probability; GRPO and RLOO, rewarded by that reward model, must raise their mean reward over the run and
sample the preferred marker more often than the policy they started from.
The policy is a two-layer random-weight Qwen2 (tests/conftest.py), trained with a large learning rate.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from rlaif.config import load_config
from rlaif.training.stages import run_stage

PAIRS, HELD_OUT = 48, 12
OFFLINE = ("dpo", "kto", "orpo", "cpo")  # the stages that learn from the pairs themselves


def marker_pairs(tokenizer, count: int, seed: int, flipped: bool = False) -> list[dict]:
    rng = random.Random(seed)

    def words(n: int) -> str:
        return tokenizer.decode([rng.randrange(1000, 20000) for _ in range(n)], skip_special_tokens=True).strip()

    rows = []
    for _ in range(count):
        answer = words(rng.randint(2, 6))
        good, bad = f"{answer} banana", f"{answer} apple"
        if flipped:
            good, bad = bad, good
        rows.append(
            {
                "prompt": [{"role": "user", "content": words(rng.randint(2, 8))}],
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
            }
        )
    return rows


@pytest.fixture(scope="module")
def marker_run(tiny_qwen2, tmp_path_factory):
    """The marker pairs as a merged dataset (the last HELD_OUT held out), the tiny policy, and the reward model
    trained on them (GRPO, RLOO and KTO use it)."""
    import datasets
    from transformers import AutoTokenizer

    tiny, _ = tiny_qwen2
    folder = tmp_path_factory.mktemp("marker-run")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    rows = marker_pairs(tokenizer, PAIRS, seed=1) + marker_pairs(tokenizer, HELD_OUT, seed=2)
    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "dataset"))
    config = stage_config(folder, tiny)
    reward = run_stage(config, "reward", say=lambda _: None)
    return folder, tiny, reward


def stage_config(folder: Path, tiny: str, *extra: str):
    return load_config(
        None,
        [
            f"train.data={folder / 'dataset'}",
            f"train.out={folder / 'train'}",
            f"train.eval_size={HELD_OUT}",
            "train.reward.epochs=4",
            "train.reward.learning_rate=0.0001",
            "train.reward.batch_size=8",
            "train.reward.max_length=64",
            *[f"train.{stage}.model={tiny}" for stage in OFFLINE],
            *[f"train.{stage}.{key}" for stage in OFFLINE for key in ("max_length=64", "epochs=3")],
            *[f"train.{stage}.learning_rate=0.002" for stage in ("dpo", "kto", "orpo", "cpo", "grpo", "rloo")],
            *[f"train.{stage}.batch_size=8" for stage in ("dpo", "kto", "orpo", "cpo", "grpo", "rloo")],
            *extra,
        ],
    )


def test_the_reward_model_ranks_held_out_marker_pairs_well_above_chance(marker_run):
    _, _, reward = marker_run
    assert reward["eval_pairs"] == HELD_OUT and reward["accuracy"] >= 0.9


@pytest.mark.parametrize("stage", OFFLINE)
def test_preference_stages_move_the_policy_towards_the_preferred_answers(marker_run, stage):
    folder, tiny, _ = marker_run
    report = run_stage(stage_config(folder, tiny), stage, say=lambda _: None)
    held_out = report["held_out"]
    assert held_out["pairs"] == HELD_OUT
    assert held_out["margin"] > 1.0 and held_out["accuracy"] >= 0.9, held_out
    if stage != "kto":  # KTO pushes the undesirable answers down more than it lifts the desirable ones
        assert held_out["chosen_log_prob_change"] > 0, held_out


@pytest.fixture(scope="module")
def either_fruit_policy(marker_run):
    """The tiny policy after a short SFT on one-word answers, half " banana" and half " apple": it samples both,
    so that GRPO and RLOO, rewarded by the reward model that prefers banana, have something to shift."""
    import datasets

    folder, tiny, _ = marker_run
    rows = [
        {
            "prompt": row["prompt"],
            "chosen": [{"role": "assistant", "content": fruit}],
            "rejected": [{"role": "assistant", "content": "-"}],
        }
        for row in datasets.load_from_disk(str(folder / "dataset"))
        for fruit in ("banana", "apple")
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "either-fruit"))
    sets = [f"train.data={folder / 'either-fruit'}", f"train.sft.model={tiny}", "train.sft.learning_rate=0.01"]
    sets += ["train.sft.epochs=3", "train.sft.max_length=64", "train.eval_size=2"]
    out = folder / "either-fruit-policy"
    run_stage(load_config(None, sets), "sft", say=lambda _: None, out=out)
    return str(out)


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_online_stages_raise_the_reward_models_score(marker_run, either_fruit_policy, stage):
    folder, tiny, _ = marker_run
    settings = [f"train.{stage}.model={either_fruit_policy}", f"train.{stage}.max_steps=24"]
    settings += [f"train.{stage}.num_generations=4", f"train.{stage}.max_completion_length=4"]
    report = run_stage(stage_config(folder, tiny, *settings), stage, say=lambda _: None)
    assert report["steps"] == 24 and report["reward_model"] == str(folder / "train" / "reward")
    assert report["reward_last"] > report["reward_first"] + 0.5, (report["reward_first"], report["reward_last"])
    before, after = banana_share(either_fruit_policy), banana_share(str(folder / "train" / stage))
    assert after > before + 0.2, (before, after)  # what people prefer, not only what the reward model scores


def banana_judge(body: dict) -> str | None:
    """A judge behind an endpoint that prefers the answer saying banana (a tie when both or neither do)."""
    from tests.scripted_openai_server import judge_prompt
    from tests.test_certified_review import ANSWER

    answers = dict(ANSWER.findall(judge_prompt(body)))
    a, b = ("banana" in answers["a"]), ("banana" in answers["b"])
    return "[[A]]" if a and not b else "[[B]]" if b and not a else "[[C]]"


def judge_config(server_url: str, *extra: str):
    return load_config(None, ["judge.backend=openai", f"judge.base_urls=[{server_url}]", "judge.model=judge", *extra])


def test_the_judge_rewards_each_answer_by_its_odds_against_the_others_of_its_group():
    """Each answer's reward: its mean probability of beating the other answers to its prompt, as the judge says
    (an identical answer counts as even); groups are told apart by their prompt."""
    from rlaif.judges.setup import load_judge
    from rlaif.training.judge_reward import group_rewards
    from tests.scripted_openai_server import ScriptedOpenAIServer

    prompts = [[{"role": "user", "content": "first"}]] * 4 + [[{"role": "user", "content": "second"}]] * 2
    answers = ["a banana", "an apple", "one apple", "a banana", "a banana", "no fruit"]
    with ScriptedOpenAIServer(reply=banana_judge) as judge:
        config = judge_config(judge.base_url, "judge.mode=verdict")
        rewards = asyncio.run(group_rewards(load_judge(config.judge), 0, prompts, answers))
        requests = len(judge.requests)
    assert rewards[:4] == pytest.approx([(1 + 1 + 0.5) / 3, (0 + 0.5 + 0) / 3, (0 + 0.5 + 0) / 3, (1 + 1 + 0.5) / 3])
    assert rewards[4:] == pytest.approx([1.0, 0.0])
    assert requests == 2 * (5 + 1)  # both orders of the 5 different pairs of the first group and the one of the second


def test_an_online_stage_rewarded_by_the_judge_behind_an_endpoint_learns_what_it_prefers(
    marker_run, either_fruit_policy
):
    """train.grpo.reward judge: the run's judge, behind an OpenAI-compatible endpoint, compares the answers to
    each prompt pairwise; the policy learns to say what the judge prefers. (Its mean reward says nothing here:
    the answers of a group share out the same total, so it is 0.5 at every step.)"""
    from tests.scripted_openai_server import ScriptedOpenAIServer

    stage = "grpo"
    folder, tiny, _ = marker_run
    settings = [f"train.{stage}.model={either_fruit_policy}", f"train.{stage}.max_steps=24"]
    settings += [f"train.{stage}.num_generations=4", f"train.{stage}.max_completion_length=4"]
    settings += [f"train.{stage}.reward=judge", f"train.out={folder / 'judge-rewarded'}"]
    with ScriptedOpenAIServer(reply=banana_judge) as judge:
        settings += ["judge.backend=openai", f"judge.base_urls=[{judge.base_url}]", "judge.model=judge"]
        report = run_stage(stage_config(folder, tiny, *settings, "judge.mode=verdict"), stage, say=lambda _: None)
        requests = len(judge.requests)
    assert report["steps"] == 24 and report["reward_model"] is None and report["reward"] == "judge_preference"
    assert requests > 0 and requests % 2 == 0  # every pair judged in both orders
    before, after = banana_share(either_fruit_policy), banana_share(str(folder / "judge-rewarded" / stage))
    assert after > before + 0.2, (before, after)


def banana_share(model: str) -> float:
    """The share of " banana" among a policy's sampled answers to 8 prompts, 4 answers each."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer, policy = AutoTokenizer.from_pretrained(model), AutoModelForCausalLM.from_pretrained(model)
    torch.manual_seed(0)
    answers = []
    for i in range(8):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"question {i}"}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        samples = policy.generate(**prompt, do_sample=True, max_new_tokens=4, num_return_sequences=4)
        answers += [tokenizer.decode(s[prompt["input_ids"].shape[1] :], skip_special_tokens=True) for s in samples]
    return sum("banana" in answer for answer in answers) / len(answers)


def test_the_reward_model_can_share_the_policys_base_and_tokenizer(marker_run):
    """train.reward.model: policy trains the reward model on the policy's own base (a causal LM with a new score
    head), which the judge's reward-model path then reads."""
    from transformers import AutoConfig, AutoTokenizer

    from rlaif.judges.reward_model import RewardModelScorer
    from rlaif.schema import PromptItem

    folder, tiny, _ = marker_run
    out = folder / "policy-based-reward"
    config = stage_config(folder, tiny, "train.reward.model=policy", "train.reward.learning_rate=0.001")
    report = run_stage(config, "reward", say=lambda _: None, out=out)
    assert report["model"] == tiny and AutoConfig.from_pretrained(out).architectures == [
        "Qwen2ForSequenceClassification"
    ]
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(tiny).get_vocab()
    assert report["accuracy"] >= 0.9
    prompt = PromptItem(messages=[{"role": "user", "content": "question"}])
    banana, apple = RewardModelScorer(str(out)).score([prompt, prompt], ["words banana", "words apple"])
    assert banana > apple


def test_the_train_flow_runs_the_configured_policy_stage_after_the_reward_model(marker_run):
    """rlaif-train with train.method orpo: the reward stage already trained on the same data is kept, then ORPO
    trains; the report page's held-out figure for it is the margins' share."""
    from rlaif.flows.train import train_pipeline
    from rlaif.pipeline.report_page import held_out_accuracies

    folder, tiny, reward = marker_run
    config = stage_config(folder, tiny, "train.method=orpo", "eval.after_training=false", f"run.dir={folder}")
    reports = train_pipeline(config)  # on the test process's Prefect server (tests/conftest.py)
    assert set(reports) == {"reward", "orpo"} and reports["reward"]["wall_s"] == reward["wall_s"]  # kept, not retrained
    assert reports["orpo"]["held_out"]["accuracy"] >= 0.9
    figures = held_out_accuracies(reports)
    assert figures["ORPO: pairs moved towards the preferred answer"] == (reports["orpo"]["held_out"]["accuracy"], 12)
