"""The review page in headless Chromium (Debian's chromium, driven by Playwright): sign in with a token,
label with the keyboard, see progress; hostile candidates show as text and run nothing; a 5,000-word answer and
a phone-sized screen leave the decision bar in view."""

from __future__ import annotations

from rlaif.review.app import stored_label
from rlaif.review.store import ReviewStore
from rlaif.schema import Candidate, Judgment, Pair, PromptItem, ReviewItem
from tests.review_fixtures import RLAIF, ReviewServer, entry, start_reviewing

SCRIPT = "<script>window.__pwned = 'script'</script>"
IMAGE = "<img src=x onerror=\"window.__pwned = 'img'\">"
LINK = "[click me](javascript:window.__pwned='link')"


def hostile_queue(run_id: str) -> list[tuple[ReviewItem, Pair, Judgment]]:
    texts = [
        (f"Say hi. {SCRIPT}", f"Hello {SCRIPT}", f"**Hi** {IMAGE}"),
        ("Write code.", "```html\n<script>alert(1)</script>\n```", f"See {LINK}"),
        ("Last one.", "plain answer one", "plain answer two"),
    ]
    entries = []
    for question, first, second in texts:
        prompt = PromptItem(messages=[{"role": "system", "content": "Be nice."}, {"role": "user", "content": question}])
        pair = Pair(
            prompt=prompt,
            a=Candidate(prompt_id=prompt.id, text=first, model="p"),
            b=Candidate(prompt_id=prompt.id, text=second, model="p"),
        )
        judgment = Judgment(
            pair_id=pair.id, winner="a", p_a=0.5, confidence=0.0, status="ok", judge_model="j", template_hash="t"
        )
        entries.append((ReviewItem(run_id=run_id, pair_id=pair.id, reason="low_confidence"), pair, judgment))
    return entries


def test_a_reviewer_signs_in_labels_with_the_keyboard_and_hostile_text_stays_text(browser, tmp_path):
    import subprocess

    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    entries = hostile_queue("web")
    with ReviewStore.open(db_url) as store:
        store.enqueue("web", entries)
    token = subprocess.run(
        [RLAIF, "review", "token", "add", "alice", "--db", db_url], capture_output=True, text=True, check=True
    ).stdout.splitlines()[-1]
    dialogs: list[str] = []
    with ReviewServer(db_url) as server:
        page = browser.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        response = page.goto(f"{server.url}/runs/web")
        assert response.status == 401 and page.locator("h1").inner_text() == "Sign in"
        page.fill("input[name=token]", "wrong-token")
        page.click("button[type=submit]")
        assert "unknown or revoked token" in page.inner_text("body")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_selector("#start-form")  # showing the run claims nothing; starting is a POST
        # Enter starts: the start button has the focus (autofocus, which the browser applies once it has
        # rendered the page: a loaded machine takes a moment, so wait for it rather than race it).
        page.wait_for_function("document.activeElement && document.activeElement.type === 'submit'")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        page.wait_for_selector("#label-form")
        assert "0 of 3 finished" in page.inner_text("#progress")
        assert "alice" in page.inner_text("header")

        # Item 1: the hostile payloads are visible as text, nothing ran, no image element was made.
        answers = page.inner_text(".answers")
        assert "<script>window.__pwned = 'script'</script>" in answers and "<img src=x onerror=" in answers
        assert "<script>window.__pwned = 'script'</script>" in page.inner_text(".conversation")
        assert page.locator(".answers img, .conversation img, .answers script").count() == 0
        assert page.locator(".answers strong").count() == 1  # Markdown still renders (**Hi**)
        assert page.evaluate("window.__pwned") is None
        first_swapped = page.locator("#answer-1").inner_text().find("Hello") == -1
        page.fill("textarea[name=comment]", "1 typed here is a comment, not a shortcut")
        assert page.locator("#label-form").count() == 1 and "0 of 3" in page.inner_text("#progress")
        page.locator("textarea[name=comment]").blur()
        with page.expect_navigation():
            page.keyboard.press("1")

        # Item 2: the javascript: link is not a link any more; a tie by keyboard.
        assert "1 of 3 finished" in page.inner_text("#progress")
        assert page.locator(".answers a[href^='javascript']").count() == 0
        assert "<script>alert(1)</script>" in page.inner_text(".answers")
        with page.expect_navigation():
            page.keyboard.press("t")

        # Item 3: both bad; then the queue is done.
        assert "2 of 3 finished" in page.inner_text("#progress")
        with page.expect_navigation():
            page.keyboard.press("b")
        assert "3 of 3 finished" in page.inner_text("#progress") and "you labelled 3" in page.inner_text("#progress")
        assert page.evaluate("window.__pwned") is None and dialogs == []
        page.goto(f"{server.url}/")
        assert "3 / 3" in page.inner_text("table.runs")
        page.close()

    with ReviewStore.open(db_url) as store:
        decisions = store.decisions("web")
    by_pair = {pair.id: decisions[pair.id] for _, pair, _ in entries}
    first, second, third = (by_pair[pair.id] for _, pair, _ in entries)
    assert first.labels == (("alice", stored_label("left", first_swapped)),)
    assert second.label == "tie" and third.label == "both_bad"
    with ReviewStore.open(db_url) as store:
        comments = [row["labels"][0]["comment"] for row in store.export_rows("web")]
    assert comments[0] == "1 typed here is a comment, not a shortcut"


