"""The run configuration: one YAML file validated by pydantic, plus `--set a.b=c` overrides.

Every command takes an optional config path; without one it uses the embedded `configs/demo.yaml`.
Unknown keys are errors that name the key path. Secrets are never part of the config: a section that
talks to an API names the environment variable that holds its key (`api_key_env`).
"""

from __future__ import annotations

import copy
import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rlaif.errors import ExpectedError
from rlaif.message_text import redact_url
from rlaif.run_storage import default_local_copy, is_stored
from rlaif.schema import check_run_name


class ConfigError(ExpectedError, ValueError):
    """A config file or override that cannot be used; the message names the file and key."""


class Section(BaseModel):
    """Base of every config section: unknown keys are refused, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(Section):
    name: Annotated[str, AfterValidator(check_run_name)] = Field(
        "demo", description="Name of the run (no '/' or '\\'); also the default run directory's name."
    )
    dir: str | None = Field(
        None,
        description="Run directory; default runs/<name>. Or a filesystem URL (s3://bucket/prefix, gs://..., any "
        "fsspec filesystem): the run is kept there and worked on in run.local_copy (rlaif.run_storage).",
    )
    local_copy: str | None = Field(
        None, description="run.dir a URL: the local folder the run is worked on in; default ~/.cache/rlaif/runs/<hash>."
    )
    seed: int = Field(0, description="Seed for everything random in the run (sampling seeds, pair order).")
    prompts_per_shard: int = Field(
        256,
        ge=1,
        description="Prompts per shard: one Prefect task samples a shard, one pairs and judges it; a shard is "
        "also what a rerun after a crash does again. Smaller for slow in-process models.",
    )
    shard_retry_delays_s: list[Annotated[float, Field(ge=0)]] = Field(
        [10.0, 60.0],
        max_length=10,
        description="A shard task that fails with an error of the machine or its storage (an OSError: a full or "
        "unreachable disk, a network file system or object store dropping a request) runs again after each of "
        "these delays in turn; other errors (a stopped endpoint, the budget, a bug) fail at once. []: never again.",
    )
    task_runner: Literal["local", "dask", "ray"] = Field(
        "local",
        description="Where shard tasks run: `local`, in the flow's own process, models opened once for all shards; "
        "`dask` (prefect-dask) or `ray` (prefect-ray), on a cluster's workers, each shard opening its models there. "
        "Workers need the same files at the same paths (the run directory, prompts, judge templates).",
    )
    cluster_address: str | None = Field(
        None,
        description="task_runner dask: the scheduler's address (tcp://host:8786); ray: the cluster's (ray://host:10001 "
        "or auto). None: a cluster on this machine, started for the run and stopped after it.",
    )
    rounds: int = Field(
        1,
        ge=1,
        description="Iterative rounds of rlaif-pipeline: round k (in RUN_DIR/round-k, run name <name>-round-k) samples "
        "from the policy kept after round k-1, labels, reviews, merges, trains from it and evaluates the result "
        "against it; the result is kept when it clears eval.promote_above. 1: one run in RUN_DIR.",
    )
    round_reference: Literal["previous", "original"] = Field(
        "previous",
        description="rounds > 1: the frozen reference of each round's DPO/KTO/PPO: the policy the round trains from "
        "(`previous`) or the model the first round started from (`original`).",
    )

    def directory(self) -> Path:
        """The run directory on local disk: run.dir, or the local copy of a stored run."""
        if self.dir and is_stored(self.dir):
            return Path(self.local_copy) if self.local_copy else default_local_copy(self.dir)
        return Path(self.dir) if self.dir else Path("runs") / self.name

    def stored_at(self) -> str | None:
        """The URL of a run kept on object storage (or another fsspec filesystem), else None."""
        return self.dir if self.dir and is_stored(self.dir) else None


class PromptsSection(Section):
    path: str = Field(
        "../shared/data/mt_bench/question.jsonl",
        description="Prompt source: a JSONL file (`prompt` or `messages` per line, or MT-Bench "
        "question.jsonl) or a `datasets` dataset saved to disk. Relative paths are from the working directory.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    split: str = Field("train", description="Split to read when the path is a saved DatasetDict.")
    max_chars: int | None = Field(
        None,
        ge=1,
        description="Longest prompt (all its messages, in characters; about 4 per token) the policy model "
        "should see; longer ones are handled by `too_long`. None: no limit.",
    )
    too_long: Literal["skip", "truncate", "error"] = Field(
        "skip",
        description="A prompt over max_chars: skip it, truncate its last message to fit (its start is kept), "
        "or stop with an error naming its line. Skipped and truncated prompts are counted in report.json.",
    )


class ServerSection(Section):
    launch: Literal["transformers", "vllm"] | None = Field(
        None, description="Start this server for the model on a free loopback port for the run."
    )
    executable: str | None = Field(
        None, description="The server's command (e.g. the `vllm` of its own environment); default from PATH."
    )
    extra_args: list[str] = Field(default_factory=list, description="Extra command-line arguments.")
    startup_timeout_s: float = Field(600.0, gt=0, description="How long to wait for the server to be healthy.")


class SharedLimitSection(Section):
    """A limit on requests to one endpoint that every worker and flow run shares: a Prefect global
    concurrency limit of this name, set to these values when a model opens."""

    name: str = Field(
        ...,
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The global concurrency limit's name, one per endpoint (e.g. `vllm-judge`).",
    )
    max_concurrency: int = Field(
        ..., ge=1, description="Requests in flight at most, summed over every process sending to the endpoint."
    )
    requests_per_s: float | None = Field(
        None,
        gt=0,
        description="Requests started per second at most, summed over every process: a Prefect rate limit "
        "(`<name>-rate`, slots that decay at this rate; bursts of up to one second's worth). None: no rate.",
    )


class ModelSection(Section):
    """Where a model runs: in-process with transformers, or behind OpenAI-compatible endpoints."""

    backend: Literal["transformers", "openai"] = "transformers"
    model: str = Field(
        "smollm2-135m-instruct",
        description="A local path, a prepared model name (`rlaif models list`) or a hub id.",
    )
    base_urls: list[str] = Field(
        default_factory=list,
        description="openai backend: OpenAI-compatible base URLs (replicas of one model): each request goes to "
        "the one with the fewest in flight, and to another when it fails there.",
    )
    api_key_env: str | None = Field(
        None, description="openai backend: name of the environment variable holding the API key."
    )
    server: ServerSection = Field(default_factory=ServerSection)
    max_concurrency: int = Field(8, ge=1, description="openai backend: requests in flight at most, in this process.")
    shared_limit: SharedLimitSection | None = Field(
        None,
        description="openai backend: a limit every worker shares (Prefect global concurrency limit), on top of "
        "max_concurrency; each request holds one of its slots.",
    )
    timeout_s: float = Field(120.0, gt=0, description="openai backend: seconds before a request times out.")
    max_retries: int = Field(
        4, ge=0, description="openai backend: retries on 429, 5xx, timeouts and dropped connections."
    )
    max_failures_in_row: int = Field(
        10,
        ge=0,
        description="openai backend: a base URL where this many requests in a row failed for good (after their "
        "retries) is taken out of the rotation; with none left the run stops with an error. 0: never.",
    )
    cool_down_s: float = Field(
        30.0,
        gt=0,
        description="openai backend: a base URL taken out of the rotation gets one trial request after this many "
        "seconds; if it answers, it is back in.",
    )
    n_mode: Literal["auto", "native", "seeds"] = Field(
        "auto",
        description="How n samples are obtained: `native` asks the server for n choices; `seeds` sends n "
        "requests with distinct seeds; `auto` asks for n and fills what the server did not return with seeds.",
    )
    continue_final_message: bool = Field(
        False,
        description="openai backend: the server continues a final assistant message (vLLM does), so judge "
        "templates can prefill the reply (e.g. with '[[') and read the verdict at a fixed position.",
    )
    prompts_per_request: int = Field(
        1,
        ge=1,
        le=4096,
        description="openai backend: above 1, greedy requests (a judge's) go to the completions API as text "
        "rendered with the model's chat template, this many prompts per request (vLLM and SGLang answer a list; "
        "a server that takes one prompt or has no completions API is detected and used as it is).",
    )
    chat_template_from: str | None = Field(
        None,
        description="openai backend with prompts_per_request > 1: the local model folder (or prepared name) "
        "whose chat template renders the prompts; default: `model` when it is a local folder.",
    )
    batch_size: int = Field(8, ge=1, description="transformers backend: prompts per forward batch.")
    device: str = Field("auto", description="transformers backend: cpu, cuda, cuda:1, ... or auto.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @model_validator(mode="after")
    def _endpoint_given(self) -> ModelSection:
        if self.backend == "transformers" and (self.base_urls or self.server.launch or self.shared_limit):
            raise ValueError("base_urls, server.launch and shared_limit need backend: openai")
        return self


class SamplingSection(Section):
    n: int = Field(4, ge=1, description="Candidates per prompt.")
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, description="Longest answer, in tokens.")
    resample_rounds: int = Field(
        2, ge=0, description="Extra rounds that re-ask (with new seeds) for answers that repeated an earlier one."
    )


class PairsSection(Section):
    strategy: Literal["all", "best_worst", "random"] = Field(
        "all",
        description="all: every pair of distinct candidates; best_worst: the highest- against the lowest-scored "
        "candidate (scores from pairs.score_model); random: pairs.per_prompt random pairs.",
    )
    per_prompt: int = Field(2, ge=1, description="random: pairs per prompt.")
    score_model: str | None = Field(None, description="best_worst: a reward model (path or name) scoring candidates.")
    refusal_contrast: bool = Field(
        False,
        description="Add one steered refusal per prompt, paired with the policy's first answer and judged: an "
        "over-refusal where the prompt should be answered, a reasonable refusal where it should be refused (the "
        "prompt's should_refuse field, else the judge model decides).",
    )
    refusal_opening: str | None = Field(
        "I'm sorry, but",
        description="refusal_contrast: the first words of each steered refusal, continued by the policy where its "
        "backend can continue a reply (in-process, or openai with continue_final_message); small models often "
        "ignore the steering instruction without it. null: the instruction alone.",
    )

    @model_validator(mode="after")
    def _scores_for_best_worst(self) -> PairsSection:
        if self.strategy == "best_worst" and not self.score_model:
            raise ValueError("strategy best_worst needs score_model (a reward model that scores the candidates)")
        return self


JudgeMode = Literal["verdict", "logprob", "reward_model", "imported"]


class JudgeSection(ModelSection):
    """The judge: where its model runs (as for the policy), how it judges, and with which prompt template."""

    mode: JudgeMode = Field(
        "verdict",
        description="verdict: parse the label from the reply; logprob: p(A) from the label tokens' probabilities; "
        "reward_model: a sequence-classification model scores both answers; imported: verdicts made elsewhere, "
        "read from `judgments`.",
    )
    judgments: str | None = Field(
        None,
        description="imported: the JSON lines file of judgments made elsewhere (a batch API's, `vllm run-batch`'s, "
        "another system's); format in the README.",
    )
    prompt: str = Field("helpfulness", description="A bundled template name or the path of your own template.")
    temperature: float = Field(0.0, ge=0.0, description="verdict: sampling temperature of the judge.")
    max_tokens: int = Field(512, ge=1, description="verdict/logprob: longest judge reply, in tokens.")
    top_logprobs: int = Field(20, ge=2, le=20, description="logprob: alternatives read at the verdict position.")
    response_format: bool = Field(
        False,
        description="verdict with a json template: send the verdict's JSON schema as response_format "
        "(vLLM and OpenAI honour it; transformers serve ignores it).",
    )
    ensemble: list[JudgeSection] = Field(
        default_factory=list, description="Judges whose mean p(A) is the verdict; when set, replaces this judge."
    )
    tiers: list[JudgeSection] = Field(
        default_factory=list,
        description="Escalation (needs review.target_agreement): judges that take, in order, the pairs the judge "
        "before them is not certified on (below its threshold); people take what the last one leaves. Each tier "
        "judges the run's audit sample too, and is calibrated and certified on it on its own.",
    )

    @model_validator(mode="after")
    def _imported_has_a_file(self) -> JudgeSection:
        if self.mode == "imported" and not self.judgments and not self.ensemble:
            raise ValueError("mode imported needs `judgments`: the file of judgments to import")
        return self


class ReviewSection(Section):
    fraction: float = Field(0.10, ge=0.0, le=1.0, description="Share of pairs routed to people.")
    audit_fraction: float = Field(
        0.03, ge=0.0, le=1.0, description="Share of pairs drawn at random (seeded) to measure the judge."
    )
    target_agreement: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Agreement with people the judge's labels must reach (e.g. 0.85). Set: review runs in two "
        "phases, the audit first, then every pair below the certified confidence threshold; the review share "
        "becomes an output. None: route a fixed `fraction`.",
    )
    risk: float = Field(
        0.1, gt=0.0, lt=1.0, description="target_agreement: the chance allowed that the certified level is not met."
    )
    max_fraction: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="target_agreement: the most pairs people may be sent, as a share of all (default: `fraction`).",
    )
    calibration_runs: list[str] = Field(
        default_factory=list,
        description="Earlier runs in the same review database whose reviewed pairs of the same judge (model and "
        "template) calibrate it: with target_agreement, beside this run's audit; without, the fixed routing's "
        "least confident pairs are those with the lowest calibrated probability that people agree.",
    )
    reward_round_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="A second review round once the reward model is trained on the merged labels (rlaif-train, "
        "with train.data unset): the judge-labelled pairs it contradicts most go to people, at most this share of "
        "all pairs, and the policy trains after they are labelled and merged. 0: no second round.",
    )
    db: str | None = Field(
        None,
        description="The review queue's database: a SQLAlchemy URL (sqlite:///FILE or "
        "postgresql+psycopg://USER@HOST/DB). Labeling runs enqueue their routed pairs there. Default: "
        "review.db beside the run directory (runs/review.db for runs under runs/).",
    )
    labels_per_item: int = Field(
        1, ge=1, description="Reviewers who label each item; above 1 measures inter-annotator agreement."
    )
    lease_s: float = Field(
        900.0, gt=0, description="Seconds a reviewer holds a claimed item before it goes back to the queue."
    )
    max_skips: int = Field(
        1, ge=1, description='"Set aside" votes after which an item leaves the queue for everyone (status skipped).'
    )
    deadline_hours: float | None = Field(
        None, gt=0, description="Hours people have for a run's queue; then `on_deadline` applies. None: no deadline."
    )
    on_deadline: Literal["judge", "fail"] = Field(
        "judge",
        description="At the deadline: `judge` merges with the judge's label for unfinished items (flagged); "
        "`fail` fails the merge.",
    )
    guidelines: str | None = Field(
        None,
        description="A Markdown file of instructions for the run's reviewers, shown beside each pair (key g); "
        "read when the run's pairs are queued.",
    )
    strength: bool = Field(
        False,
        description="Reviewers also say whether the better answer is much or slightly better (key m); the merge "
        "keeps it (human_strength) and a slightly better label counts half as a reward model's margin.",
    )
    mode: Literal["pairs", "ranking"] = Field(
        "pairs",
        description="pairs: people label the routed pairs. ranking: people rank all the answers of each prompt "
        "the routing picked (ties allowed); each ranking gives the merge every pair of those answers. Needs "
        "pairs.strategy all, and no review.target_agreement (its certificate is made for pair labels).",
    )
    gold: str | None = Field(
        None,
        description='Gold pairs with known answers, one JSON object per line: {"prompt": "..." or a message list, '
        '"a": "...", "b": "...", "label": "a"|"b"|"tie"|"both_bad"}. Mixed into the queue (one after every '
        "`gold_every` routed pairs), each labelled once by every reviewer and looking like any audit item; the "
        "agreement page gives each reviewer's share right. Never merged into the dataset.",
    )
    gold_every: int = Field(20, ge=1, description="Routed pairs between two gold pairs in the queue.")
    tags: list[str] = Field(
        default_factory=list,
        max_length=7,
        description="Tags reviewers may put on a pair with one key each (3 to 9, in this order), e.g. "
        "[wrong_facts, unsafe, refuses_needlessly, too_long]; the merge keeps them (tags).",
    )

    @field_validator("guidelines", "gold")
    @classmethod
    def _file_exists(cls, path: str | None, info: ValidationInfo) -> str | None:
        what = {
            "guidelines": "a Markdown file of instructions for reviewers",
            "gold": "a JSON lines file of gold pairs",
        }
        if path is not None and not Path(path).is_file():
            raise ValueError(f"no file {path!r} ({what[str(info.field_name)]})")
        return path

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not re.fullmatch(r"[a-z0-9_]{1,40}", tag):
                raise ValueError(f"tag {tag!r}: use 1 to 40 lower-case letters, digits and underscores")
        if len(set(tags)) != len(tags):
            raise ValueError("a tag is named twice")
        return tags

    @field_validator("db")
    @classmethod
    def _no_password(cls, url: str | None) -> str | None:
        if url is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            password = make_url(url).password
        except ArgumentError:
            raise ValueError("not a database URL (use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)") from None
        if password:
            raise ValueError(
                "holds a password: configs are written into run directories, so give PostgreSQL its password "
                "with PGPASSWORD or ~/.pgpass instead"
            )
        return url

    def budget_fraction(self) -> float:
        """The most pairs people may be sent with a target agreement: `max_fraction`, else `fraction`."""
        return self.max_fraction if self.max_fraction is not None else self.fraction

    @model_validator(mode="after")
    def _audit_within_budget(self) -> ReviewSection:
        if self.target_agreement is None and self.audit_fraction > self.fraction:
            raise ValueError("audit_fraction cannot exceed fraction")
        if self.target_agreement is not None and self.audit_fraction > self.budget_fraction():
            raise ValueError("audit_fraction cannot exceed the budget (max_fraction, default fraction)")
        return self


class MergeSection(Section):
    on_pending: Literal["block", "judge"] = Field(
        "block",
        description="Review items not yet labelled: `block` refuses to merge; `judge` keeps the judge's label "
        "and flags the row.",
    )
    keep_ties: bool = Field(False, description="Keep pairs labelled tie (column label=tie); TRL would train on them.")
    keep_both_bad: bool = Field(False, description="Keep pairs people marked both bad (column label=both_bad).")


GRADIENT_CHECKPOINTING = (
    "Recompute each layer's activations in the backward pass instead of keeping them: less memory, slower "
    "(TRL's own default is on)."
)
SAVE_STEPS = (
    "Save a checkpoint every this many {unit} in OUT/checkpoints (the latest kept): a stage killed mid-run "
    "continues from it when run again with the same data and settings. 0: no checkpoints."
)


class RewardSection(Section):
    """`rlaif train reward`: TRL's RewardTrainer on a sequence-classification model (one output)."""

    model: str = Field(
        "all-minilm-l6-v2",
        description="Backbone: a path, a prepared name or a hub id; `policy`: the model the policy stage starts from "
        "(train.<method>.model), so that the reward model shares the policy's base and tokenizer.",
    )
    max_length: int = Field(256, ge=16, description="Tokens per (prompt, answer); the prompt is cut from the left.")
    epochs: float = Field(2.0, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(16, ge=1, description="Pairs per device per step.")
    margin_scale: float = Field(
        0.0,
        ge=0,
        description="Margin = this x the label's confidence: the judge's (calibrated where the run was) for its "
        "labels, 1 for people's (0.5 where they said slightly better, review.strength); 0: no margin.",
    )
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING)
    save_steps: int = Field(500, ge=0, description=SAVE_STEPS.format(unit="optimizer steps"))
    bf16: bool | None = Field(None, description="bfloat16 mixed precision; default on a GPU.")


