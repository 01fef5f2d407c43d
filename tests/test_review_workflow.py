"""A reviewer's work is never lost, in headless Chromium against `rlaif review serve`: the open page renews its
lease (a short one here) so nobody else gets the item; a lease lost while the tab was hidden gives a plain
message that keeps the comment and offers the next pair, both when the page notices and when a label is
sent; Esc and Ctrl+Enter leave the comment box and the next key labels with the comment; "show me another"
keeps the item open for everyone while "set aside" takes it out; undo goes back to the previous pair with the
label shown and changeable, and "my labels" lists them; run names with '/' are refused."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from rlaif.config import ConfigError, load_config
from rlaif.review.store import ReviewStore, ReviewStoreError
from tests.review_fixtures import RLAIF, ReviewServer, queue_entries, start_reviewing

LEASE_S = 6  # the page renews every 5 s (its floor), so an open page holds the item past this


def reviewers(db_url: str, run_id: str, count: int) -> tuple[str, str]:
    with ReviewStore.open(db_url) as store:
        store.enqueue(run_id, queue_entries(run_id, count))
        return store.add_reviewer("alice"), store.add_reviewer("bob")


def open_first_item(browser, server: ReviewServer, token: str, run_id: str):
    return start_reviewing(browser.new_page(), server.url, token, run_id)


def claim(server: ReviewServer, token: str, run_id: str) -> httpx.Response:
    return httpx.post(f"{server.url}/api/runs/{run_id}/next", headers={"Authorization": f"Bearer {token}"})


def hide(page) -> None:
    """As a browser does for a background tab: visibilityState says hidden (renewals stop)."""
    page.evaluate("Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true})")


def test_an_open_page_keeps_its_item_past_the_lease_and_shows_the_time_left(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    alice, bob = reviewers(db_url, "held", 1)
    with ReviewServer(db_url, "--lease-s", str(LEASE_S)) as server:
        page = open_first_item(browser, server, alice, "held")
        assert page.inner_text("#lease-left").endswith(" s")
        time.sleep(2 * LEASE_S)  # two leases long: the page renewed it meanwhile
        assert claim(server, bob, "held").status_code == 204  # not free: alice still holds it
        left = int(page.inner_text("#lease-left").removesuffix(" s"))
        assert 0 < left <= LEASE_S
        page.fill("textarea[name=comment]", "kept")
        page.locator("textarea[name=comment]").blur()
        with page.expect_navigation():
            page.keyboard.press("2")
        assert "1 of 1 finished" in page.inner_text("#progress")
    with ReviewStore.open(db_url) as store:
        [row] = list(store.export_rows("held"))
    assert [(label["reviewer"], label["comment"]) for label in row["labels"]] == [("alice", "kept")]


def test_a_lease_lost_in_a_hidden_tab_is_said_plainly_and_the_comment_is_kept(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    alice, bob = reviewers(db_url, "lost", 3)
    with ReviewServer(db_url, "--lease-s", str(LEASE_S)) as server:
        # The page notices when it is shown again: message, label buttons off, the comment still there.
        page = open_first_item(browser, server, alice, "lost")
        page.fill("textarea[name=comment]", "my careful note")
        hide(page)
        time.sleep(LEASE_S + 1)
        taken = claim(server, bob, "lost").json()  # the lapsed item went to bob, who labels it
        assert taken["id"] in page.get_attribute("#label-form", "action")
        labelled = httpx.post(
            f"{server.url}/api/items/{taken['id']}/label",
            json={"label": "a"},
            headers={"Authorization": f"Bearer {bob}"},
        )
        assert labelled.status_code == 200
        page.evaluate("Object.defineProperty(document, 'visibilityState', {value: 'visible', configurable: true})")
        page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
        page.wait_for_selector("#lease-lost", state="visible")
        assert "no longer yours" in page.inner_text("#lease-lost")
        assert page.locator(".choices button:enabled").count() == 0
        assert page.input_value("textarea[name=comment]") == "my careful note"
        with page.expect_navigation():
            page.click("#lost-next")
        assert page.locator("#label-form").count() == 1  # the next pair, not raw JSON

        # A label sent after the lease was lost (the page had not noticed yet): a page, not JSON, with the comment.
        alice_item = page.get_attribute("#label-form", "action").rsplit("/", 1)[-1]
        page.fill("textarea[name=comment]", "second note <b>stays text</b>")
        hide(page)
        time.sleep(LEASE_S + 1)
        assert claim(server, bob, "lost").json()["id"] == alice_item  # the lapsed item went to bob
        page.locator("textarea[name=comment]").blur()
        with page.expect_navigation():
            page.keyboard.press("1")
        assert "That pair is no longer yours" in page.inner_text("h1")
        assert page.input_value("#kept-comment") == "second note <b>stays text</b>"
        with page.expect_navigation():
            page.click("#start-form button")
        assert "question" in page.inner_text(".conversation")  # alice goes on with the pair left for her
    with ReviewStore.open(db_url) as store:
        labels = [label for row in store.export_rows("lost") for label in row["labels"]]
    assert [label["reviewer"] for label in labels] == ["bob"]  # nothing of alice's: what she sent was shown back


@pytest.mark.parametrize("leave", ["Escape", "Control+Enter"])
def test_esc_and_ctrl_enter_leave_the_comment_box_and_the_next_key_labels_with_it(browser, tmp_path, leave):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    alice, _ = reviewers(db_url, "keys", 1)
    with ReviewServer(db_url) as server:
        page = open_first_item(browser, server, alice, "keys")
        page.click("textarea[name=comment]")
        page.keyboard.type("t and 2 are text here")
        page.keyboard.press(leave)
        assert page.evaluate("document.activeElement.tagName") != "TEXTAREA"
        with page.expect_navigation():
            page.keyboard.press("t")
        assert "1 of 1 finished" in page.inner_text("#progress")
    with ReviewStore.open(db_url) as store:
        [row] = list(store.export_rows("keys"))
    assert [(label["label"], label["comment"]) for label in row["labels"]] == [("tie", "t and 2 are text here")]


def test_show_me_another_keeps_the_item_open_and_set_aside_takes_it_out(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    alice, bob = reviewers(db_url, "choose", 2)
    with ReviewServer(db_url) as server:
        page = open_first_item(browser, server, alice, "choose")
        first = page.inner_text(".conversation")
        with page.expect_navigation():
            page.keyboard.press("n")
        assert page.inner_text(".conversation") != first  # a different pair
        taken = claim(server, bob, "choose")  # the one alice gave back is open for others
        assert taken.status_code == 200 and taken.json()["prompt"][0]["content"] in first
        with page.expect_navigation():
            page.keyboard.press("s")  # set aside: with max_skips 1 it leaves the queue for everyone
        with ReviewStore.open(db_url) as store:
            stats = store.stats("choose")
        assert stats["skipped"] == 1 and stats["claimed"] == 1  # bob still holds the first


def test_the_api_gives_an_item_back_and_claims_another(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    alice, bob = reviewers(db_url, "api", 2)
    with ReviewServer(db_url) as server:
        headers = {"Authorization": f"Bearer {alice}"}
        first = claim(server, alice, "api").json()
        second = httpx.post(f"{server.url}/api/items/{first['id']}/release", headers=headers).json()
        assert second["id"] != first["id"]
        assert claim(server, bob, "api").json()["id"] == first["id"]
        again = httpx.post(f"{server.url}/api/items/{second['id']}/release", headers=headers)
        assert again.json()["id"] == second["id"]  # no other item is free: the same one again
        renewed = httpx.post(f"{server.url}/api/items/{second['id']}/renew", headers=headers)
        assert renewed.status_code == 200 and renewed.json()["lease_expires_at"].endswith("Z")
        other = httpx.post(f"{server.url}/api/items/{first['id']}/renew", headers=headers)
        assert other.status_code == 409  # bob's, not alice's


def test_run_names_with_a_slash_are_refused_at_the_start(tmp_path):
    with pytest.raises(ConfigError, match=r"run name 'team/a'.*without '/'"):
        load_config(None, ["run.name=team/a"])
    [(item, pair, judgment)] = queue_entries("ok", 1)
    row = {"item": {**item.model_dump(mode="json"), "run_id": "team/a", "id": ""}, "pair": pair.model_dump(mode="json")}
    row["judgment"] = judgment.model_dump(mode="json")
    path = tmp_path / "queue.jsonl"
    path.write_text(json.dumps(row) + "\n")
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    with (
        ReviewStore.open(db_url) as store,
        pytest.raises(ReviewStoreError, match=r"(?s)queue.jsonl:1: .*run name 'team/a'"),
    ):
        store.import_rows(_rows(path), source=str(path))
    result = subprocess.run([RLAIF, "review", "import", str(path), "--db", db_url], capture_output=True, text=True)
    assert result.returncode != 0 and "run name 'team/a'" in result.stdout + result.stderr


def _rows(path):
    for line in path.read_text().splitlines():
        yield json.loads(line)


def test_undo_shows_the_previous_pair_with_its_label_and_changes_it(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    alice, _ = reviewers(db_url, "undo", 3)
    with ReviewServer(db_url) as server:
        page = open_first_item(browser, server, alice, "undo")
        assert page.locator("#previous").count() == 0  # nothing labelled yet
        first = page.inner_text(".conversation")
        page.fill("textarea[name=comment]", "first thoughts")
        page.locator("textarea[name=comment]").blur()
        with page.expect_navigation():
            page.keyboard.press("1")
        second = page.inner_text(".conversation")
        with page.expect_navigation():
            page.keyboard.press("u")  # back to the first pair: a GET that changes nothing
        assert page.inner_text(".conversation") == first
        assert "Answer 1 is better" in page.inner_text("#given")
        assert page.locator("button.chosen").inner_text().endswith("Answer 1 is better")
        assert page.input_value("textarea[name=comment]") == "first thoughts"
        assert page.locator("#lease").count() == 0 and page.locator("button[value=another]").count() == 0
        with page.expect_navigation():
            page.keyboard.press("2")  # changed
        assert page.inner_text(".conversation") == second  # back at the pair alice still holds
        assert "1 of 3 finished" in page.inner_text("#progress")
        page.click("#my-labels")
        rows = page.locator("#mine tbody tr")
        assert rows.count() == 1 and "Answer 2 is better" in rows.inner_text() and "first thoughts" in rows.inner_text()
        assert httpx.get(f"{server.url}/runs/undo/items/x").status_code == 401  # no token: nothing shown
        other = page.goto(f"{server.url}/runs/undo/items/{_first_unlabelled(db_url, 'undo')}")
        assert other.status == 404  # only your own labelled pairs are shown this way
    with ReviewStore.open(db_url) as store:
        decisions = store.decisions("undo")
        given = store.labels_by("undo", "alice")
    [changed] = given
    assert changed.label == ("b" if not changed.queued.shown_swapped else "a") and changed.comment == "first thoughts"
    assert decisions[changed.queued.pair.id].labels == (("alice", changed.label),)


def _first_unlabelled(db_url: str, run_id: str) -> str:
    with ReviewStore.open(db_url) as store:
        return next(row["item"]["id"] for row in store.export_rows(run_id) if not row["labels"])


def test_question_mark_shows_and_hides_the_keys(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    alice, _ = reviewers(db_url, "help", 1)
    with ReviewServer(db_url) as server:
        page = open_first_item(browser, server, alice, "help")
        assert page.locator("#keys-help").is_hidden()
        page.keyboard.press("?")
        assert page.locator("#keys-help").is_visible() and "Set aside" in page.inner_text("#keys-help")
        page.keyboard.press("Escape")
        assert page.locator("#keys-help").is_hidden()
        page.click("textarea[name=comment]")
        page.keyboard.type("why? because")  # typed into the comment, not a shortcut
        assert page.locator("#keys-help").is_hidden()
        assert page.input_value("textarea[name=comment]") == "why? because"
