"""The review service against the exploits found by trying it as an attacker would, each shown in headless
Chromium or over raw HTTP: markup injected through every value a page shows (reflected through the path,
stored in run and reviewer names, prompts and answers), model output making the reviewer's browser claim
items elsewhere (a GET with a side effect), and request bodies read before authentication and without a cap."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
import psutil

from rlaif.review.app import MAX_BODY_BYTES, csrf_token
from rlaif.review.store import ReviewStore
from tests.review_fixtures import RLAIF, ReviewServer, entry, queue_entries, start_reviewing

PWN = "window.__pwned"
INJECT = f"<img src=x onerror=\"{PWN}='markup'\"><meta http-equiv=refresh content='0;url=http://127.0.0.1:9'>"
RUN = f"evil<b id=injected-run><img src=x onerror=\"{PWN}='run'\">"  # no '/': one path segment
REVIEWER = f"mallory<b id=injected-name><img src=x onerror=\"{PWN}='name'\">"  # names: at most 128
# Markdown images that would make the reviewer's browser claim an item of another run when viewed.
CLAIM_ELSEWHERE = "![x](/api/runs/other/next) ![y](/runs/other)"


def token_for(db_url: str, name: str) -> str:
    result = subprocess.run(
        [RLAIF, "review", "token", "add", name, "--db", db_url], capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()[-1]


def test_markup_in_the_path_and_in_stored_values_stays_text(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore.open(db_url) as store:
        store.enqueue(RUN, [entry(RUN, f"Question {INJECT}", f"Answer {INJECT}", f"Other {INJECT}")])
    token = token_for(db_url, REVIEWER)
    with ReviewServer(db_url) as server:
        page = browser.new_page()
        # Reflected: a crafted link's path lands in the sign-in form's `next` field.
        crafted = (
            "/runs/%22%3E%3Cmeta%20http-equiv%3Drefresh%20content%3D%220%3Burl%3Dhttp%3A%2F%2F127.0.0.1%3A9%2F%22%3E"
        )
        response = page.goto(server.url + crafted)
        assert response.status == 401
        page.wait_for_timeout(1500)  # a meta refresh of 0 s would have left by now
        assert page.url.startswith(server.url)
        assert page.locator("meta[http-equiv]").count() == 0
        assert page.locator("input[name=next]").get_attribute("value").startswith('/runs/">')
        # Stored: the run name, the reviewer's name, the prompt and the answers.
        page.goto(server.url + "/")
        page.fill("input[name=token]", token)
        page.click("button[type=submit]")
        page.wait_for_selector("table.runs")
        assert RUN in page.inner_text("table.runs") and REVIEWER in page.inner_text("header")
        page.click("table.runs a")
        page.wait_for_selector("#start-form")
        with page.expect_navigation():
            page.click("#start-form button")
        page.wait_for_selector("#label-form")
        assert RUN in page.inner_text("#progress") and INJECT in page.inner_text(".conversation")
        assert INJECT in page.inner_text(".answers")
        page.wait_for_timeout(500)
        assert page.locator("#injected-run, #injected-name, img, meta[http-equiv]").count() == 0
        assert page.evaluate(PWN) is None and page.url.startswith(server.url)


def test_viewing_an_answer_claims_nothing_anywhere(browser, tmp_path):
    """Model output cannot make the browser send requests: images are dropped from answers (and the CSP allows
    none); and no page or API GET claims an item."""
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore.open(db_url) as store:
        store.enqueue("web", [entry("web", "Draw.", f"Here {CLAIM_ELSEWHERE}", "<img src='/api/runs/other/next'>")])
        store.enqueue("other", queue_entries("other", 2))
    token = token_for(db_url, "alice")
    with ReviewServer(db_url) as server:
        page = browser.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        start_reviewing(page, server.url, token, "web")
        page.wait_for_timeout(1000)
        assert page.locator(".answers img").count() == 0
        assert not [url for url in requests if "/other" in url]
        page.goto(server.url + "/runs/other")  # showing a run's page claims nothing either
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as client:
            assert client.get("/api/runs/other/next").status_code == 405
    with ReviewStore.open(db_url) as store:
        assert store.stats("other")["claimed"] == 0 and store.stats("other")["pending"] == 2


def send_raw(url: str, request: bytes) -> bytes:
    """Send bytes as they are (a body of any size, a lying or missing Content-Length); the reply's start."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        try:
            connection.sendall(request)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed before the end
            pass
        return connection.recv(4096)


