"""Ranking mode end to end: a real labeling run (scripted endpoint) with review.mode ranking queues one item
per routed prompt holding all its answers; in headless Chromium a reviewer ranks one with the keyboard (a tie
included) and one by dragging, the rest go through the API; `rlaif merge` turns each ranking into the pairs it
decides (ties dropped by default), marked ranked; export, import and the Label Studio export carry rankings;
and a config that cannot rank is refused."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import datasets
import httpx
import pytest

from rlaif.config import ConfigError, load_config
from rlaif.review.label_studio import label_studio_tasks
from rlaif.review.ranking import pair_label
from rlaif.review.store import ReviewStore, ReviewStoreError
from rlaif.schema import Pair
from tests.review_fixtures import RLAIF, ReviewServer, start_reviewing
from tests.test_merge import labelled_run


def chosen_of(row: dict) -> str:
    return row["chosen"][0]["content"]


def test_rank_on_the_page_and_the_api_then_merge_the_pairs(browser, tmp_path):
    with ThreadPoolExecutor(1) as thread:  # its own thread: the browser's event loop runs in this one
        config = thread.submit(labelled_run, tmp_path, "review.mode=ranking").result()
    run_dir, db_url, run_id = config.run.directory(), config.review_db(), config.run.name
    with ReviewStore.open(db_url) as store:
        items = [row for row in store.export_rows(run_id)]
        token = store.add_reviewer("alice")
    assert items and all(len(row["candidates"]) == 3 for row in items)  # every answer of the prompt
    assert len({row["pair"]["prompt"]["id"] for row in items}) == len(items)  # one item per prompt
    candidates = {row["item"]["id"]: [c["text"] for c in row["candidates"]] for row in items}

    with ReviewServer(db_url) as server:
        page = start_reviewing(browser.new_page(), server.url, token, run_id, form="#rank-form")
        first = page.locator("#rank-form").get_attribute("action").split("/")[-2]
        assert page.locator(".ranking-answers .answer").count() == 3
        assert page.is_disabled("#save-ranking")
        for key in ("2", "=", "1"):
            page.keyboard.press(key)
        assert page.input_value("#ranking-value") == "2=1" and page.is_disabled("#save-ranking")
        page.keyboard.press("3")
        page.keyboard.press("Backspace")  # taken back, and placed again
        page.keyboard.press("3")
        assert page.input_value("#ranking-value") == "2=1,3"
        with page.expect_navigation():
            page.keyboard.press("Enter")

        second = page.locator("#rank-form").get_attribute("action").split("/")[-2]
        assert second != first
        bar = page.locator(".ranking-bar")
        for number in (3, 1, 2):
            page.drag_and_drop(f"#answer-{number}", ".ranking-bar")
        assert page.input_value("#ranking-value") == "3,1,2"
        page.drag_and_drop("#ranking li[data-number='2']", "#ranking li[data-number='3']")  # 2 to the top
        assert page.input_value("#ranking-value") == "2,3,1" and bar.is_visible()
        with page.expect_navigation():
            page.click("#save-ranking")

        with page.expect_navigation():
            page.keyboard.press("u")  # undo shows the ranking given
        assert page.input_value("#ranking-value") == "2,3,1"

        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers) as client:
            refused = client.post(f"/api/items/{first}/label", json={"label": "a"})
            assert refused.status_code == 422 and "ranking" in refused.json()["detail"]
            while (response := client.post(f"/api/runs/{run_id}/next")).status_code == 200:
                item = response.json()
                assert len(item["candidates"]) == 3
                bad = client.post(f"/api/items/{item['id']}/rank", json={"ranking": [[0], [1]]})
                assert bad.status_code == 422  # answer 2 not placed
                client.post(f"/api/items/{item['id']}/rank", json={"ranking": [[0], [1], [2]]}).raise_for_status()
            assert response.status_code == 204

    merged = subprocess.run([RLAIF, "merge", str(run_dir)], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    rows = list(datasets.load_from_disk(str(run_dir / "dataset")))
    human = [row for row in rows if row["label_source"] == "human"]
    assert human and all(row["ranked"] and row["reviewers"] == ["alice"] for row in human)
    # 3 answers make 3 pairs per ranking; the keyboard ranking tied two of them: that pair is dropped.
    assert len(human) == 3 * len(items) - 1
    by_item = {row["item"]["id"]: row for row in items}
    texts = candidates[first]
    prompt_rows = [row for row in human if row["prompt_id"] == by_item[first]["pair"]["prompt"]["id"]]
    assert sorted(chosen_of(row) for row in prompt_rows) == sorted([texts[1], texts[0]])  # 2=1 above 3
    assert all(row["rejected"][0]["content"] == texts[2] for row in prompt_rows)
    second_rows = [row for row in human if row["prompt_id"] == by_item[second]["pair"]["prompt"]["id"]]
    texts = candidates[second]
    wins = {text: sum(chosen_of(row) == text for row in second_rows) for text in texts}
    assert wins == {texts[1]: 2, texts[2]: 1, texts[0]: 0}  # 2, 3, 1

    with ReviewStore.open(db_url) as store:
        exported = list(store.export_rows(run_id))
    with ReviewStore.open(f"sqlite:///{tmp_path / 'copy.db'}") as copy:
        copy.import_rows(exported)
        again = {d.item_id: d.rankings for d in copy.decisions(run_id).values()}
    assert again == {d["item"]["id"]: tuple(tuple(map(tuple, e["ranking"])) for e in d["labels"]) for d in exported}
    tasks = label_studio_tasks(exported)
    assert len(tasks) == 3 * len(items)
    one = next(task for task in tasks if task["data"]["item_id"] == first and task["annotations"])
    assert one["annotations"][0]["result"][0]["value"]["choices"][0] in ("A", "B", "Tie")


def test_a_ranking_names_each_answer_once_and_a_config_that_cannot_rank_is_refused(tmp_path):
    assert pair_label(((1, 0), (2,)), 0, 1) == "tie"
    assert pair_label(((1, 0), (2,)), 0, 2) == "a" and pair_label(((1, 0), (2,)), 2, 1) == "b"
    with pytest.raises(ConfigError, match="review.mode ranking needs pairs.strategy all"):
        load_config(None, ["review.mode=ranking", "pairs.strategy=random"])
    with pytest.raises(ConfigError, match="without review.target_agreement"):
        load_config(None, ["review.mode=ranking", "review.target_agreement=0.8"])
    from tests.review_fixtures import queue_entries

    with ReviewStore.open(f"sqlite:///{tmp_path / 'review.db'}") as store:
        [(item, pair, judgment)] = queue_entries("run", 1)
        store.enqueue("run", [(item, pair, judgment)], rankings={item.id: [pair.a, pair.b]})
        queued = store.claim_next("run", "ann")
        for bad in ([[0]], [[0, 1], [1]], [[0], [5]]):
            with pytest.raises(ReviewStoreError, match="exactly once"):
                store.submit(queued.item.id, "ann", None, ranking=bad)
        with pytest.raises(ReviewStoreError, match="not a pairwise label"):
            store.submit(queued.item.id, "ann", "a")
        assert store.submit(queued.item.id, "ann", None, ranking=[[1], [0]]).status == "done"
        [decision] = store.decisions("run").values()
        [row] = store.export_rows("run")
        row["candidates"][1] = {"text": "no prompt id"}
        with pytest.raises(ReviewStoreError, match=r"rows.jsonl:1: not an exported review row"):
            store.import_rows([row], source="rows.jsonl")
    assert decision.rankings == (((1,), (0,)),) and json.dumps(decision.labels) == '[["ann", "ranked"]]'
    assert isinstance(Pair.model_validate(pair.model_dump()), Pair)
