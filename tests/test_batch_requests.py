"""Judging through a batch API: `rlaif judge export-requests` writes the run's judge requests in OpenAI Batch input
format, a batch is run against a real server on loopback (each request sent, each response wrapped as the Batch
API's output, one request failed), `rlaif judge import-batch` turns the output into imported judgments, and the
run labelled with them gets the verdicts a live judge of the same server gives."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from typer.testing import CliRunner

from rlaif.cli.main import app
from rlaif.config import load_config
from rlaif.flows.label import label_pipeline
from rlaif.judges.imported import JudgmentsFileError
from rlaif.judges.templates import load_template
from tests.scripted_openai_server import ScriptedOpenAIServer
from tests.test_labeling_flow import fake_judge_or_policy, judgments_of, prompts_file, scripted_overrides


def sets(overrides: list[str]) -> list[str]:
    return [part for override in overrides for part in ("--set", override)]


def test_export_run_a_batch_import_and_label_as_a_live_judge_would(tmp_path):
    prompts = prompts_file(tmp_path, 6)
    requests_file, output_file, judgments_file = (tmp_path / name for name in ("in.jsonl", "out.jsonl", "j.jsonl"))
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        asyncio.run(label_pipeline(load_config(None, scripted_overrides(server, prompts, tmp_path / "live"))))
        batch = scripted_overrides(server, prompts, tmp_path / "batch")
        judged_before = sum(1 for r in server.requests if r.get("model") == "judge")
        exported = CliRunner().invoke(app, ["judge", "export-requests", "--out", str(requests_file), *sets(batch)])
        assert exported.exit_code == 0, exported.output
        assert sum(1 for r in server.requests if r.get("model") == "judge") == judged_before  # nothing judged
        requests = [json.loads(line) for line in requests_file.read_text().splitlines()]
        assert len(requests) == 2 * 18 and "36 requests (18 pairs, both orders)" in exported.output
        assert {r["url"] for r in requests} == {"/v1/chat/completions"} and requests[0]["custom_id"].endswith("-ab")

        with output_file.open("w") as output:
            for index, request in enumerate(requests):
                if index == 0:  # the provider failed this one
                    line = {"custom_id": request["custom_id"], "response": None, "error": {"message": "quota"}}
                else:
                    reply = httpx.post(f"{server.base_url}/chat/completions", json=request["body"], timeout=30)
                    line = {"custom_id": request["custom_id"], "response": {"status_code": 200, "body": reply.json()}}
                output.write(json.dumps(line) + "\n")
        imported = CliRunner().invoke(
            app, ["judge", "import-batch", str(output_file), "--out", str(judgments_file), *sets(batch)]
        )
        assert imported.exit_code == 0, imported.output
        assert "18 pairs written" in imported.output and "(1 orders without a readable verdict)" in imported.output
        labelled = [*batch, "judge.mode=imported", f"judge.judgments={judgments_file}"]
        asyncio.run(label_pipeline(load_config(None, labelled)))
    live = {j.pair_id: j for j in judgments_of(tmp_path / "live")}
    from_batch = {j.pair_id: j for j in judgments_of(tmp_path / "batch")}
    assert set(live) == set(from_batch)
    failed_order = requests[0]["custom_id"][:-3]
    for pair_id, judgment in from_batch.items():
        assert judgment.status == "ok"
        if pair_id != failed_order:  # both orders came back: the verdict a live judge gave
            assert (judgment.winner, judgment.p_a) == (live[pair_id].winner, live[pair_id].p_a)


def test_a_batch_output_line_that_is_not_ours_is_named(tmp_path):
    from rlaif.judges.batch_requests import imported_judgment_lines

    path = tmp_path / "out.jsonl"
    path.write_text('{"custom_id": "abc-ab", "response": null, "error": "x"}\n{"custom_id": "request-1"}\n')
    with pytest.raises(JudgmentsFileError, match=r"out.jsonl:2: custom_id: not a request of"):
        imported_judgment_lines(path, load_template("helpfulness", "verdict"), "judge")
