"""End to end with a real `prefect server start` on loopback: `rlaif deploy` serves the deployments,
`prefect deployment run` starts them with parameters (a custom judge prompt among them), a bad parameter
is refused when the run is created, a cron schedule fires, and the review service's queue-emptied
event starts the merge deployment."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import httpx
import pytest
import yaml

from rlaif.flows.merge import QUEUE_EMPTIED
from rlaif.run_directory import read_records
from rlaif.schema import Judgment
from tests.review_fixtures import ReviewServer, free_port
from tests.scripted_openai_server import ScriptedOpenAIServer
from tests.test_labeling_flow import fake_judge_or_policy, prompts_file

BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
RLAIF = str(BIN / "rlaif")


def wait_for(check, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """`prefect server start` on a free loopback port, with its own home and database."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        # `rlaif deploy` serves the deployments with a runner that asks for scheduled runs every 10 s by default:
        # each run the tests start (and each merge an event starts) would wait 5 s on average before it begins.
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(lambda: _healthy(url), 120, "the Prefect server")
        yield {**env, "PREFECT_API_URL": url}
    finally:
        server.terminate()
        server.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _finished_state(api: str, flow_run_id: str) -> str | None:
    state = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()["state"]
    return state["type"] if state and state["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None


def prefect(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PREFECT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def run_pipeline(env: dict[str, str], config_path: Path, overrides: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`prefect deployment run rlaif-pipeline/e2e` with a config file and overrides, watched to its end."""
    return prefect(
        env,
        "deployment",
        "run",
        "rlaif-pipeline/e2e",
        "--param",
        f"config={config_path}",
        "--param",
        f"overrides={json.dumps(overrides)}",
        "--watch",
        timeout=600,
    )


@contextlib.contextmanager
def served_deployments(env: dict[str, str], tmp_path: Path, config: dict[str, Any]) -> Iterator[tuple[Path, Path]]:
    """`rlaif deploy` of a config (written to a file) serving until the block ends: (config path, its log)."""
    config_path = tmp_path / f"{config['run']['name']}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "deploy.log"
    served = subprocess.Popen(
        [RLAIF, "deploy", str(config_path)], env=env, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    try:
        # Asked of the API: a `prefect deployment ls` process per poll took seconds on a 2-core machine.
        served_last = f"{env['PREFECT_API_URL']}/deployments/name/rlaif-merge/{config['deploy']['name']}"
        wait_for(lambda: httpx.get(served_last).status_code == 200, 120, "the deployments")
        yield config_path, log
    finally:
        served.terminate()
        try:
            served.wait(30)
        except subprocess.TimeoutExpired:
            served.kill()


def post_as_prefects_client(url: str, body: dict[str, Any], attempts: int = 5) -> httpx.Response:
    """POST to the Prefect API, retrying a 503 as Prefect's own client does (its server answers 503 when its
    SQLite database is busy, as on a loaded 2-core machine)."""
    for attempt in range(attempts):
        response = httpx.post(url, json=body)
        if response.status_code != 503 or attempt == attempts - 1:
            return response
        time.sleep(1 + attempt)
    return response


def test_deployments_run_from_the_cli_with_parameters_schedules_and_the_merge_trigger(prefect_api, tmp_path):
    template = tmp_path / "my_judge.md.j2"
    template.write_text(
        "---\nname: my_judge\nversion: 1\nmodes: [verdict]\n---\n"
        "MY JUDGE. {{ question }}\n<answer_a>\n{{ answer_a }}\n</answer_a>\n<answer_b>\n{{ answer_b }}\n</answer_b>\n"
        "Answer [[A]] or [[B]].\n"
    )
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as endpoint:
        config = {
            "run": {"name": "nightly", "dir": str(tmp_path / "runs" / "nightly"), "prompts_per_shard": 5},
            "prompts": {"path": str(prompts_file(tmp_path, 8))},
            "policy": {"backend": "openai", "base_urls": [endpoint.base_url], "model": "policy"},
            "sampling": {"n": 3},
            "judge": {"backend": "openai", "base_urls": [endpoint.base_url], "model": "judge", "mode": "verdict"},
            "review": {"fraction": 0.25, "audit_fraction": 0.1},
            "train": {"in_pipeline": False},
            "deploy": {
                "name": "e2e",
                "schedules": [
                    {
                        "flow": "rlaif-label",
                        "cron": "* * * * *",
                        "overrides": {"run.name": "cron", "run.dir": str(tmp_path / "runs" / "cron")},
                    }
                ],
            },
        }
        with served_deployments(prefect_api, tmp_path, config) as (config_path, log):
            # A bad parameter is refused when the run is created, naming the key.
            refused = prefect(
                prefect_api, "deployment", "run", "rlaif-label/e2e", "--param", 'overrides={"sampling.nn": 3}'
            )
            assert refused.returncode != 0 and "sampling.nn" in refused.stdout + refused.stderr

            # A file outside the allowed roots (here the working directory of `rlaif deploy`) fails the run
            # before it reads anything.
            escaping = prefect(
                prefect_api,
                "deployment",
                "run",
                "rlaif-label/e2e",
                "--param",
                'overrides={"prompts.path": "../../../../etc/passwd"}',
                "--watch",
                timeout=300,
            )
            assert escaping.returncode != 0
            assert "prompts.path: ../../../../etc/passwd is outside the directories" in log.read_text()

            # A config given as a JSON object (Prefect makes a Config of it, which would skip the checks of a
            # config file and of its config-file-only keys) is refused when the run is created: the
            # parameter's schema is a path.
            as_object = {"run": {"name": "injected"}, "review": {"db": "sqlite:////tmp/elsewhere.db"}}
            injected = prefect(
                prefect_api, "deployment", "run", "rlaif-label/e2e", "--param", f"config={json.dumps(as_object)}"
            )
            assert injected.returncode != 0
            assert "Validation failed for field 'config'" in injected.stdout + injected.stderr
            # A run created through the API with the schema check turned off fails when it starts.
            api = prefect_api["PREFECT_API_URL"]
            deployment_id = httpx.get(f"{api}/deployments/name/rlaif-label/e2e").json()["id"]
            created = post_as_prefects_client(
                f"{api}/deployments/{deployment_id}/create_flow_run",
                {"parameters": {"config": as_object}, "enforce_parameter_schema": False},
            )
            assert created.status_code == 201, created.text
            state = wait_for(lambda: _finished_state(api, created.json()["id"]), 300, "the unchecked run to finish")
            assert state == "FAILED"
            assert "config: a deployment run takes the path of a config file, not a config object" in log.read_text()

            # The pipeline with a custom judge prompt, started from the CLI, nothing routed: it ends merged.
            overrides = {
                "judge.prompt": str(template),
                "run.name": "custom",
                "run.dir": str(tmp_path / "runs" / "custom"),
                "review.fraction": 0.0,
                "review.audit_fraction": 0.0,
            }
            started = run_pipeline(prefect_api, config_path, overrides)
            assert started.returncode == 0, started.stdout + log.read_text()[-4000:]
            custom = tmp_path / "runs" / "custom"
            expected_hash = hashlib.sha256(template.read_bytes()).hexdigest()[:16]
            judgments = [j for p in (custom / "judgments").glob("*.jsonl") for j in read_records(p, Judgment)]
            assert len(judgments) == 24 and {j.template_hash for j in judgments} == {expected_hash}
            assert datasets.load_from_disk(str(custom / "dataset")).num_rows > 0

            # The default run, through the pipeline with a review deadline: items wait for review, and a merge
            # is scheduled at the deadline with the run's own parameters (a config file's path, which a
            # deployment run accepts, not the config itself); people finish them; the event starts rlaif-merge.
            labelled = run_pipeline(prefect_api, config_path, {"review.deadline_hours": 24})
            assert labelled.returncode == 0, labelled.stdout + log.read_text()[-4000:]
            nightly = tmp_path / "runs" / "nightly"
            assert not (nightly / "dataset").exists()
            scheduled = httpx.post(
                f"{prefect_api['PREFECT_API_URL']}/flow_runs/filter",
                json={
                    "flows": {"name": {"any_": ["rlaif-merge"]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                },
            ).json()
            assert [run["parameters"] for run in scheduled] == [
                {"config": str(config_path), "overrides": {"review.deadline_hours": 24}, "on_pending": "judge"}
            ]
            db = f"sqlite:///{tmp_path / 'runs' / 'review.db'}"
            from rlaif.review.store import ReviewStore

            with ReviewStore.open(db) as store:
                token = store.add_reviewer("carol")
            with (
                ReviewServer(db, prefect_api_url=prefect_api["PREFECT_API_URL"]) as review,
                httpx.Client(base_url=review.url, headers={"Authorization": f"Bearer {token}"}) as client,
            ):
                while (response := client.post("/api/runs/nightly/next")).status_code == 200:
                    client.post(f"/api/items/{response.json()['id']}/label", json={"label": "a"}).raise_for_status()
                wait_for(lambda: (nightly / "dataset" / "merge.json").is_file(), 120, "the triggered merge")
            merged = json.loads((nightly / "dataset" / "merge.json").read_text())
            assert merged["label_sources"]["human"] > 0 and merged["review_status"] == {"done": merged["routed"]}

            # The cron schedule (every minute) has fired by now or does within a minute.
            wait_for(lambda: (tmp_path / "runs" / "cron" / "report.json").is_file(), 150, "the cron run", 2)


def label_as_people(client: httpx.Client, run_dir: Path, run: str) -> int:
    """Label every open item of a run through the API as the people of tests/test_certified_review.py do: the
    judge's label when it was sure, the first answer when it was not."""
    labelled = 0
    while (response := client.post(f"/api/runs/{run}/next")).status_code == 200:
        item = response.json()
        # Read after the claim: the run's queue file is written before its items reach the database.
        queue = [json.loads(line) for line in (run_dir / "review_queue.jsonl").read_text().splitlines()]
        judgment = next(row["judgment"] for row in queue if row["item"]["pair_id"] == item["pair_id"])
        label = judgment["winner"] if judgment["status"] == "ok" and judgment["winner"] != "tie" else "a"
        client.post(f"/api/items/{item['id']}/label", json={"label": label}).raise_for_status()
        labelled += 1
    return labelled


def test_two_phase_review_in_a_deployment(prefect_api, tmp_path):
    """review.target_agreement in a served deployment: the pipeline run ends waiting for the audit; labelling it
    emits queue-emptied, whose merge run routes the second phase (pairs below the certified threshold) and ends
    waiting; labelling those emits the event again, and that merge run writes the dataset with the level."""
    from rlaif.review.store import ReviewStore
    from tests.test_certified_review import sure_or_unsure_judge

    with ScriptedOpenAIServer(reply=sure_or_unsure_judge) as endpoint:
        config = {
            "run": {"name": "certified", "dir": str(tmp_path / "runs" / "certified"), "prompts_per_shard": 10},
            "prompts": {"path": str(prompts_file(tmp_path, 40))},
            "policy": {"backend": "openai", "base_urls": [endpoint.base_url], "model": "policy"},
            "sampling": {"n": 3},
            "judge": {"backend": "openai", "base_urls": [endpoint.base_url], "model": "judge", "mode": "verdict"},
            "review": {"target_agreement": 0.8, "audit_fraction": 0.4, "max_fraction": 0.9},
            "train": {"in_pipeline": False},
            "deploy": {"name": "e2e-certified"},
        }
        run_dir = tmp_path / "runs" / "certified"
        db = f"sqlite:///{tmp_path / 'runs' / 'review.db'}"
        with served_deployments(prefect_api, tmp_path, config) as (config_path, log):
            started = prefect(
                prefect_api,
                "deployment",
                "run",
                "rlaif-pipeline/e2e-certified",
                "--param",
                f"config={config_path}",
                "--watch",
                timeout=600,
            )
            assert started.returncode == 0, started.stdout + log.read_text()[-4000:]
            manifest = json.loads((run_dir / "manifest.json").read_text())
            assert {row["reason"] for row in manifest["routed"]} <= {"audit", "failed"}
            with ReviewStore.open(db) as store:
                token = store.add_reviewer("dana")
            with (
                ReviewServer(db, prefect_api_url=prefect_api["PREFECT_API_URL"]) as review,
                httpx.Client(base_url=review.url, headers={"Authorization": f"Bearer {token}"}) as client,
            ):
                assert label_as_people(client, run_dir, "certified") == 48  # the audit: 40 prompts x 3 pairs x 0.4
                wait_for(lambda: (run_dir / "certification.json").is_file(), 180, "the second phase, routed")
                certification = json.loads((run_dir / "certification.json").read_text())
                assert certification["certified"] and certification["below_threshold"] > 0
                assert not (run_dir / "dataset").exists()  # the merge run of the first event ends waiting
                second = wait_for(lambda: label_as_people(client, run_dir, "certified"), 60, "the second phase")
                assert second == certification["below_threshold"]
                wait_for(
                    lambda: (run_dir / "dataset" / "merge.json").is_file(), 180, "the merge after the second phase"
                )
            merged = json.loads((run_dir / "dataset" / "merge.json").read_text())
            assert merged["certification"]["reached_target"] and merged["review_status"] == {"done": merged["routed"]}
            assert "## Certified agreement level" in (run_dir / "dataset" / "README.md").read_text()


def api_read(env: dict[str, str], path: str) -> dict[str, Any]:
    """GET from the Prefect API (`prefect deployment inspect -o json` fails on a deployment with triggers)."""
    return httpx.get(f"{env['PREFECT_API_URL']}/{path}").raise_for_status().json()


def test_prefect_yaml_deploys_into_process_and_kubernetes_work_pools(prefect_api):
    """`prefect deploy --all` with the project's prefect.yaml registers the four deployments in process pools, and
    with configs/kubernetes/prefect.yaml in Kubernetes pools made from the project's job template (the GPU
    limit and the run volume are job variables). A queue-emptied event of any run starts, in each, a merge run
    for that run (the trigger's run.name comes from the event)."""
    project = Path(__file__).resolve().parent.parent
    pools = [
        ("rlaif-cpu", "process"),
        ("rlaif-gpu", "process"),
        ("rlaif-k8s-cpu", "kubernetes"),
        ("rlaif-k8s-gpu", "kubernetes"),
    ]
    template = ["--base-job-template", str(project / "configs" / "kubernetes" / "job-template.json")]
    for pool, kind in pools:
        created = prefect(
            prefect_api, "work-pool", "create", pool, "--type", kind, *(template if kind == "kubernetes" else [])
        )
        assert created.returncode == 0, created.stdout + created.stderr
    for prefect_file in ("prefect.yaml", "configs/kubernetes/prefect.yaml"):
        deployed = subprocess.run(
            [PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", prefect_file],
            env=prefect_api,
            cwd=project,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    listed = prefect(prefect_api, "deployment", "ls").stdout
    for flow in ("rlaif-pipeline", "rlaif-label", "rlaif-merge", "rlaif-train"):
        assert f"{flow}/default" in listed and f"{flow}/kubernetes" in listed, listed
    inspected = prefect(prefect_api, "deployment", "inspect", "rlaif-train/default").stdout
    assert "rlaif-gpu" in inspected
    training = api_read(prefect_api, "deployments/name/rlaif-train/kubernetes")
    assert training["work_pool_name"] == "rlaif-k8s-gpu"
    assert training["job_variables"]["gpu_limit"] == 1 and training["job_variables"]["run_volume_claim"] == "rlaif-runs"
    pool = api_read(prefect_api, "work_pools/rlaif-k8s-gpu")
    container = pool["base_job_template"]["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_limit }}"

    emitted = prefect(
        prefect_api,
        "events",
        "emit",
        QUEUE_EMPTIED,
        "--resource",
        json.dumps({"prefect.resource.id": "rlaif.review-run.nightly-7", "rlaif.run": "nightly-7"}),
    )
    assert emitted.returncode == 0, emitted.stdout + emitted.stderr

    merges = [api_read(prefect_api, f"deployments/name/rlaif-merge/{name}")["id"] for name in ("default", "kubernetes")]

    def merge_runs() -> list[dict[str, Any]]:
        response = httpx.post(
            f"{prefect_api['PREFECT_API_URL']}/flow_runs/filter", json={"deployments": {"id": {"any_": merges}}}
        )
        runs = response.raise_for_status().json()
        return runs if len(runs) == 2 else []

    runs = wait_for(merge_runs, 60, "the merge runs the event starts")
    assert [run["parameters"]["overrides"] for run in runs] == [{"run.name": "nightly-7"}] * 2
