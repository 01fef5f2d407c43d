"""The review page in headless Chromium (Debian's chromium, driven by Playwright): sign in with a token,
label with the keyboard, see progress; hostile candidates show as text and run nothing; a 5,000-word answer and
a phone-sized screen leave the decision bar in view."""

from __future__ import annotations

from rlaif.review.answer_diff import answer_diff
from rlaif.review.app import render_markdown, stored_label
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


def wait_until(page, predicate: str, timeout_s: float = 10.0) -> None:
    """Poll a JavaScript predicate (a function source) from here until it holds. Playwright's wait_for_function
    evaluates a string inside the page when it polls, which the page's CSP (no 'unsafe-eval') refuses; an
    evaluate call from the driver is not subject to it."""
    import time

    deadline = time.monotonic() + timeout_s
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"still false after {timeout_s} s: {predicate}"
        page.wait_for_timeout(50)


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
        wait_until(page, "() => document.activeElement && document.activeElement.type === 'submit'")
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


def test_near_identical_answers_point_to_a_diff_and_long_answers_scroll_together(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    shared = "The capital of Australia is Canberra. It has about 450,000 people and sits inland.\n" * 3
    changed = shared.replace("450,000", "<b>460,000</b>", 1)
    long_text = "\n\n".join(f"Paragraph {i}: " + "word " * 60 for i in range(60))
    with ReviewStore.open(db_url) as store:
        store.enqueue(
            "diff",
            [
                entry("diff", "How big is Canberra?", shared, changed),
                entry("diff", "Tell me everything.", long_text, long_text.replace("word", "term")),
            ],
        )
        token = store.add_reviewer("alice")
    with ReviewServer(db_url) as server:
        page = start_reviewing(browser.new_page(viewport={"width": 1280, "height": 800}), server.url, token, "diff")
        assert page.locator(".badge.near-identical").is_visible()
        assert page.locator("#diff").is_hidden()
        page.keyboard.press("d")
        assert page.locator("#diff").is_visible()
        removed, added = page.locator("#diff .diff del"), page.locator("#diff .diff ins")
        assert removed.count() == added.count() == 1 and page.locator("#diff b").count() == 0
        # the one change (answer 2 against answer 1, in the order shown), its markup shown as text
        assert {removed.inner_text(), added.inner_text()} == {"450,000", "<b>460,000</b>"}
        page.keyboard.press("d")
        assert page.locator("#diff").is_hidden()
        with page.expect_navigation():
            page.keyboard.press("1")

        # Two long answers, nothing alike: no hint; each scrolls on its own until l ties them together.
        assert page.locator(".badge.near-identical").count() == 0
        first, second = page.locator("#answer-1"), page.locator("#answer-2")
        first.evaluate("e => { e.scrollTop = e.scrollHeight / 2; }")
        page.wait_for_timeout(200)
        assert second.evaluate("e => e.scrollTop") == 0
        page.keyboard.press("l")
        assert page.is_checked("#scroll-together")
        first.evaluate("e => { e.scrollTop = (e.scrollHeight - e.clientHeight) * 0.75; }")
        wait_until(
            page,
            "() => { const b = document.querySelector('#answer-2');"
            " return Math.abs(b.scrollTop / (b.scrollHeight - b.clientHeight) - 0.75) < 0.02; }",
            timeout_s=5,
        )
        second.evaluate("e => { e.scrollTop = 0; }")  # and back, the other way
        wait_until(page, "() => document.querySelector('#answer-1').scrollTop < 2", timeout_s=5)
        page.close()


def test_the_word_diff_marks_only_the_change_and_leaves_different_answers_alone():
    found = answer_diff(
        "It has 450,000 people\nand <sits> inland, far away.", "It has 460,000 people\nand <sits> inland, far away."
    )
    assert found is not None and 0.8 < found.similarity < 1
    assert str(found.html) == "It has <del>450,000</del><ins>460,000</ins> people\nand &lt;sits&gt; inland, far away."
    appended = answer_diff("one two three four five six", "one two three four five six seven")
    assert appended is not None and str(appended.html) == "one two three four five six <ins>seven</ins>"
    assert answer_diff("one two three four", "five six seven eight") is None  # nothing alike: no diff view
    assert answer_diff("", "anything") is None
    different = "\n\n".join(f"Paragraph {i}: " + "word " * 60 for i in range(60))
    assert answer_diff(different, different.replace("word", "term")) is None  # at once (a full diff took 31 s)


def test_math_stays_as_written_and_money_stays_money():
    html = str(render_markdown("Area $x*y*z$ and $a_1 + b_2$.\n\n$$\\sum_{i=1}^n x_i$$\n\nIt costs $5 or $6."))
    assert '<span class="math inline">x*y*z</span>' in html and '<span class="math inline">a_1 + b_2</span>' in html
    assert '<div class="math block">\n\\sum_{i=1}^n x_i\n</div>' in html and "<em>" not in html
    assert "It costs $5 or $6." in html
    hostile = str(render_markdown('<span class="badge">x</span> $<img src=x onerror=alert(1)>$'))
    assert "<img" not in hostile and '<span class="badge"' not in hostile  # both shown as text
