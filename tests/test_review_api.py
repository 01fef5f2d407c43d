"""The review service over HTTP, as a real `rlaif review serve` process on SQLite and PostgreSQL:
concurrent claims, tokens on every route, cross-site requests, and a kill -9 in the middle of submits."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter

import httpx
import pytest
from fastapi.testclient import TestClient

from rlaif.review.app import SIGNED_IN_S, create_app, csrf_token, stored_label
from rlaif.review.store import ReviewStore
from tests.review_fixtures import RLAIF, ReviewServer, queue_entries


def add_reviewer(db_url: str, name: str) -> str:
    """A token made by the real command: the token is alone on the last line of stdout."""
    result = subprocess.run(
        [RLAIF, "review", "token", "add", name, "--db", db_url], capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1]


def label_until_empty(base: str, token: str, run: str, acknowledged: list[tuple[str, str]], stop=None) -> None:
    """One client: claim, label, repeat; records every label the server acknowledged with 200."""
    rng = random.Random(token)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while stop is None or not stop.is_set():
            response = client.post(f"/api/runs/{run}/next")
            if response.status_code == 204:
                return
            response.raise_for_status()
            item = response.json()
            label = rng.choice(["a", "b", "tie", "both_bad"])
            answer = client.post(f"/api/items/{item['id']}/label", json={"label": label, "comment": None})
            answer.raise_for_status()
            acknowledged.append((item["id"], label))


def test_eight_concurrent_clients_label_every_item_exactly_once(db_url):
    """Against a service of two server processes (`--workers 2`), each with its own database connections."""
    with ReviewStore.open(db_url) as store:
        store.enqueue("big", queue_entries("big", 200))
    tokens = [add_reviewer(db_url, f"reviewer{i}") for i in range(8)]
    acknowledged: list[tuple[str, str]] = []
    with ReviewServer(db_url, "--workers", "2") as server:
        workers = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True).stdout
        assert len(workers.split()) >= 2
        threads = [
            threading.Thread(target=label_until_empty, args=(server.url, token, "big", acknowledged))
            for token in tokens
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        stats = httpx.get(f"{server.url}/api/runs/big/stats", headers={"Authorization": f"Bearer {tokens[0]}"}).json()
    assert len(acknowledged) == 200 and len({item for item, _ in acknowledged}) == 200
    assert stats["done"] == 200 and stats["labels"] == 200 and stats["pending"] == stats["claimed"] == 0
    with ReviewStore.open(db_url) as store:
        decisions = store.decisions("big")
    assert all(len(d.labels) == 1 for d in decisions.values())
    assert {d.item_id: d.labels[0][1] for d in decisions.values()} == dict(acknowledged)
    assert len(Counter(d.labels[0][0] for d in decisions.values())) > 1  # the work was shared


def test_a_server_killed_mid_submit_loses_no_acknowledged_label(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore.open(db_url) as store:
        store.enqueue("run", queue_entries("run", 400))
    tokens = [add_reviewer(db_url, f"reviewer{i}") for i in range(4)]
    acknowledged: list[tuple[str, str]] = []
    server = ReviewServer(db_url).start()
    stop = threading.Event()
    errors: list[Exception] = []

    def client(token: str) -> None:
        try:
            label_until_empty(server.url, token, "run", acknowledged, stop)
        except httpx.HTTPError as exc:  # the kill cuts requests off: those were never acknowledged
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    while len(acknowledged) < 60:
        threading.Event().wait(0.01)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(60)
    assert errors, "the kill should have cut off requests in flight"
    before_restart = dict(acknowledged)
    with ReviewStore.open(db_url) as store:
        stored = {d.item_id: d.labels[0][1] for d in store.decisions("run").values() if d.labels}
    assert {item: stored.get(item) for item in before_restart} == before_restart
    with ReviewServer(db_url, port=server.port) as restarted:
        for token in tokens:
            label_until_empty(restarted.url, token, "run", acknowledged)
    with ReviewStore.open(db_url) as store:
        decisions = store.decisions("run")
    assert all(len(d.labels) == 1 for d in decisions.values()) and len(decisions) == 400


def routes_to_probe(store: ReviewStore) -> list[tuple[str, str]]:
    """Every route of the app with its methods, path parameters filled in."""
    app = create_app(store)
    probes = []
    for route in app.routes:
        path = getattr(route, "path", "")
        for method in sorted(getattr(route, "methods", set()) - {"HEAD"}):
            probes.append((method, path.replace("{run_id}", "run").replace("{item_id}", "x").replace("{name}", "a.js")))
    return probes


def test_every_route_answers_401_without_a_valid_token(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore.open(db_url) as store:
        store.enqueue("run", queue_entries("run", 2))
        store.add_reviewer("alice")
        probes = routes_to_probe(store)
    probes += [("GET", "/no/such/page"), ("GET", "/api/nothing")]
    assert len(probes) >= 12
    with ReviewServer(db_url) as server:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Cookie": "rlaif_review=not-a-token"}):
            for method, path in probes:
                response = httpx.request(method, server.url + path, headers=headers, data={"token": "wrong"})
                assert response.status_code == 401, (method, path, headers, response.status_code)
        page = httpx.get(server.url + "/runs/run")
        assert "Sign in" in page.text and "answer A0" not in page.text


def refused_after(url: str, token: str) -> float:
    """Seconds until the server answers 401 to `token` (asked every 50 ms; fails after 10 s)."""
    started = time.monotonic()
    while time.monotonic() - started < 10:
        if httpx.get(url + "/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 401:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"the token still signs in 10 s after it was revoked or replaced (at {url})")


def test_a_revoked_or_replaced_token_is_refused_within_a_second_of_a_running_server(tmp_path):
    """The service keeps a valid token's owner for SIGNED_IN_S rather than asking the database on every request;
    revoking a reviewer, or giving them a new token, takes effect within that time on a server that is running."""
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore.open(db_url) as store:
        store.enqueue("run", queue_entries("run", 2))
    alice, bob = add_reviewer(db_url, "alice"), add_reviewer(db_url, "bob")
    with ReviewServer(db_url) as server:
        for token in (alice, bob):
            assert httpx.get(server.url + "/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        subprocess.run([RLAIF, "review", "token", "revoke", "alice", "--db", db_url], check=True, capture_output=True)
        assert refused_after(server.url, alice) <= SIGNED_IN_S + 1.0
        new_bob = add_reviewer(db_url, "bob")  # a new token for bob: the old one stops working
        assert refused_after(server.url, bob) <= SIGNED_IN_S + 1.0
        assert httpx.get(server.url + "/api/runs", headers={"Authorization": f"Bearer {new_bob}"}).status_code == 200


def test_cross_site_and_csrf_less_posts_are_refused(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    with ReviewStore.open(db_url) as store:
        store.enqueue("run", queue_entries("run", 3))
    token = add_reviewer(db_url, "alice")
    with ReviewServer(db_url) as server, httpx.Client(base_url=server.url) as browser:
        signed_in = browser.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
        assert signed_in.status_code == 303 and "httponly" in signed_in.headers["set-cookie"].lower()
        assert "samesite=strict" in signed_in.headers["set-cookie"].lower()
        assert browser.get("/api/runs/run/next").status_code == 405  # claiming is never a GET
        assert browser.post("/api/runs/run/next").status_code == 403  # the cookie without the CSRF token
        item = browser.post("/api/runs/run/next", headers={"X-CSRF-Token": csrf_token(token)}).json()
        evil = {"Origin": "http://evil.example"}
        body = {"label": "a", "comment": None}
        assert browser.post(f"/api/items/{item['id']}/label", json=body, headers=evil).status_code == 403
        assert browser.post(f"/api/items/{item['id']}/label", json=body).status_code == 403  # cookie, no CSRF
        form = {"choice": "left", "csrf": csrf_token(token)}
        cross = {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}
        assert browser.post(f"/runs/run/items/{item['id']}", data=form, headers=cross).status_code == 403
        assert browser.post("/login", data={"token": token}, headers=evil).status_code == 403
        bearer = {"Authorization": f"Bearer {token}", **evil}
        assert httpx.post(f"{server.url}/api/items/{item['id']}/label", json=body, headers=bearer).status_code == 403
        same_site = {"X-CSRF-Token": csrf_token(token)}
        with_csrf = browser.post(f"/api/items/{item['id']}/label", json=body, headers=same_site)
        assert with_csrf.status_code == 200
        stats = browser.get("/api/runs/run/stats").json()
        assert stats["labels"] == 1 and stats["mine"] == 1  # only the same-site request with the token counted


def test_api_answers_with_the_stored_order_and_clear_errors(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'review.db'}"
    emptied: list[str] = []
    with ReviewStore.open(db_url) as store:
        store.enqueue("run", queue_entries("run", 2))
        token = store.add_reviewer("alice")
        client = TestClient(create_app(store, on_queue_emptied=emptied.append))
        auth = {"Authorization": f"Bearer {token}"}
        assert client.post("/api/runs/absent/next", headers=auth).status_code == 404
        item = client.post("/api/runs/run/next", headers=auth).json()
        assert item["a"].startswith("answer A") and item["b"].startswith("answer B")
        bad = client.post(f"/api/items/{item['id']}/label", json={"label": "left"}, headers=auth)
        assert bad.status_code == 422 and "label" in bad.text
        assert client.post("/api/items/nope/label", json={"label": "a"}, headers=auth).status_code == 404
        done = client.post(f"/api/items/{item['id']}/label", json={"label": "b"}, headers=auth)
        assert done.json()["status"] == "done"
        assert emptied == []
        last = client.post("/api/runs/run/next", headers=auth).json()
        assert client.post(f"/api/items/{last['id']}/skip", headers=auth).json()["status"] == "skipped"
        assert emptied == ["run"]  # called once, when the last open item finished
        assert client.post("/api/runs/run/next", headers=auth).status_code == 204


@pytest.mark.parametrize("swapped", [False, True])
def test_choices_on_the_page_map_back_to_the_stored_order(swapped):
    left, right = ("b", "a") if swapped else ("a", "b")
    assert stored_label("left", swapped) == left and stored_label("right", swapped) == right
    assert stored_label("tie", swapped) == "tie" and stored_label("skip", swapped) is None