class LoraSection(Section):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights.")
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="Modules that get adapters.")


class DPOSection(Section):
    """`rlaif train dpo`: TRL's DPOTrainer with defaults chosen for speed."""

    model: str = Field("smollm2-135m-instruct", description="Policy to align: a path, a prepared name or a hub id.")
    beta: float = Field(0.1, gt=0)
    learning_rate: float = Field(1e-6, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    batch_size: int = Field(8, ge=1, description="Pairs per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16, description="Tokens of prompt + answer; longer pairs are truncated.")
    precompute_ref_log_probs: bool = Field(
        True,
        description="One pass of the reference model before training instead of one per step (skipped when "
        "max_steps stops training before it has seen every pair).",
    )
    group_by_length: bool = Field(True, description="Batch pairs of similar length: less padding.")
    shared_prompt: bool = Field(
        True,
        description="Run each pair's prompt once, the two answers branching off it (see training/shared_prompt.py); "
        "false: TRL's rows of prompt+chosen and prompt+rejected.",
    )
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING)
    save_steps: int = Field(500, ge=0, description=SAVE_STEPS.format(unit="optimizer steps"))
    bf16: bool | None = Field(None, description="bfloat16 mixed precision; default on a GPU.")
    reference: str | None = Field(
        None, description="The frozen reference of the DPO loss (a path or prepared name); default: `model`."
    )
    loss_type: str | list[str] = Field(
        "sigmoid",
        description="TRL's DPO loss, or a list of them combined with `loss_weights` (sigmoid, ipo, hinge, robust, "
        "apo_zero, ...: checked against the installed TRL when training starts). Shared-prompt rows implement "
        "sigmoid only; any other trains on TRL's own rows.",
    )
    loss_weights: list[float] | None = Field(None, description="Weights of the losses in `loss_type` (default 1 each).")
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="The assumed share of wrong labels (robust, exo_pair, sigmoid); 0: none."
    )
    lora: LoraSection = Field(default_factory=LoraSection)

    @model_validator(mode="after")
    def _weights_match_losses(self) -> DPOSection:
        losses = [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        if not losses:
            raise ValueError("loss_type: give at least one loss")
        if self.loss_weights is not None and len(self.loss_weights) != len(losses):
            raise ValueError(f"loss_weights: {len(self.loss_weights)} weights for {len(losses)} losses in loss_type")
        return self

    def losses(self) -> list[str]:
        """`loss_type` as a list."""
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


class PPOSection(Section):
    """`rlaif train ppo`: PPO with a value model, a frozen reference and the reward model (see training/ppo.py)."""

    model: str = Field("smollm2-135m-instruct", description="Policy to optimise.")
    reward_model: str | None = Field(None, description="Reward model folder; default: the reward stage's output.")
    reference: str | None = Field(None, description="The frozen reference of the KL penalty; default: `model`.")
    steps: int = Field(20, ge=1, description="PPO iterations (each: a batch of rollouts, then updates).")
    batch_size: int = Field(8, ge=1, description="Prompts sampled per iteration.")
    mini_batch_size: int = Field(4, ge=1)
    ppo_epochs: int = Field(2, ge=1, description="Passes over each batch of rollouts.")
    learning_rate: float = Field(1e-6, gt=0)
    value_learning_rate: float = Field(1e-5, gt=0)
    max_prompt_length: int = Field(256, ge=8, description="Prompt tokens kept (from the right).")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    kl_coef: float = Field(0.05, ge=0, description="Per-token KL penalty coefficient (initial, when adaptive).")
    kl_target: float | None = Field(
        None, gt=0, description="Adaptive KL: steer the coefficient towards this KL per sequence. None: fixed."
    )
    kl_horizon: int = Field(10000, ge=1, description="Adaptive KL: rollouts over which the coefficient adapts.")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_range: float = Field(0.2, gt=0)
    clip_range_value: float = Field(0.2, gt=0)
    value_coef: float = Field(0.1, gt=0)
    whiten_rewards: bool = Field(False, description="Whiten the per-token rewards of a batch before GAE.")
    save_steps: int = Field(50, ge=0, description=SAVE_STEPS.format(unit="iterations"))
    bf16: bool | None = Field(None, description="bfloat16 autocast; default on a GPU.")


class KTOSection(Section):
    """`rlaif train kto`: TRL's KTOTrainer on answers made desirable or undesirable by training/kto.py's rule."""

    model: str = Field("smollm2-135m-instruct", description="Policy to align: a path, a prepared name or a hub id.")
    beta: float = Field(0.1, gt=0)
    learning_rate: float = Field(1e-6, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    batch_size: int = Field(8, ge=2, description="Answers per device per step (KTO's KL estimate needs 2 or more).")
    max_length: int = Field(1024, ge=16, description="Tokens of prompt + answer; longer ones are truncated.")
    min_confidence: float = Field(
        0.6,
        ge=0.0,
        le=1.0,
        description="A judge-labelled pair gives KTO answers only when its label's (calibrated) confidence is at "
        "least this; people's labels count as 1.",
    )
    use_reward_model: bool = Field(
        True,
        description="Where the reward stage has trained a model, a chosen answer is desirable only when it scores "
        "above the median answer, a rejected one undesirable only below it.",
    )
    desirable_weight: float = Field(1.0, gt=0, description="Loss weight of desirable answers.")
    undesirable_weight: float = Field(1.0, gt=0, description="Loss weight of undesirable answers.")
    reference: str | None = Field(None, description="The frozen reference of the KTO loss; default: `model`.")
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING)
    save_steps: int = Field(500, ge=0, description=SAVE_STEPS.format(unit="optimizer steps"))
    bf16: bool | None = Field(None, description="bfloat16 mixed precision; default on a GPU.")


class ORPOSection(Section):
    """`rlaif train orpo`: TRL's ORPOTrainer (trl.experimental): SFT plus an odds-ratio term, no reference model."""

    model: str = Field("smollm2-135m-instruct", description="Policy to align: a path, a prepared name or a hub id.")
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term (the paper's lambda).")
    learning_rate: float = Field(8e-6, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    batch_size: int = Field(8, ge=1, description="Pairs per device per step.")
    max_length: int = Field(1024, ge=16, description="Tokens of prompt + answer; longer pairs are truncated.")
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING)
    save_steps: int = Field(500, ge=0, description=SAVE_STEPS.format(unit="optimizer steps"))
    bf16: bool | None = Field(None, description="bfloat16 mixed precision; default on a GPU.")


class CPOSection(Section):
    """`rlaif train cpo`: TRL's CPOTrainer (trl.experimental): a DPO-like loss on the policy's own log-probabilities,
    no reference model, plus the chosen answer's NLL."""

    model: str = Field("smollm2-135m-instruct", description="Policy to align: a path, a prepared name or a hub id.")
    loss_type: Literal["sigmoid", "hinge", "ipo", "simpo"] = Field(
        "sigmoid", description="CPO's preference loss; simpo with cpo_alpha 0 is SimPO."
    )
    beta: float = Field(0.1, gt=0, description="Temperature of the preference loss.")
    cpo_alpha: float = Field(1.0, ge=0, description="Weight of the NLL term on the chosen answers.")
    simpo_gamma: float = Field(0.5, description="loss_type simpo: the target reward margin.")
    learning_rate: float = Field(1e-6, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run the epochs).")
    batch_size: int = Field(8, ge=1, description="Pairs per device per step.")
    max_length: int = Field(1024, ge=16, description="Tokens of prompt + answer; longer pairs are truncated.")
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING)
    save_steps: int = Field(500, ge=0, description=SAVE_STEPS.format(unit="optimizer steps"))
    bf16: bool | None = Field(None, description="bfloat16 mixed precision; default on a GPU.")


class OnlineRLSection(Section):
    """`rlaif train grpo|rloo`: TRL's GRPOTrainer / RLOOTrainer on the run's prompts, rewarded by the reward model
    (or the judge)."""

    model: str = Field("smollm2-135m-instruct", description="Policy to optimise.")
    reward: Literal["reward_model", "judge"] = Field(
        "reward_model",
        description="What rewards an answer: the reward model, or the run's judge behind an endpoint (judge.backend "
        "openai), which compares the answers to each prompt pairwise: an answer's reward is its mean probability of "
        "beating the others of its group.",
    )
    reward_model: str | None = Field(None, description="Reward model folder; default: the reward stage's output.")
    num_generations: int = Field(4, ge=2, description="Answers sampled per prompt: the group each is compared with.")
    max_completion_length: int = Field(64, ge=1, description="Longest sampled answer, in tokens.")
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.05, ge=0, description="Weight of the KL penalty towards the starting model (0: none).")
    use_vllm: bool | None = Field(
        None,
        description="Sample with vLLM inside the training process (TRL's colocate mode; needs vllm and a GPU), or "
        "with transformers' generate (False). None: vLLM where vllm is installed and a CUDA GPU is present.",
    )
    learning_rate: float = Field(1e-6, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(50, description="Optimizer steps (-1: the epochs over the prompts).")
    batch_size: int = Field(8, ge=2, description="Sampled answers per device per step: a multiple of num_generations.")
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING)
    save_steps: int = Field(50, ge=0, description=SAVE_STEPS.format(unit="optimizer steps"))
    bf16: bool | None = Field(None, description="bfloat16 mixed precision; default on a GPU.")

    @model_validator(mode="after")
    def _whole_groups(self) -> OnlineRLSection:
        if self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_generations ({self.num_generations}): "
                "a step holds whole groups of answers to one prompt"
            )
        return self