def comparison_queue(run_id: str) -> list[tuple[ReviewItem, Pair, Judgment]]:
    long_answer = " ".join(f"word{i % 97}" for i in range(5000))
    poem = "Roses are red,\nviolets are blue,\nthis line stays a line,\nand [so does this link](https://example.org/)."
    return [
        entry(run_id, "Write at length.", long_answer, "", finish_reasons=("length", "stop")),
        entry(run_id, "A poem?", poem, "No.", finish_reasons=("stop", "stop")),
    ]


def png_width(image: bytes) -> int:
    return int.from_bytes(image[16:20], "big")  # the IHDR chunk's width


def test_the_page_compares_a_5000_word_answer_on_a_desktop_and_a_phone(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore.open(db_url) as store:
        store.enqueue("compare", comparison_queue("compare"))
        token = store.add_reviewer("alice")
    with ReviewServer(db_url) as server:
        page = start_reviewing(browser.new_page(viewport={"width": 1280, "height": 800}), server.url, token, "compare")

        # Desktop: side by side; the long answer scrolls on its own and the decision bar stays in view.
        long_side = page.locator(".answer", has=page.locator(".badge.cut-off"))
        assert "5,000 words" in long_side.locator("h2").inner_text()
        assert page.locator(".answer", has=page.locator(".badge.empty")).locator("h2").inner_text().count("0 words")
        assert long_side.evaluate("e => e.scrollHeight > 5 * e.clientHeight")
        bar = page.locator(".choices").bounding_box()
        assert bar is not None and 0 <= bar["y"] and bar["y"] + bar["height"] <= 800
        first, second = (page.locator(f"#answer-{n}").bounding_box() for n in (1, 2))
        assert abs(first["y"] - second["y"]) < 1 and second["x"] > first["x"] + first["width"]  # side by side

        # Phone: stacked, no horizontal scroll (the full-page screenshot is as wide as the screen), bar in view.
        page.set_viewport_size({"width": 375, "height": 740})
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        first, second = (page.locator(f"#answer-{n}").bounding_box() for n in (1, 2))
        assert second["y"] >= first["y"] + first["height"]  # stacked
        bar = page.locator(".choices").bounding_box()
        assert bar is not None and bar["y"] + bar["height"] <= 740
        shot = page.screenshot(full_page=True, path=str(tmp_path / "phone.png"))
        assert png_width(shot) == 375 and len(shot) > 10_000

        # A poem keeps its lines; a link opens in a new tab, without the opener.
        page.set_viewport_size({"width": 1280, "height": 800})
        with page.expect_navigation():
            page.keyboard.press("1")
        poem = page.locator(".answer", has_text="Roses are red")
        assert poem.locator(".content br").count() == 3
        link = poem.locator(".content a")
        assert link.get_attribute("target") == "_blank" and "noopener" in link.get_attribute("rel")
        page.close()
