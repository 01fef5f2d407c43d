"""Richer labels and the run's guidelines, per run: in headless Chromium against `rlaif review serve`, the
guidelines panel (g) shows the run's Markdown, sanitised; m says "much better" and 3-9 put tags on a pair;
undo shows them; the API takes them and refuses what the run does not offer; the merge keeps them and a
"slightly better" label counts half as a reward model's margin."""

from __future__ import annotations

import httpx
import pytest

from rlaif.config import ConfigError, load_config
from rlaif.pipeline.enqueue import run_settings
from rlaif.review.store import ReviewStore, RunSettings
from tests.review_fixtures import ReviewServer, queue_entries, start_reviewing
from training.data import label_confidence

GUIDELINES = """# Judge helpfulness first

- Prefer the answer that **answers the question**.
- <script>document.title = 'owned'</script> stays text; ![x](http://127.0.0.1:9/beacon) loads nothing.
"""


def queue(db_url: str, run_id: str, count: int, settings: RunSettings) -> str:
    with ReviewStore.open(db_url) as store:
        store.enqueue(run_id, queue_entries(run_id, count), settings=settings)
        return store.add_reviewer("alice")


def test_guidelines_strength_and_tags_on_the_page(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    settings = RunSettings(GUIDELINES, strength=True, tags=("wrong_facts", "too_long"))
    alice = queue(db_url, "rich", 2, settings)
    with ReviewServer(db_url) as server:
        page = start_reviewing(browser.new_page(), server.url, alice, "rich")
        panel = page.locator("#guidelines")
        assert panel.is_hidden()
        page.keyboard.press("g")
        assert panel.is_visible()
        assert panel.locator("h1").inner_text() == "Judge helpfulness first"
        assert panel.locator("strong").inner_text() == "answers the question"
        assert panel.locator("script, img").count() == 0 and page.title() != "owned"
        assert "<script>" in panel.inner_text()
        page.keyboard.press("Escape")
        assert panel.is_hidden()
        page.click("#show-guidelines")
        assert panel.is_visible()
        page.click("#hide-guidelines")
        assert panel.is_hidden()
        assert page.is_checked("input[name=strength][value=slightly]")  # the default
        page.keyboard.press("m")
        page.keyboard.press("4")  # the second tag, too_long
        assert page.is_checked("input[name=strength][value=much]")
        assert page.is_checked("input[name=tags][value=too_long]")
        assert not page.is_checked("input[name=tags][value=wrong_facts]")
        with page.expect_navigation():
            page.keyboard.press("1")
        with page.expect_navigation():
            page.keyboard.press("u")  # undo shows what was given
        assert page.is_checked("input[name=strength][value=much]")
        assert page.is_checked("input[name=tags][value=too_long]")
        page.keyboard.press("3")  # and changes it: wrong_facts on as well
        page.keyboard.press("m")  # slightly after all
        with page.expect_navigation():
            page.keyboard.press("1")
    with ReviewStore.open(db_url) as store:
        [given] = store.labels_by("rich", "alice")
    assert given.label in ("a", "b") and given.strength == "slightly"
    assert given.tags == ("too_long", "wrong_facts")


def test_the_api_takes_strength_and_tags_and_refuses_what_the_run_does_not_offer(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    alice = queue(db_url, "rich", 3, RunSettings(None, strength=True, tags=("unsafe",)))
    with ReviewStore.open(db_url) as store:
        store.enqueue("plain", queue_entries("plain", 1))
    headers = {"Authorization": f"Bearer {alice}"}
    with ReviewServer(db_url) as server, httpx.Client(base_url=server.url, headers=headers) as client:
        item = client.post("/api/runs/rich/next").json()["id"]
        refused = client.post(f"/api/items/{item}/label", json={"label": "a", "tags": ["too_long"]})
        assert refused.status_code == 422 and "not offered" in refused.json()["detail"]
        refused = client.post(f"/api/items/{item}/label", json={"label": "a", "strength": "hugely"})
        assert refused.status_code == 422
        answer = client.post(f"/api/items/{item}/label", json={"label": "b", "strength": "much", "tags": ["unsafe"]})
        assert answer.status_code == 200
        tie = client.post("/api/runs/rich/next").json()["id"]
        answer = client.post(f"/api/items/{tie}/label", json={"label": "tie", "strength": "much"})
        assert answer.status_code == 200  # a strength means nothing with a tie: dropped
        plain = client.post("/api/runs/plain/next").json()["id"]
        refused = client.post(f"/api/items/{plain}/label", json={"label": "a", "strength": "slightly"})
        assert refused.status_code == 422 and "review.strength is off" in refused.json()["detail"]
    with ReviewStore.open(db_url) as store:
        decisions = {d.item_id: d for d in store.decisions("rich").values()}
    assert decisions[item].strength == "much" and decisions[item].tags == ("unsafe",)
    assert decisions[tie].strength is None


def test_the_majority_strength_and_every_tag_reach_the_merge_and_the_margin(db_url):
    with ReviewStore.open(db_url) as store:
        store.enqueue("run", queue_entries("run", 1), labels_needed=3, settings=RunSettings(strength=True))
        for reviewer, label, strength, tags in (
            ("ann", "a", "slightly", ["too_long"]),
            ("bob", "a", "slightly", []),
            ("cy", "b", "much", ["unsafe"]),
        ):
            queued = store.claim_next("run", reviewer)
            store.submit(queued.item.id, reviewer, label, None, strength, tags)
        [decision] = store.decisions("run").values()
    assert decision.label == "a" and decision.strength == "slightly" and decision.tags == ("too_long", "unsafe")
    assert label_confidence({"label_source": "human", "human_strength": "slightly"}) == 0.5
    assert label_confidence({"label_source": "human", "human_strength": "much"}) == 1.0
    assert label_confidence({"label_source": "human"}) == 1.0


def test_guidelines_and_tags_are_checked_when_the_config_loads(tmp_path):
    guide = tmp_path / "guide.md"
    guide.write_text("Be kind.", encoding="utf-8")
    config = load_config(None, [f"review.guidelines={guide}", "review.strength=true", "review.tags=[unsafe, too_long]"])
    assert run_settings(config) == RunSettings("Be kind.", True, ("unsafe", "too_long"))
    with pytest.raises(ConfigError, match="review.guidelines: .*no file"):
        load_config(None, [f"review.guidelines={tmp_path / 'absent.md'}"])
    with pytest.raises(ConfigError, match="review.tags: .*lower-case"):
        load_config(None, ["review.tags=[Too Long]"])
    with pytest.raises(ConfigError, match="review.tags"):
        load_config(None, ["review.tags=[a, b, c, d, e, f, g, h]"])  # keys 3 to 9: seven at most