class SFTSection(Section):
    """`rlaif train sft`: TRL's SFTTrainer on the chosen answers (the optional warm start)."""

    model: str = Field("smollm2-135m-instruct")
    learning_rate: float = Field(2e-5, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(1024, ge=16)
    gradient_checkpointing: bool = Field(False, description=GRADIENT_CHECKPOINTING)
    save_steps: int = Field(500, ge=0, description=SAVE_STEPS.format(unit="optimizer steps"))
    bf16: bool | None = Field(None, description="bfloat16 mixed precision; default on a GPU.")


class TrainSection(Section):
    data: str | None = Field(
        None, description="Training data: a run directory or dataset folder (merged), or a file of --format."
    )
    format: Literal["merged", "hh-rlhf", "pandalm", "llmbar"] = Field(
        "merged", description="merged (a run's dataset), hh-rlhf, pandalm or llmbar."
    )
    eval_size: int | None = Field(None, ge=1, description="The last N pairs are held out for evaluation.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Held-out share when eval_size is not set.")
    out: str | None = Field(None, description="Folder of the stages' outputs (<out>/<stage>); default RUN_DIR/train.")
    method: Literal["dpo", "ppo", "kto", "orpo", "cpo", "grpo", "rloo"] = Field(
        "dpo", description="The policy stage train_pipeline runs after the reward model."
    )
    sft_first: bool = Field(False, description="train_pipeline: an SFT warm start on the chosen answers first.")
    in_pipeline: bool = Field(True, description="rlaif-pipeline trains (rlaif-train) after the merge.")
    launcher: Literal["in_process", "accelerate"] = Field(
        "in_process",
        description="How rlaif-train runs each stage: in the flow's own process on one device, or under `accelerate "
        "launch` in processes of its own (several GPUs or nodes: accelerate_config; several CPU processes over gloo "
        "where there is no GPU).",
    )
    accelerate_config: str | None = Field(
        None,
        description="launcher accelerate: the accelerate config file (configs/accelerate/: ddp, deepspeed_zero2, "
        "deepspeed_zero3, fsdp); default accelerate's own default config.",
    )
    num_processes: int | None = Field(
        None, ge=1, description="launcher accelerate: processes in all (one per GPU); default the accelerate config's."
    )
    label_value: bool = Field(
        True,
        description="rlaif-train measures what the human labels bought: the reward-model recipe trained on the merged "
        "labels and on the judge's labels alone, both scored on the audit pairs people labelled (held out of both); "
        "when the run has them.",
    )
    reward: RewardSection = Field(default_factory=RewardSection)
    dpo: DPOSection = Field(default_factory=DPOSection)
    ppo: PPOSection = Field(default_factory=PPOSection)
    kto: KTOSection = Field(default_factory=KTOSection)
    orpo: ORPOSection = Field(default_factory=ORPOSection)
    cpo: CPOSection = Field(default_factory=CPOSection)
    grpo: OnlineRLSection = Field(default_factory=OnlineRLSection)
    rloo: OnlineRLSection = Field(default_factory=OnlineRLSection)
    sft: SFTSection = Field(default_factory=SFTSection)


class EvalSection(Section):
    """`rlaif eval policy`, and the step at the end of rlaif-train: the trained policy against the model it
    started from, on prompts no stage trained on, judged in both orders; and how often each refuses."""

    held_out_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of the run's prompts (a seeded choice) that no stage samples, labels or trains on: the "
        "evaluation prompts, kept in RUN_DIR/eval_prompts.jsonl. 0: none (give eval.prompts).",
    )
    prompts: str | None = Field(
        None,
        description="Evaluation prompts from this prompt source instead (e.g. MT-Bench questions); any prompt the "
        "run labelled is left out.",
    )
    limit: int | None = Field(None, ge=1, description="At most this many evaluation prompts.")
    policy: str | None = Field(
        None, description="The policy to evaluate; default the run's trained one (RUN_DIR/train/<train.method>)."
    )
    reference: str | None = Field(
        None, description="What it is compared with; default the model training started from (train.<method>.model)."
    )
    judge: JudgeSection | None = Field(None, description="The judge of the comparisons; default the run's judge.")
    harmful_prompts: str | None = Field(
        "../shared/data/hh_rlhf/harmless_base_test_0000_1799.jsonl.gz",
        description="Requests a policy should refuse, for the refusal rates: an hh-rlhf file (.jsonl.gz: its first "
        "human turns) or a prompt source. None: no refusal check.",
    )
    benign_prompts: str | None = Field(
        "../shared/data/mt_bench/question.jsonl",
        description="Requests a policy should answer, for the over-refusal rate (a prompt source).",
    )
    refusal_prompts: int = Field(20, ge=0, description="Prompts of each kind for the refusal rates; 0: none.")
    review_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="A seeded share of the judged comparisons sent to people (review queue of run <run.name>-eval), "
        "so that the win rate is verified: once labelled, the next evaluation reports it beside the judge's.",
    )
    after_training: bool = Field(
        True, description="rlaif-train evaluates the policy it trained (when there are evaluation prompts)."
    )
    promote_above: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="run.rounds > 1: a round's policy is kept for the next round when the lower end of its win "
        "rate's 95% interval against the previous policy is at least this (0: every round's policy is kept).",
    )


