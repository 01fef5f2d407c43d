"""Labeling run -> review through the API -> merge: the dataset loads with `datasets`, TRL's DPOTrainer
takes it, human labels sit where people gave them; pending items block or fall back to the judge."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import datasets
import httpx
import pytest

from rlaif.agreement import agreement
from rlaif.config import Config, load_config
from rlaif.flows.label import label_pipeline
from rlaif.pipeline.merge import MergeError, merge_run
from rlaif.review.store import ReviewStore
from rlaif.run_directory import read_records
from rlaif.schema import Pair
from tests.review_fixtures import RLAIF, ReviewServer
from tests.scripted_openai_server import ScriptedOpenAIServer
from tests.test_labeling_flow import fake_judge_or_policy, prompts_file, scripted_overrides


def labelled_run(tmp_path: Path, *extra: str) -> Config:
    """A real labeling run (scripted OpenAI-compatible endpoint): 12 prompts, 36 pairs, 9 routed to review."""
    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        overrides = scripted_overrides(
            server,
            prompts_file(tmp_path, 12),
            tmp_path / "run",
            "review.fraction=0.25",
            "review.audit_fraction=0.12",
            "run.name=merge-test",
            *extra,
        )
        config = load_config(None, overrides)
        asyncio.run(label_pipeline(config))
    return config


def pairs_of(run_dir: Path) -> dict[str, Pair]:
    return {p.id: p for path in sorted((run_dir / "pairs").glob("*.jsonl")) for p in read_records(path, Pair)}


def test_label_review_through_the_api_merge_and_train(tmp_path, smollm2_dir):
    config = labelled_run(tmp_path)
    run_dir = config.run.directory()
    db_url = config.review_db()
    token = subprocess.run(
        [RLAIF, "review", "token", "add", "alice", "--db", db_url], capture_output=True, text=True, check=True
    ).stdout.splitlines()[-1]
    given: dict[str, str] = {}
    labels = ["a", "b", "tie", "both_bad"]
    with (
        ReviewServer(db_url) as server,
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as client,
    ):
        while (response := client.post("/api/runs/merge-test/next")).status_code == 200:
            item = response.json()
            label = labels[len(given) % 4]
            client.post(f"/api/items/{item['id']}/label", json={"label": label, "comment": None}).raise_for_status()
            given[item["pair_id"]] = label
        assert response.status_code == 204
    assert len(given) == 9

    merged = subprocess.run([RLAIF, "merge", str(run_dir)], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    assert f"dataset: {run_dir / 'dataset'}" in merged.stdout
    dataset = datasets.load_from_disk(str(run_dir / "dataset"))
    pairs = pairs_of(run_dir)
    rows = {row["pair_id"]: row for row in dataset}
    for pair_id, label in given.items():
        if label in ("tie", "both_bad"):
            assert pair_id not in rows  # dropped by the default policy
            continue
        row = rows[pair_id]
        winner, loser = (pairs[pair_id].a, pairs[pair_id].b) if label == "a" else (pairs[pair_id].b, pairs[pair_id].a)
        assert row["label_source"] == "human" and row["label"] == label and row["reviewers"] == ["alice"]
        assert row["chosen"] == [{"role": "assistant", "content": winner.text}]
        assert row["rejected"] == [{"role": "assistant", "content": loser.text}]
    judged = [row for row in dataset if row["label_source"] == "judge"]
    assert judged and all(row["review_reason"] is None and not row["flagged"] for row in judged)
    assert all(row["prompt"][-1]["role"] == "user" for row in dataset)
    figures = json.loads((run_dir / "dataset" / "merge.json").read_text())
    assert figures["label_sources"]["human"] == sum(1 for v in given.values() if v in ("a", "b"))
    card = (run_dir / "dataset" / "README.md").read_text()
    assert "## Judge versus people" in card and "95% Wilson interval" in card and "run:\n  name: merge-test" in card

    # TRL's DPOTrainer takes the dataset as it is (a tiny model: only the plumbing is under test).
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tiny = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    tiny.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    trainer = DPOTrainer(
        model=str(tmp_path / "tiny"),
        args=DPOConfig(
            output_dir=str(tmp_path / "dpo"),
            max_steps=2,
            per_device_train_batch_size=2,
            max_length=128,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    assert trainer.train().global_step == 2


def test_pending_items_block_the_merge_or_keep_the_judge_label_flagged(tmp_path):
    config = labelled_run(tmp_path)
    run_dir = config.run.directory()
    with ReviewStore.open(config.review_db()) as store:
        with pytest.raises(MergeError, match="9 of 9 review items of run 'merge-test' are not labelled yet"):
            merge_run(run_dir, config, store)
        assert not (run_dir / "dataset").exists()
        result = merge_run(run_dir, config, store, on_pending="judge")
    dataset = datasets.load_from_disk(str(result.path))
    flagged = [row for row in dataset if row["flagged"]]
    assert flagged and all(row["label_source"] == "judge" and row["review_reason"] for row in flagged)
    assert result.figures["labels"].get("tie") is None and result.figures["dropped"].get("tie", 0) > 0
    assert result.figures["review_status"] == {"pending": 9}


def test_ties_are_kept_when_the_config_says_so_and_a_rerun_replaces_the_dataset(tmp_path):
    config = labelled_run(tmp_path, "merge.keep_ties=true", "merge.on_pending=judge")
    run_dir = config.run.directory()
    with ReviewStore.open(config.review_db()) as store:
        first = merge_run(run_dir, config, store)
        second = merge_run(run_dir, config, store)
    assert first.figures == second.figures and first.figures["labels"]["tie"] > 0
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".dataset")) == []
    assert datasets.load_from_disk(str(second.path)).num_rows == second.figures["rows"]


def test_merge_of_a_directory_that_is_not_a_run_is_a_clear_error(tmp_path):
    result = subprocess.run([RLAIF, "merge", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and f"{tmp_path / 'config.yaml'} not found" in result.stderr


def test_agreement_has_a_wilson_interval():
    figure = agreement([True] * 8 + [False] * 2)
    assert figure["n"] == 10 and figure["agreement"] == 0.8
    low, high = figure["ci95"]
    assert low == pytest.approx(0.490, abs=0.001) and high == pytest.approx(0.943, abs=0.001)
    assert agreement([]) is None


def test_the_pipeline_waits_for_review_then_the_emptied_queue_is_announced_and_the_rerun_merges(
    tmp_path, prefect_server
):
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    from rlaif.flows.pipeline import rlaif_pipeline

    with ScriptedOpenAIServer(reply=fake_judge_or_policy) as server:
        overrides = scripted_overrides(
            server,
            prompts_file(tmp_path, 12),
            tmp_path / "run",
            "review.fraction=0.25",
            "run.name=waiting",
            "train.in_pipeline=false",
        )
        config = load_config(None, overrides)
        first = asyncio.run(rlaif_pipeline(config))
        assert first["status"] == "waiting_for_review" and first["open_review_items"] == 9
        assert first["deadline"] is None  # not a deployment: `rlaif merge` continues the run
        assert not (config.run.directory() / "dataset").exists()

        token_line = subprocess.run(
            [RLAIF, "review", "token", "add", "bob", "--db", config.review_db()], capture_output=True, text=True
        ).stdout.splitlines()[-1]
        with (
            ReviewServer(config.review_db(), prefect_api_url=prefect_server) as review,
            httpx.Client(base_url=review.url, headers={"Authorization": f"Bearer {token_line}"}) as client,
        ):
            while (response := client.post("/api/runs/waiting/next")).status_code == 200:
                client.post(f"/api/items/{response.json()['id']}/label", json={"label": "b"}).raise_for_status()
            emitted = []
            for _ in range(100):  # the service's events worker sends in the background
                with get_client(sync_client=True) as prefect:
                    page = prefect.read_events(
                        EventFilter(event=EventNameFilter(name=["rlaif.review.queue-emptied"])), limit=50
                    )
                emitted = [e for e in page.events if e.resource.get("rlaif.run") == "waiting"]
                if emitted:
                    break
                time.sleep(0.2)
        assert len(emitted) == 1 and emitted[0].resource.id == "rlaif.review-run.waiting"

        calls_before = len(server.requests)
        second = asyncio.run(rlaif_pipeline(config))
        assert len(server.requests) == calls_before  # the rerun reuses every labelled shard
    assert second["status"] == "merged" and second["merge"]["label_sources"]["human"] == 9
