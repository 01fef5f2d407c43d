"""Secrets and exposure: a canary API key stays out of everything the pipeline writes or logs, and the
parameters a remote caller can set cannot reach outside the allowed directories.

The judge endpoint sits behind a proxy that answers some requests with a 401 quoting the key, as
OpenAI's "Incorrect API key provided" does, so the key is offered to every error path: judgments,
the review queue and database, reports, the dataset card, the command's output and Prefect's logs,
artifacts and run records are all searched for it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid

import httpx
import pytest

from rlaif.config import ConfigError
from rlaif.flows.parameters import check_deployment_parameters
from tests.reliability.fault_proxy import FaultProxy
from tests.review_fixtures import ReviewServer
from tests.scripted_openai_server import ScriptedOpenAIServer
from tests.test_labeling_flow import RLAIF, fake_judge_or_policy, judgments_of, prompts_file, scripted_overrides

CANARY = f"sk-canary-{uuid.uuid4().hex}"


def sets(overrides: list[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


async def prefect_records() -> str:
    """Everything the Prefect server holds about the runs: flow and task runs, logs, artifacts, as JSON."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        records = [
            *await client.read_flow_runs(),
            *await client.read_task_runs(),
            *await client.read_logs(),
            *await client.read_artifacts(),
        ]
    assert records
    return "\n".join(record.model_dump_json() for record in records)


def test_a_canary_api_key_never_appears_in_logs_files_reports_cards_or_prefect(tmp_path, prefect_server):
    env = {**os.environ, "RLAIF_CANARY_KEY": CANARY, "PREFECT_API_URL": prefect_server}
    run = tmp_path / "run"
    outputs = []
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as upstream:
        with FaultProxy(upstream.base_url, {"echo_key": 0.3}, seed=5) as judge_proxy:
            overrides = scripted_overrides(
                upstream,
                prompts_file(tmp_path, 10),
                run,
                f"judge.base_urls=[{judge_proxy.base_url}]",
                "policy.api_key_env=RLAIF_CANARY_KEY",
                "judge.api_key_env=RLAIF_CANARY_KEY",
            )
            labelled = subprocess.run([RLAIF, "label", *sets(overrides)], env=env, capture_output=True, text=True)
            assert labelled.returncode == 0, labelled.stderr[-3000:]
            merged = subprocess.run(
                [RLAIF, "merge", str(run), "--on-pending", "judge"], env=env, capture_output=True, text=True
            )
            assert merged.returncode == 0, merged.stderr[-3000:]
            outputs += [labelled.stdout, labelled.stderr, merged.stdout, merged.stderr]
        with FaultProxy(upstream.base_url, {"echo_key": 1.0}) as policy_proxy:  # sampling fails: the run stops
            overrides += [f"policy.base_urls=[{policy_proxy.base_url}]", f"run.dir={tmp_path / 'failed'}"]
            failed = subprocess.run([RLAIF, "label", *sets(overrides)], env=env, capture_output=True, text=True)
            assert failed.returncode == 2 and "HTTP 401: Incorrect API key provided: [API key]." in failed.stderr
            outputs += [failed.stdout, failed.stderr]

    # The key was really sent, and really quoted back into the pipeline's error paths.
    assert f"Bearer {CANARY}" in judge_proxy.authorizations and judge_proxy.faults["echo_key"] > 0
    refused = [j for j in judgments_of(run) if j.status == "backend_error"]
    assert refused and all("Incorrect API key provided: [API key]" in j.error for j in refused)
    assert (run / "dataset" / "README.md").is_file()

    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "review.db" for path in written) and any(path.name == "report.json" for path in written)
    for path in written:
        assert CANARY.encode() not in path.read_bytes(), path
    for output in outputs:
        assert CANARY not in output
    assert CANARY not in asyncio.run(prefect_records())


@pytest.mark.parametrize(
    ("config", "overrides", "says"),
    [
        ("../outside.yaml", {}, "config: ../outside.yaml is outside"),
        ("/etc/passwd", {}, "config: /etc/passwd is outside"),
        (None, {"prompts.path": "/etc/shadow"}, "prompts.path: /etc/shadow is outside"),
        (None, {"prompts.path": "data/../../../etc/passwd"}, "prompts.path: data/../../../etc/passwd is outside"),
        (None, {"run.dir": "/tmp/elsewhere"}, "run.dir: /tmp/elsewhere is outside"),
        (None, {"judge.prompt": "~/.ssh/id_rsa"}, "judge.prompt: ~/.ssh/id_rsa is outside"),
        (None, {"policy.model": "/root/.cache/huggingface"}, "policy.model: /root/.cache/huggingface is outside"),
        (None, {"train.out": "link/escape"}, "train.out: link/escape is outside"),  # a symlink out of the root
        (None, {"judge.api_key_env": "AWS_SECRET_ACCESS_KEY"}, "judge.api_key_env cannot be set"),
        (None, {"judge.base_urls": ["http://attacker.invalid/v1"]}, "judge.base_urls cannot be set"),
        (None, {"policy.server.executable": "/bin/sh"}, "policy.server.executable cannot be set"),
        (None, {"policy.server.extra_args": ["-c", "id"]}, "policy.server.extra_args cannot be set"),
        (None, {"review.db": "postgresql://attacker.invalid/x"}, "review.db cannot be set"),
        (
            None,
            {"judge.ensemble": [{"backend": "openai", "base_urls": ["http://attacker.invalid/v1"]}]},
            "judge.ensemble.0.base_urls cannot be set",
        ),
        (None, {"judge.ensemble": [{"model": "/etc"}]}, "judge.ensemble.0.model: /etc is outside"),
    ],
)
def test_deployment_parameters_that_reach_outside_the_roots_are_refused(tmp_path, monkeypatch, config, overrides, says):
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    monkeypatch.chdir(root)  # relative paths are relative to the flow's working directory
    with pytest.raises(ConfigError, match=("^" if config else "^overrides: ") + says):
        check_deployment_parameters(config, overrides, [root])


def test_deployment_parameters_inside_the_roots_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    check_deployment_parameters(
        "configs/nightly.yaml",
        {
            "prompts.path": "data/prompts.jsonl",
            "run.dir": str(tmp_path / "runs" / "x"),
            "judge.prompt": "helpfulness",  # a bundled template's name
            "policy.model": "smollm2-135m-instruct",  # a prepared model's name
            "sampling.n": 4,
        },
        [tmp_path.resolve()],
    )


def test_the_review_service_serves_no_file_a_caller_names(tmp_path):
    """Its only file route serves two named assets; paths that try to climb out get 404 (signed in) or 401."""
    from rlaif.review.store import ReviewStore

    db = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore.open(db) as store:
        token = store.add_reviewer("mallory")
    with ReviewServer(db) as review, httpx.Client(base_url=review.url) as client:
        signed_in = {"Authorization": f"Bearer {token}"}
        assert client.get("/static/review.js", headers=signed_in).status_code == 200
        for attempt in (
            "/static/../store.py",
            "/static/..%2F..%2Fconfig.py",
            "/static/%2e%2e/%2e%2e/etc/passwd",
            "/static/review.js%00.py",
            "/static//etc/passwd",
        ):
            response = client.get(attempt, headers=signed_in)
            assert response.status_code == 404, (attempt, response.status_code)
            assert "import" not in response.text and "root:" not in response.text
            assert client.get(attempt).status_code in (401, 404)