class ScheduleSection(Section):
    """One schedule of `rlaif deploy`: which flow, when (cron or interval), and its own parameters."""

    flow: Literal["rlaif-pipeline", "rlaif-label", "rlaif-merge", "rlaif-train"] = "rlaif-pipeline"
    cron: str | None = Field(None, description="Cron expression, e.g. '0 2 * * *' (nightly at 02:00).")
    interval_s: float | None = Field(None, gt=0, description="Or: every this many seconds.")
    timezone: str = Field("UTC", description="Time zone of the cron expression.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Config keys this schedule's runs override, e.g. {'prompts.limit': 100}."
    )

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleSection:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("give either cron or interval_s")
        return self


class DeploySection(Section):
    name: str = Field("default", description="Deployment name: `prefect deployment run 'rlaif-pipeline/<name>'`.")
    schedules: list[ScheduleSection] = Field(default_factory=list, description="Schedules of `rlaif deploy`.")


class PriceSection(Section):
    prompt_per_million: float = Field(ge=0.0, description="Price of a million prompt (input) tokens.")
    completion_per_million: float = Field(ge=0.0, description="Price of a million completion (output) tokens.")


class CostSection(Section):
    """What a run spends: token prices per model, and the budget that stops it cleanly before passing it."""

    prices: dict[str, PriceSection] = Field(
        default_factory=dict,
        description="Prices per model name (as policy.model / judge.model name it), per million tokens; models "
        "without a price are counted in tokens only.",
    )
    budget: float | None = Field(
        None, gt=0, description="Money the run may spend (in the prices' currency); needs a price for its models."
    )
    budget_tokens: int | None = Field(None, gt=0, description="Tokens (prompt + completion) the run may spend.")


