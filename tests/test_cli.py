"""The `rlaif` command line, run as a user runs it: help everywhere, clear errors, real sampling."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import typer.main
from typer.testing import CliRunner

from rlaif.cli.errors import ExpectedErrorsWithoutTraceback
from rlaif.cli.main import app
from rlaif.generation.protocol import BackendError
from rlaif.pipeline.report_page import artifact_tables

RLAIF = str(Path(sys.executable).parent / "rlaif")


def rlaif(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RLAIF, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if hasattr(command, "commands"):  # a group of subcommands
            paths.extend(command_paths(command, (*prefix, name)))
    return paths


def test_help_works_for_every_command():
    """The installed command's help, then every command's in this process (a process start each would cost
    about a second apiece)."""
    result = rlaif("--help")
    assert result.returncode == 0 and "Usage" in result.stdout
    paths = command_paths(typer.main.get_command(app))
    assert ("models", "prepare") in paths and ("sample",) in paths and ("demo",) in paths
    for path in paths:
        helped = CliRunner().invoke(app, [*path, "--help"])
        assert helped.exit_code == 0, (path, helped.output)
        assert "Usage" in helped.stdout


def test_logged_expected_failures_lose_their_traceback_and_others_keep_it():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ExpectedErrorsWithoutTraceback("%(levelname)s %(message)s"))
    logger = logging.getLogger("test_cli.expected_errors")
    logger.addHandler(handler)
    try:
        for error in (BackendError("the endpoint is down"), KeyError("a bug")):
            try:
                raise error
            except Exception:
                logger.error(f"task failed: {error!r}", exc_info=True)
    finally:
        logger.removeHandler(handler)
    expected, bug = stream.getvalue().split("ERROR task failed: KeyError")
    assert expected == "ERROR task failed: BackendError('the endpoint is down')\n"
    assert "Traceback (most recent call last)" in bug and "raise error" in bug


def test_a_config_with_an_unknown_key_fails_naming_it(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("sampling:\n  n: 2\n  best_of: 3\n")
    for command in (["config", "show"], ["sample"]):
        result = rlaif(*command, str(config))
        assert result.returncode == 2
        assert f"{config}: unknown key 'sampling.best_of'" in result.stderr
        assert "Traceback" not in result.stderr


def test_config_show_prints_the_effective_config():
    result = rlaif("config", "show", "--set", "sampling.n=7")
    assert result.returncode == 0
    assert "n: 7" in result.stdout and "smollm2-135m-instruct" in result.stdout


def test_both_entry_points_keep_the_exit_code_and_every_line_of_output(tmp_path):
    """`rlaif` and `python -m rlaif.cli` end by freezing the heap instead of collecting it (`rlaif.cli.main.run`):
    the exit status and every line printed must come through all the same."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  best_of: 3\n")
    in_process = CliRunner().invoke(app, ["config", "show"])
    assert in_process.exit_code == 0 and len(in_process.stdout.splitlines()) > 50
    for command in ([RLAIF], [sys.executable, "-m", "rlaif.cli"]):
        shown = subprocess.run([*command, "config", "show"], capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == in_process.stdout
        failed = subprocess.run([*command, "config", "show", str(bad)], capture_output=True, text=True, timeout=120)
        assert failed.returncode == 2 and "unknown key 'sampling.best_of'" in failed.stderr


def test_a_missing_prompt_file_is_a_clear_error(tmp_path):
    result = rlaif("sample", "--set", f"prompts.path={tmp_path}/none.jsonl")
    assert result.returncode == 2
    assert "prompts.path" in result.stderr and "none.jsonl does not exist" in result.stderr


def test_sample_through_a_launched_transformers_server(smollm2_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a fruit."}) + "\n" + json.dumps({"prompt": "Name a tree."}) + "\n")
    out = tmp_path / "candidates.jsonl"
    result = rlaif(
        "sample",
        "--out",
        str(out),
        "--set",
        f"prompts.path={prompts}",
        "--set",
        "policy.backend=openai",
        "--set",
        "policy.server.launch=transformers",
        "--set",
        "sampling.n=2",
        "--set",
        "sampling.max_tokens=12",
        "--set",
        "sampling.temperature=1.0",
    )
    assert result.returncode == 0, result.stderr
    assert "transformers serve is ready" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and len({r["prompt_id"] for r in rows}) == 2
    assert {r["model"] for r in rows} == {"smollm2-135m-instruct"}


def test_demo_stops_at_review_then_runs_to_the_end_and_its_report_renders(smollm2_dir, tmp_path, shared_data, browser):
    project = Path(__file__).resolve().parent.parent
    run = tmp_path / "run"
    small = ["prompts.limit=2", "sampling.n=3", "sampling.max_tokens=16", f"run.dir={run}", "review.fraction=0.4"]
    small += ["train.reward.epochs=1", "train.dpo.max_steps=1", "eval.limit=2", "eval.refusal_prompts=2"]
    sets = [item for value in small for item in ("--set", value)]

    stopped = rlaif("demo", *sets, cwd=project)
    assert stopped.returncode == 0, stopped.stderr
    assert "PROMPT: Compose an engaging travel blog post" in stopped.stdout  # a judged pair is shown
    assert "2 prompts, 6 candidates, 6 pairs judged in both orders" in stopped.stdout
    assert (
        "pairs wait for people" in stopped.stdout and f"rlaif review serve --db sqlite:///{tmp_path}" in stopped.stdout
    )
    token = stopped.stdout.split("sign in with this token (reviewer demo-reviewer):")[1].split()[0]
    assert len(token) > 30 and not (run / "dataset").exists()

    finished = rlaif("demo", "--auto-review", *sets, cwd=project)
    assert finished.returncode == 0, finished.stderr
    assert "(finished earlier or by another worker, reused)" in finished.stderr  # the first run's shards
    assert f"dataset: {run / 'dataset'}" in finished.stdout and f"report: {run / 'report.html'}" in finished.stdout
    rows = datasets.load_from_disk(str(run / "dataset"))
    assert "demo-auto-reviewer" in {name for names in rows["reviewers"] for name in names}
    for stage in ("reward", "dpo"):
        assert (run / "train" / stage / "eval_report.json").is_file()
    evaluation = json.loads((run / "eval" / "policy_eval.json").read_text())
    assert evaluation["prompts"] == 2 and evaluation["reference"] == "smollm2-135m-instruct"
    evaluated = {
        json.loads(line)["prompt_id"]
        for path in (run / "eval").glob("answers-*")
        for line in path.read_text().splitlines()
    }
    assert evaluated and not evaluated & set(rows["prompt_id"])  # no prompt the run labelled
    assert f"policy {run / 'train' / 'dpo'} against smollm2-135m-instruct" in finished.stdout
    assert "win rate" in finished.stdout and "refuses harmful requests (it should refuse): policy" in finished.stdout
    assert evaluation["refusals"]["harmful"]["policy"]["prompts"] == 2

    assert json.loads((run / "train" / "dpo" / "eval_report.json").read_text())["log"][0]["step"] == 1
    assert {"training-curves", "policy-win-rate"} <= set(artifact_tables(run))  # the charts as Prefect tables

    page = browser.new_page(viewport={"width": 1000, "height": 1400})
    problems, requested = [], []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("request", lambda request: requested.append(request.url))
    page.goto((run / "report.html").as_uri())
    sections = ["sampling", "judging", "review", "dataset", "training", "evaluation", "cost"]
    assert page.locator("section").evaluate_all("nodes => nodes.map(n => n.id)") == [f"section-{s}" for s in sections]
    charts = ["confidence", "length-bias", "label-sources", "training-curves", "accuracy", "win-rate", "cost"]
    for chart in charts:
        assert page.locator(f"#chart-{chart} svg").count() == 1, chart
    accuracy = page.locator("#chart-accuracy svg").text_content()
    assert "reward model: held-out accuracy" in accuracy and "DPO: implicit-reward accuracy" in accuracy
    assert "too few to say" in accuracy  # a handful of held-out pairs: no bare percentage
    assert "DPO: training loss" in page.locator("#chart-training-curves svg").text_content()
    for section in sections:
        shot = page.locator(f"#section-{section}").screenshot()
        assert len(shot) > 5_000 and shot[:8] == b"\x89PNG\r\n\x1a\n", section
    page.close()
    assert problems == [] and requested == [(run / "report.html").as_uri()]  # no error, nothing fetched


def test_a_missing_api_key_variable_is_named():
    env_name = "RLAIF_ABSENT_KEY"
    result = rlaif(
        "sample",
        "--set",
        "policy.backend=openai",
        "--set",
        "policy.base_urls=[http://127.0.0.1:9/v1]",
        "--set",
        f"policy.api_key_env={env_name}",
        "--set",
        "policy.model=some/model",
    )
    assert result.returncode == 2
    assert f"policy.api_key_env names {env_name}" in result.stderr
