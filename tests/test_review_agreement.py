"""Agreement people can act on: reviewers who share items take them in orders of their own, and the run's
agreement page (and API) gives reviewer-with-reviewer agreement where items overlap, the judge's agreement
with people on the audit, each reviewer's figures, and the disagreements, with what they disagree about."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from rlaif.config import ConfigError, load_config
from rlaif.pipeline.enqueue import read_gold, with_gold
from rlaif.review.agreement import agreement_report
from rlaif.review.store import ReviewStore, ReviewStoreError
from tests.review_fixtures import RLAIF, ReviewServer, queue_entries


def test_reviewers_who_share_items_do_not_move_in_lockstep(tmp_path):
    with ReviewStore.open(f"sqlite:///{tmp_path / 'review.db'}") as store:
        store.enqueue("shared", queue_entries("shared", 16), labels_needed=2)
        firsts = [store.claim_next("shared", name).item.id for name in ("ann", "bob", "cy", "dee")]
        assert len(set(firsts)) >= 3  # in queue order they would take the first two items, two each
        store.enqueue("single", queue_entries("single", 4))
        entries = queue_entries("single", 4)
        assert store.claim_next("single", "ann").item.id == entries[0][0].id  # one label each: queue order


def label(store: ReviewStore, run_id: str, labels: dict[str, list[str]]) -> None:
    """Each reviewer claims and labels in turn, giving their labels in order (their own order of items)."""
    for reviewer, given in labels.items():
        for value in given:
            queued = store.claim_next(run_id, reviewer)
            store.submit(queued.item.id, reviewer, value)


def test_the_report_counts_reviewers_and_the_judge_and_lists_where_they_differ(db_url):
    with ReviewStore.open(db_url) as store:
        # 3 items, 2 labels each; the judge says "a" everywhere; items 0 is an audit item (queue_entries: i % 3 == 0)
        store.enqueue("run", queue_entries("run", 3), labels_needed=2)
        label(store, "run", {"ann": ["a", "a", "a"], "bob": ["a", "b", "a"]})
        decisions = store.decisions("run").values()
        by_item = {d.item_id: {name: value for name, value in d.labels} for d in decisions}
    report = agreement_report(decisions)
    split = [item for item, given in by_item.items() if len(set(given.values())) > 1]
    assert report["between_reviewers"]["n"] == 3 and report["between_reviewers"]["agreement"] == 2 / 3
    assert [found.decision.item_id for found in report["disagreements"] if found.between_reviewers] == split
    assert report["reviewers"]["ann"]["labelled"] == 3 and report["reviewers"]["ann"]["with_others"]["n"] == 3
    audit = report["judge_on_audit"]
    assert audit["n"] == 1  # the one audit item, its majority label against the judge's "a"
    audit_labels = next(given for d, given in zip(decisions, by_item.values(), strict=True) if d.reason == "audit")
    assert audit["agreement"] == (1.0 if set(audit_labels.values()) == {"a"} else 0.0)


def test_the_agreement_page_and_api(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore.open(db_url) as store:
        store.enqueue("agree", queue_entries("agree", 2, text="<img src=x onerror=alert(1)>"), labels_needed=2)
        label(store, "agree", {"ann": ["a", "a"], "bob": ["b", "a"]})
        token = store.add_reviewer("ann")
    with ReviewServer(db_url) as server:
        api = httpx.get(f"{server.url}/api/runs/agree/agreement", headers={"Authorization": f"Bearer {token}"})
        assert api.status_code == 200
        figures = api.json()
        assert figures["between_reviewers"]["n"] == 2 and figures["between_reviewers"]["agreement"] == 0.5
        [split] = [found for found in figures["disagreements"] if found["between_reviewers"]]
        assert split["labels"] == {"ann": "a", "bob": "b"} and split["judge"] == "a"
        assert httpx.get(f"{server.url}/api/runs/agree/agreement").status_code == 401

        page = browser.new_page()
        page.goto(f"{server.url}/runs/agree/agreement")  # the sign-in form, which then returns here
        page.fill("input[name=token]", token)
        with page.expect_navigation():
            page.click("button[type=submit]")
        assert "50% of 2" in page.inner_text("#between-reviewers")
        assert page.locator("#per-reviewer tbody tr").count() == 2
        rows = page.locator("#disagreements li")
        assert rows.count() == len(figures["disagreements"]) >= 1
        rows.first.locator("summary").click()
        assert "ann: A is better" in rows.first.inner_text() and "bob: B is better" in rows.first.inner_text()
        assert rows.first.locator(".answer img").count() == 0  # the answers' markup stays text
        assert "<img src=x" in rows.first.locator(".answer").first.inner_text()


def test_gold_pairs_measure_each_reviewer_and_never_hold_the_queue_open(db_url, tmp_path):
    gold_file = tmp_path / "gold.jsonl"
    gold_file.write_text(
        '{"prompt": "2 + 2?", "a": "4", "b": "5", "label": "a"}\n'
        '{"prompt": [{"role": "user", "content": "Capital of France?"}], "a": "Lyon", "b": "Paris", "label": "b"}\n',
        encoding="utf-8",
    )
    gold = read_gold(gold_file, "run")
    entries = list(with_gold(queue_entries("run", 5), gold, every=2))
    assert [entry[0].reason == "gold" for entry in entries] == [False, False, True, False, False, True, False]
    emptied = []
    with ReviewStore.open(db_url) as store:
        store.enqueue("run", entries, labels_needed=2, gold={item.id: label for (item, _, _), label in gold})
        assert store.stats("run")["total"] == 5  # gold counts towards no progress
        for reviewer in ("ann", "bob"):
            while (queued := store.claim_next("run", reviewer)) is not None:
                assert queued.to_json()["reason"] != "gold"  # a gold pair looks like any other to the reviewer
                if queued.item.reason == "gold":  # ann knows, bob gets them wrong
                    known = next(label for (item, _, _), label in gold if item.id == queued.item.id)
                    value = known if reviewer == "ann" else ("b" if known == "a" else "a")
                else:
                    value = "tie"
                emptied.append(store.submit(queued.item.id, reviewer, value).queue_emptied)
        decisions = store.decisions("run")
        stats = store.stats("run")
    assert sum(emptied) == 1 and stats["finished"] == stats["total"] == 5  # emptied with the gold still open
    gold_labels = {d.item_id: d.labels for d in decisions.values() if d.gold_label}
    assert len(gold_labels) == 2 and all(len(labels) <= 2 for labels in gold_labels.values())
    assert all("ann" in dict(labels) for labels in gold_labels.values())  # ann met both (she went first)
    report = agreement_report(decisions.values())
    assert report["reviewers"]["ann"]["gold"]["agreement"] == 1.0
    assert report["reviewers"]["bob"]["gold"] is None or report["reviewers"]["bob"]["gold"]["agreement"] == 0.0
    assert report["reviewers"]["ann"]["labelled"] == 5  # the run's own items; the gold apart
    assert not any(found.decision.gold_label for found in report["disagreements"])


def test_a_bad_gold_line_is_named(tmp_path):
    gold_file = tmp_path / "gold.jsonl"
    gold_file.write_text('{"prompt": "x", "a": "1", "b": "2", "label": "a"}\n{"prompt": "y", "a": "1"}\n')
    with pytest.raises(ReviewStoreError, match=r"review.gold: .*gold.jsonl:2: not a gold pair: 'b'"):
        read_gold(gold_file, "run")
    with pytest.raises(ConfigError, match="review.gold: .*no file"):
        load_config(None, [f"review.gold={tmp_path / 'absent.jsonl'}"])


def test_the_owner_settles_a_disagreement_and_the_settled_label_counts(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore.open(db_url) as store:
        store.enqueue("split", queue_entries("split", 1), labels_needed=2)
        label(store, "split", {"ann": ["a"], "bob": ["b"]})
        [decision] = store.decisions("split").values()
        token = store.add_reviewer("ann")
    assert decision.label == "tie"  # a split vote, before anyone settles it
    settled = subprocess.run(
        [RLAIF, "review", "settle", decision.item_id, "b", "--by", "owner", "--db", db_url],
        capture_output=True,
        text=True,
    )
    assert settled.returncode == 0, settled.stderr
    refused = subprocess.run(
        [RLAIF, "review", "settle", decision.item_id, "maybe", "--by", "owner", "--db", db_url],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "maybe" in refused.stderr
    with ReviewStore.open(db_url) as store:
        [after] = store.decisions("split").values()
        exported = list(store.export_rows("split"))
    assert after.label == "b" and after.settled_by == "owner" and after.labels == decision.labels
    assert exported[0]["settled"] == {"label": "b", "by": "owner"}
    with ReviewServer(db_url) as server:
        figures = httpx.get(
            f"{server.url}/api/runs/split/agreement", headers={"Authorization": f"Bearer {token}"}
        ).json()
    [found] = figures["disagreements"]
    assert found["settled"] == "b" and found["settled_by"] == "owner" and found["labels"] == {"ann": "a", "bob": "b"}