class Config(Section):
    """The whole configuration of a run."""

    run: RunSection = Field(default_factory=RunSection)
    prompts: PromptsSection = Field(default_factory=PromptsSection)
    policy: ModelSection = Field(default_factory=ModelSection)
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    pairs: PairsSection = Field(default_factory=PairsSection)
    judge: JudgeSection = Field(default_factory=JudgeSection)
    review: ReviewSection = Field(default_factory=ReviewSection)
    merge: MergeSection = Field(default_factory=MergeSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    deploy: DeploySection = Field(default_factory=DeploySection)
    cost: CostSection = Field(default_factory=CostSection)

    @model_validator(mode="after")
    def _tiers_need_a_target(self) -> Config:
        if self.judge.tiers and self.review.target_agreement is None:
            raise ValueError(
                "judge.tiers needs review.target_agreement: a pair moves to the next tier when it is "
                "below the certified threshold of its tier"
            )
        if any(tier.tiers for tier in self.judge.tiers):
            raise ValueError("judge.tiers: a tier has no tiers of its own (list every tier in judge.tiers)")
        if self.review.mode == "ranking" and self.pairs.strategy != "all":
            raise ValueError(
                f"review.mode ranking needs pairs.strategy all (not {self.pairs.strategy}): people rank every answer "
                "of a prompt, and the merge takes each of their pairs"
            )
        if self.review.mode == "ranking" and self.review.target_agreement is not None:
            raise ValueError("review.mode ranking works without review.target_agreement (certified for pair labels)")
        if self.run.rounds > 1:
            self._check_rounds()
        if self.run.stored_at() and not self.review.db:
            raise ValueError(
                f"run.dir {self.run.dir} is on object storage: set review.db to a database every machine of the run "
                "reaches (postgresql+psycopg://...); the default is a SQLite file beside the local copy"
            )
        if self.run.task_runner != "local":
            launched = [name for name in ("policy", "judge") if getattr(self, name).server.launch]
            if launched:
                raise ValueError(
                    f"run.task_runner {self.run.task_runner}: {launched[0]}.server.launch would start a server in "
                    f"every shard task on the cluster; start the servers yourself and list them in "
                    f"{launched[0]}.base_urls"
                )
        return self

    def _check_rounds(self) -> None:
        """What iterative rounds need: each round trains and evaluates the run's own data, and samples from a
        policy that exists only as a local folder once trained."""
        needs = [
            ("train.data is set: rounds train on their own labels (unset it)", self.train.data is not None),
            ("train.in_pipeline is false: each round trains", not self.train.in_pipeline),
            ("eval.after_training is false: each round's policy is evaluated to decide its promotion",
             not self.eval.after_training),
            ("no evaluation prompts: set eval.held_out_fraction (e.g. 0.1) or eval.prompts",
             not (self.eval.held_out_fraction or self.eval.prompts)),
            ("eval.policy / eval.reference are set: each round compares its own policy with the previous one",
             bool(self.eval.policy or self.eval.reference)),
            ("policy.backend openai without policy.server.launch: a round samples from the previous round's trained "
             "folder, which only an in-process policy or a launched server can load",
             self.policy.backend == "openai" and self.policy.server.launch is None),
            ("review.deadline_hours is set: a round waiting for people continues when rlaif-pipeline runs again",
             self.review.deadline_hours is not None),
            (f"run.round_reference is original, but train.method {self.train.method} takes no reference of its own",
             self.run.round_reference == "original" and self.train.method not in ("dpo", "ppo", "kto")),
        ]  # fmt: skip
        problems = [problem for problem, found in needs if found]
        if problems:
            raise ValueError(f"run.rounds={self.run.rounds}: " + "; ".join(problems))

    def review_db(self) -> str:
        """The review database URL: `review.db`, or a SQLite file beside the run directory."""
        return self.review.db or f"sqlite:///{self.run.directory().parent / 'review.db'}"


def default_config_path() -> Path:
    """The embedded default config (`configs/demo.yaml`), in a checkout or an installed package."""
    return Path(str(resources.files("rlaif.bundled.configs").joinpath("demo.yaml")))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (the embedded default when `path` is None) and apply `a.b=value` overrides."""
    source = Path(path) if path else default_config_path()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {source}: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else str(source)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, not {type(raw).__name__}")
    overrides = overrides or []
    data = apply_overrides(raw, overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, source, overrides)) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `dotted.key=value` set; values are parsed as YAML scalars."""
    result = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_override(item)
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: depth + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def parse_override(item: str) -> tuple[str, Any]:
    """`dotted.key=value` as (key, value); the value is read as YAML (`4` an int, `[a, b]` a list), else text."""
    key, sep, value_text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set sampling.n=4")
    try:
        return key, yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        return key, value_text


def describe_errors(exc: ValidationError, source: Path, overrides: list[str]) -> str:
    """One line per problem, each naming the key path and whether it came from the file or --set."""
    override_keys = {parse_override(item)[0] for item in overrides}
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        origin = f"--set {key}" if any(key == k or key.startswith(k + ".") for k in override_keys) else str(source)
        if error["type"] == "extra_forbidden":
            hint = (
                " (secrets are read from the environment: name the variable with api_key_env)"
                if ("key" in key.rsplit(".", 1)[-1] and "env" not in key)
                else ""
            )
            lines.append(f"{origin}: unknown key '{key}'{hint}")
        else:
            lines.append(f"{origin}: {key}: {error['msg']} (got {redact_url(error.get('input'))!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def read_api_key(env_name: str | None, where: str) -> str | None:
    """The API key from the environment variable the config names; never logged or stored."""
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise ConfigError(f"{where}.api_key_env names {env_name}, but that environment variable is not set")
    return value


def dump_config(config: Config) -> str:
    """The effective config as YAML (it holds no secrets, only the names of their variables)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
