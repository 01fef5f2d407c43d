"""The review store on SQLite and PostgreSQL: claims, leases, overlap, skips, schema versions, export/import."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import inspect as sqlalchemy_inspect
from sqlalchemy import text

from rlaif.config import ConfigError, load_config
from rlaif.review.label_studio import label_studio_tasks
from rlaif.review.store import SCHEMA_VERSION, ClaimConflict, ReviewStore, ReviewStoreError
from tests.review_fixtures import queue_entries


@pytest.fixture
def store(db_url) -> Iterator[ReviewStore]:
    with ReviewStore.open(db_url) as opened:
        yield opened


def test_enqueue_is_idempotent_and_keeps_the_order(store):
    entries = queue_entries("run", 5)
    assert store.enqueue("run", entries) == 5
    assert store.enqueue("run", entries) == 0
    first = store.claim_next("run", "alice")
    assert first is not None and first.item.pair_id == entries[0][1].id
    assert store.stats("run")["total"] == 5


def test_two_reviewers_never_hold_the_same_item_and_a_claim_is_kept(store):
    store.enqueue("run", queue_entries("run", 3))
    alice = store.claim_next("run", "alice")
    bob = store.claim_next("run", "bob")
    assert alice.item.id != bob.item.id
    assert store.claim_next("run", "alice").item.id == alice.item.id  # asking again returns the held item
    assert store.stats("run")["claimed"] == 2


def test_an_expired_lease_puts_the_item_back_and_a_late_label_is_refused(store):
    store.enqueue("run", queue_entries("run", 1))
    alice = store.claim_next("run", "alice", lease_s=0.2)
    assert store.claim_next("run", "bob") is None  # alice holds the only item
    time.sleep(0.4)
    bob = store.claim_next("run", "bob")
    assert bob is not None and bob.item.id == alice.item.id
    store.submit(bob.item.id, "bob", "b")
    with pytest.raises(ClaimConflict, match="no longer yours"):
        store.submit(alice.item.id, "alice", "a")
    decisions = store.decisions("run")
    assert [d.labels for d in decisions.values()] == [(("bob", "b"),)]


def test_a_lapsed_lease_counts_as_held_by_nobody_and_its_reviewer_can_take_the_item_again(store):
    """A lease lapses by time alone: the run's counts show the item open at once, and the same reviewer can claim
    it again (their lapsed claim is replaced), after which nobody else can."""
    store.enqueue("run", queue_entries("run", 1))
    first = store.claim_next("run", "alice", lease_s=0.1)
    time.sleep(0.3)
    stats = store.stats("run")
    assert (stats["pending"], stats["claimed"]) == (1, 0)
    again = store.claim_next("run", "alice")
    assert again.item.id == first.item.id and again.item.status == "claimed"
    assert store.claim_next("run", "bob") is None
    assert store.submit(again.item.id, "alice", "a").status == "done"


def test_a_late_label_is_accepted_while_nobody_else_took_the_item(store):
    store.enqueue("run", queue_entries("run", 1))
    alice = store.claim_next("run", "alice", lease_s=0.1)
    time.sleep(0.3)
    assert store.submit(alice.item.id, "alice", "tie").status == "done"


def test_a_repeated_submit_is_acknowledged_once_and_a_change_is_kept(store):
    store.enqueue("run", queue_entries("run", 1))
    item = store.claim_next("run", "alice")
    first = store.submit(item.item.id, "alice", "a", "because")
    again = store.submit(item.item.id, "alice", "a", "because")
    assert first.queue_emptied and not again.queue_emptied and again.repeated
    store.submit(item.item.id, "alice", "b")
    [decision] = store.decisions("run").values()
    assert decision.labels == (("alice", "b"),) and decision.label == "b"


def test_overlap_gives_each_item_to_k_reviewers_and_measures_agreement(store):
    store.enqueue("run", queue_entries("run", 2), labels_needed=2)
    for reviewer, labels in (("alice", ["a", "b"]), ("bob", ["a", "a"])):
        for label in labels:
            item = store.claim_next("run", reviewer)
            store.submit(item.item.id, reviewer, label)
        assert store.claim_next("run", reviewer) is None  # never the same item twice
    stats = store.stats("run")
    assert stats["done"] == 2 and stats["labels"] == 4
    assert stats["inter_annotator_agreement"] == {"pairs": 2, "agreement": 0.5}
    assert sorted(d.label for d in store.decisions("run").values()) == ["a", "tie"]  # a split vote is a tie


def test_a_claim_passes_over_an_item_another_transaction_holds(store, db_url):
    """PostgreSQL: claiming takes the first item nobody is working on (SKIP LOCKED) instead of waiting for the
    transaction that holds the first one (SQLite serialises every write, so there is nothing to pass over)."""
    if not store.is_postgres:
        pytest.skip("SQLite has one writer at a time")
    entries = queue_entries("run", 3)
    store.enqueue("run", entries)
    first_item = store.claim_next("run", "alice").item.id
    store.submit(first_item, "alice", "a")  # (so that the held row below is the queue's first open item)
    second = entries[1][0].id
    claimed: list[Any] = []
    with store.engine.connect() as holder:
        transaction = holder.begin()
        holder.execute(text("SELECT id FROM review_items WHERE id = :id FOR UPDATE"), {"id": second})
        worker = threading.Thread(target=lambda: claimed.append(store.claim_next("run", "bob")))
        worker.start()
        worker.join(10)
        waited = worker.is_alive()
        transaction.rollback()
    worker.join(10)
    assert not waited, "claiming waited for another transaction's item"
    assert claimed[0].item.id == entries[2][0].id


def test_reviewers_claiming_side_by_side_fill_every_slot_once_and_empty_the_queue_once(store):
    """Six reviewers, each in two tabs at once, on items that want two labels: every item gets two labels from two
    different people, nobody holds two items, no label is refused, and the queue-emptied event fires once."""
    store.enqueue("run", queue_entries("run", 24), labels_needed=2)
    outcomes: list[Any] = []
    failures: list[BaseException] = []

    def tab(reviewer: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while (queued := store.claim_next("run", reviewer)) is not None:
                outcomes.append((reviewer, store.submit(queued.item.id, reviewer, rng.choice(["a", "b", "tie"]))))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    tabs = [threading.Thread(target=tab, args=(f"r{i % 6}", i)) for i in range(12)]
    for thread in tabs:
        thread.start()
    for thread in tabs:
        thread.join(120)
    assert not failures, failures
    decisions = store.decisions("run").values()
    assert all(len({reviewer for reviewer, _ in d.labels}) == len(d.labels) == 2 for d in decisions)
    assert sum(result.queue_emptied for _, result in outcomes) == 1
    assert store.stats("run")["done"] == 24


def test_skips_set_an_item_aside_after_max_skips(store):
    store.enqueue("run", queue_entries("run", 1), max_skips=2)
    item = store.claim_next("run", "alice")
    assert store.submit(item.item.id, "alice", None).status == "pending"
    assert store.claim_next("run", "alice") is None  # alice skipped it: not offered to her again
    item = store.claim_next("run", "bob")
    result = store.submit(item.item.id, "bob", None)
    assert result.status == "skipped" and result.queue_emptied
    assert store.stats("run")["skips"] == 2


def test_tokens_are_stored_hashed_and_can_be_revoked(store, db_url):
    token = store.add_reviewer("alice")
    assert store.authenticate(token) == "alice" and store.authenticate("wrong") is None
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT token_hash FROM review_reviewers")).scalar()
    assert token not in stored and len(stored) == 64
    store.revoke_reviewer("alice")
    assert store.authenticate(token) is None
    with pytest.raises(ReviewStoreError, match="no reviewer named 'carol'"):
        store.revoke_reviewer("carol")


def test_export_then_import_into_a_new_database_keeps_items_and_labels(store, tmp_path):
    store.enqueue("run", queue_entries("run", 3))
    item = store.claim_next("run", "alice")
    store.submit(item.item.id, "alice", "both_bad", "neither answers")
    rows = list(store.export_rows("run"))
    with ReviewStore.open(f"sqlite:///{tmp_path / 'copy.db'}") as copy:
        assert copy.import_rows(json.loads(json.dumps(rows))) == (3, 1)
        assert copy.import_rows(rows) == (0, 0)
        assert list(copy.export_rows("run")) == rows
        assert copy.stats("run")["done"] == 1
    tasks = label_studio_tasks(rows)
    assert tasks[0]["data"]["answer_a"] == "answer A0"
    assert tasks[0]["annotations"][0]["result"][0]["value"]["choices"] == ["Both bad"]


def test_a_newer_schema_is_refused_with_a_clear_message(db_url):
    with ReviewStore.open(db_url) as store:
        assert store.schema_version == SCHEMA_VERSION
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE rlaif_meta SET value = '99' WHERE key = 'schema_version'"))
    with pytest.raises(ReviewStoreError, match="schema version 99 is newer than this rlaif supports"):
        ReviewStore.open(db_url)


def test_a_database_made_before_the_open_items_index_gets_it_when_opened(db_url):
    with ReviewStore.open(db_url) as store:
        store.enqueue("run", queue_entries("run", 5))
        with store.engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_review_items_open"))
        assert "ix_review_items_open" not in {
            i["name"] for i in sqlalchemy_inspect(store.engine).get_indexes("review_items")
        }
    with ReviewStore.open(db_url) as store:
        assert "ix_review_items_open" in {
            i["name"] for i in sqlalchemy_inspect(store.engine).get_indexes("review_items")
        }
        assert store.claim_next("run", "ann") is not None


def test_a_schema_older_than_any_upgrade_is_refused_with_the_way_out(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with ReviewStore.open(url) as store, store.engine.begin() as conn:
        conn.execute(text("UPDATE rlaif_meta SET value = '0' WHERE key = 'schema_version'"))
    with pytest.raises(ReviewStoreError, match="older than 1 and has no upgrade path: export"):
        ReviewStore.open(url)


def test_a_version_1_database_is_upgraded_when_opened_and_keeps_its_queue(db_url):
    """Version 1 as it was: the version-2 columns dropped, with items, a claim and labels in it."""
    with ReviewStore.open(db_url) as store:
        store.enqueue("run", queue_entries("run", 3))
        first = store.claim_next("run", "ann")
        store.submit(first.item.id, "ann", "a", "fine")
        held = store.claim_next("run", "bob")
        with store.engine.begin() as conn:
            for table, column in (
                ("review_runs", "settings_json"),
                ("review_labels", "strength"),
                ("review_labels", "tags_json"),
                ("review_items", "gold_label"),
                ("review_items", "candidates_json"),
                ("review_labels", "ranking_json"),
                ("review_items", "settled_label"),
                ("review_items", "settled_by"),
            ):
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            conn.execute(text("UPDATE rlaif_meta SET value = '1' WHERE key = 'schema_version'"))
    with ReviewStore.open(db_url) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        assert store.claim_next("run", "bob").item.id == held.item.id  # the claim survived
        store.submit(held.item.id, "bob", "b", strength="much", tags=("too_long",))
        labels = {d.item_id: d for d in store.decisions("run").values()}
        assert labels[first.item.id].labels == (("ann", "a"),) and labels[held.item.id].strength == "much"
        assert labels[held.item.id].tags == ("too_long",)


def test_bad_database_urls_are_named_and_passwords_never_shown():
    with pytest.raises(ReviewStoreError, match="not a database URL"):
        ReviewStore.open("not a url")
    with pytest.raises(ReviewStoreError, match="unsupported database 'mysql'"):
        ReviewStore.open("mysql://root@127.0.0.1/test")
    with pytest.raises(ConfigError, match="review.db: .*PGPASSWORD") as caught:
        load_config(None, ["review.db=postgresql://root:hunter2@127.0.0.1/db"])
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ReviewStoreError) as refused:
        ReviewStore.open("postgresql://nobody:hunter2@127.0.0.1:5432/absent_db")
    assert "hunter2" not in str(refused.value)


def test_the_default_database_sits_beside_the_run_directory(tmp_path):
    assert load_config(None).review_db() == "sqlite:///runs/review.db"
    assert load_config(None, [f"run.dir={tmp_path / 'x'}"]).review_db() == f"sqlite:///{tmp_path / 'review.db'}"