def test_bodies_are_read_only_after_the_token_and_never_past_the_cap(db_url):
    with ReviewStore.open(db_url) as store:
        store.enqueue("run", queue_entries("run", 2))
        token = store.add_reviewer("alice")
    with ReviewServer(db_url) as server:
        server_memory = psutil.Process(server.process.pid)
        before = server_memory.memory_info().rss
        huge = b"x" * (50 * 1024 * 1024)
        started = time.monotonic()
        reply = httpx.post(server.url + "/api/items/any/label", content=huge, timeout=60)
        assert reply.status_code == 401 and time.monotonic() - started < 10
        assert server_memory.memory_info().rss - before < 20 * 1024 * 1024  # the 50 MB were never held
        assert httpx.post(server.url + "/api/items/any/label", content=b"{").status_code == 401  # not 422
        form = httpx.post(server.url + "/runs/run/items/any", data={"choice": "left"})
        assert form.status_code == 401 and "Sign in" in form.text
        signed_in = {"Authorization": f"Bearer {token}"}
        item = httpx.post(server.url + "/api/runs/run/next", headers=signed_in).json()
        too_big = {"label": "a", "comment": "c" * MAX_BODY_BYTES}
        response = httpx.post(f"{server.url}/api/items/{item['id']}/label", json=too_big, headers=signed_in)
        assert response.status_code == 413
        # Chunked, with no Content-Length: refused once the chunks pass the cap.
        chunk = b"y" * 8192
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(MAX_BODY_BYTES // len(chunk) + 2))
        head = (
            f"POST /api/items/{item['id']}/label HTTP/1.1\r\nHost: {server.url[7:]}\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        assert send_raw(server.url, head + chunks + b"0\r\n\r\n").startswith(b"HTTP/1.1 413")
        # A label of ordinary size still goes through, by Bearer and by cookie with the CSRF token.
        fine = httpx.post(f"{server.url}/api/items/{item['id']}/label", json={"label": "a"}, headers=signed_in)
        assert fine.status_code == 200
        with httpx.Client(base_url=server.url) as browser_like:
            browser_like.post("/login", data={"token": token, "next": "/"})
            csrf = {"X-CSRF-Token": csrf_token(token)}
            assert browser_like.post("/api/runs/run/next", headers=csrf).status_code == 200


def test_markup_in_answers_to_rank_stays_text(browser, tmp_path):
    """Ranking mode's page shows every answer of a prompt: the same escaping and sanitising as a pair's."""
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    item, pair, judgment = entry("rank", f"Question {INJECT}", f"First {INJECT}", f"Second {CLAIM_ELSEWHERE}")
    with ReviewStore.open(db_url) as store:
        store.enqueue("rank", [(item, pair, judgment)], rankings={item.id: [pair.a, pair.b]})
        store.enqueue("other", queue_entries("other", 1))
    token = token_for(db_url, REVIEWER)
    with ReviewServer(db_url) as server:
        page = browser.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        start_reviewing(page, server.url, token, "rank", form="#rank-form")
        page.wait_for_timeout(500)
        assert INJECT in page.inner_text(".ranking-answers") and INJECT in page.inner_text(".conversation")
        assert page.locator("img, meta[http-equiv], #injected-name").count() == 0
        assert page.evaluate(PWN) is None and not [url for url in requests if "/other" in url]
