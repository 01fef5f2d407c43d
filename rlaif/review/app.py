"""The review web service: a page for people and a JSON API beside it, over one `ReviewStore`.

Safety, since the page shows model output and may face a network:
- every page, asset and API route answers 401 without a valid reviewer token (Bearer header for the
  API; the page signs in once and keeps the token in an HttpOnly, SameSite=Strict cookie);
- a request's body is read only after its token is checked (sign-in aside, whose body is the token), and
  never past `MAX_BODY_BYTES` (413);
- no GET changes anything: claiming an item is a POST (the page's "Start" and each label, the API's
  `POST /api/runs/{run}/next`), so nothing a page shows can make the reviewer's browser claim items;
- state-changing requests are refused when they come from another site (Origin / Sec-Fetch-Site) and,
  when authenticated by the cookie, unless they carry the CSRF token derived from the reviewer's token;
- every value a page shows is escaped (Jinja2 autoescape, on for every template); model output's
  Markdown goes through markdown-it with raw HTML off and then the nh3 sanitiser, which keeps no images
  (an image would be a request the answer makes); a strict Content-Security-Policy forbids inline
  scripts, images and every other source besides.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import anyio
import nh3
from cachetools import TTLCache
from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from markdown_it import MarkdownIt
from markupsafe import Markup
from mdit_py_plugins.dollarmath import dollarmath_plugin
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlaif.review.agreement import agreement_report
from rlaif.review.answer_diff import answer_diff
from rlaif.review.store import (
    MAX_TAGS,
    ClaimConflict,
    GivenLabel,
    ItemNotFound,
    QueuedItem,
    ReviewStore,
    ReviewStoreError,
    RunSettings,
    Strength,
    hash_token,
    now,
)
from rlaif.schema import Candidate, ReviewLabel

COOKIE = "rlaif_review"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'none'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'; connect-src 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send Origin: null
    "Cache-Control": "no-store",
}
# How long a token found valid is taken as valid without asking the database again: a revoked or replaced token
# is refused within this time. Asking once per request cost a fifth of the service's throughput under load.
SIGNED_IN_S = 1.0
MAX_BODY_BYTES = 64 * 1024  # the largest request body: a label with a 4,000-character comment is under 20 KiB
SANITISED_TAGS = nh3.ALLOWED_TAGS - {"img"}  # what model output's Markdown may keep: no images
logger = logging.getLogger("rlaif.review")
CHOICES: dict[str, ReviewLabel | None] = {"tie": "tie", "both_bad": "both_bad", "skip": None}
SHOWN_DISAGREEMENTS = 200  # the agreement page lists this many (the API lists them all)
LABEL_NAMES = {"a": "A is better", "b": "B is better", "tie": "tie", "both_bad": "both bad", None: "no label"}
CHOICE_NAMES = {
    "left": "Answer 1 is better",
    "right": "Answer 2 is better",
    "tie": "Tie",
    "both_bad": "Both bad",
    "skip": "Set aside",
}


class NotSignedIn(Exception):
    """No valid token: answered 401 (the sign-in form for pages, JSON for the API)."""

    def __init__(self, message: str = "a valid reviewer token is required") -> None:
        self.message = message


class CrossSiteRequest(Exception):
    """A state-changing request from another site, or without the CSRF token: answered 403."""

    def __init__(self, message: str) -> None:
        self.message = message


class LabelBody(BaseModel):
    label: ReviewLabel = Field(description="a, b, tie or both_bad; a and b are the answers as stored.")
    comment: str | None = Field(None, max_length=4000)
    strength: Strength | None = Field(None, description="much or slightly better; only with a or b, where asked.")
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS, description="Tags the run offers.")


class RankBody(BaseModel):
    ranking: list[list[int]] = Field(
        description="Tiers of answer indices (0-based, as in `candidates`), best first; answers in a tier are tied.",
        max_length=64,
    )
    comment: str | None = Field(None, max_length=4000)


@dataclass(frozen=True)
class Reviewer:
    name: str
    token: str
    by_cookie: bool

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


def csrf_token(token: str) -> str:
    """A per-reviewer CSRF token: another site cannot compute it without the reviewer's token."""
    return hashlib.sha256(f"rlaif-review-csrf:{token}".encode()).hexdigest()


# breaks: a line break in an answer stays one (a poem stays a poem)
# dollarmath: $...$ and $$...$$ stay as written (shown in a math style), so `$x*y*z$` keeps its stars
_markdown = (
    MarkdownIt("commonmark", {"html": False, "linkify": False, "breaks": True})
    .enable("table")
    .use(dollarmath_plugin, double_inline=True, allow_space=False, allow_digits=False)  # "$5 and $6" is money
)
MATH_CLASSES = {"span": {"math", "inline"}, "div": {"math", "block"}}  # the only classes model output keeps


def render_markdown(text: str) -> Markup:
    """Untrusted Markdown to safe HTML: raw HTML is escaped by the parser, the result sanitised by nh3."""
    html = nh3.clean(
        _markdown.render(text),
        tags=SANITISED_TAGS,
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},  # a link never takes the review page away
        allowed_classes=MATH_CLASSES,
    )
    return Markup(html)


async def current_reviewer(request: Request) -> Reviewer:
    """The signed-in reviewer (Bearer header or cookie), as `SecurityGate` found them; cookie-authenticated
    writes must carry the CSRF token."""
    token, by_cookie = _token_of(request)
    name = request.state.signed_in_as
    if name is None:
        raise NotSignedIn("unknown or revoked token" if token else "a valid reviewer token is required")
    person = Reviewer(name, token, by_cookie)
    if request.method not in SAFE_METHODS and by_cookie:
        sent = request.headers.get(CSRF_HEADER) or getattr(request.state, "csrf_form", None) or ""
        if not hmac.compare_digest(sent, person.csrf):
            raise CrossSiteRequest("missing or wrong CSRF token")
    return person


async def form_reviewer(request: Request) -> Reviewer:
    """`current_reviewer` for form posts, which carry the CSRF token as a form field (they cannot send headers)."""
    form = await request.form()
    value = form.get("csrf")
    request.state.csrf_form = value if isinstance(value, str) else None
    return await current_reviewer(request)


SignedIn = Annotated[Reviewer, Depends(current_reviewer)]
FormSignedIn = Annotated[Reviewer, Depends(form_reviewer)]


def create_app(
    store: ReviewStore,
    lease_s: float = 900.0,
    on_queue_emptied: Callable[[str], None] | None = None,
    threads: int = 4,
) -> FastAPI:
    """The review app over `store`; `on_queue_emptied(run_id)` is called once when a run's last item is finished.

    `threads`: how many requests do their database work at once. Under load a few threads answer sooner than
    many: the work is short and holds the interpreter's lock, which 40 threads (the default) spend their time
    passing around (50 reviewers on PostgreSQL: 148 requests/s with 4 or 8 threads, 103 with 40; later, with less
    work per request, 475 with 4 against 429 with 8, the mean of three 30-s runs each, alternating).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    app = FastAPI(title="rlaif review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store = store
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    web = Path(str(resources.files("rlaif.review").joinpath("web")))
    # Autoescape on for every template: Jinja's default picks by file extension, and ours end in .j2.
    templates = Jinja2Templates(env=Environment(loader=FileSystemLoader(str(web)), autoescape=True))
    templates.env.filters["markdown"] = render_markdown

    def sign_in_page(request: Request, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return templates.TemplateResponse(
            request, "signin.html.j2", {"message": message, "next": request.url.path}, status_code=401
        )

    def database_unavailable_response(request: Request, exc: Exception) -> Response:
        # The database is restarting, unreachable or locked past the busy timeout: a moment's outage, not a
        # bug. Clients try again; a label sent twice is stored once.
        logger.warning(f"{request.method} {request.url.path}: review database unavailable ({type(exc).__name__})")
        return JSONResponse(
            {"detail": "the review database is unavailable for a moment; send the request again"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    # Outside BodyLimit (added later, so it runs first): a body is capped once its token passed.
    app.add_middleware(
        SecurityGate, store=store, refuse_unsigned=sign_in_page, database_down=database_unavailable_response
    )

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, exc: NotSignedIn) -> Response:
        return sign_in_page(request, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Without a valid token even a missing page answers 401: nothing about the service is revealed.
        if exc.status_code in (404, 405) and request.state.signed_in_as is None:
            return await not_signed_in(request, NotSignedIn())
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_unavailable(request: Request, exc: Exception) -> Response:
        return database_unavailable_response(request, exc)

    @app.exception_handler(CrossSiteRequest)
    async def cross_site(request: Request, exc: CrossSiteRequest) -> Response:
        return JSONResponse({"detail": exc.message}, status_code=403)

    @app.exception_handler(ItemNotFound)
    async def not_found(request: Request, exc: ItemNotFound) -> Response:
        # Raised by the store after the token was checked (an unknown item or run): safe to say what is missing.
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ReviewStoreError)
    async def refused(request: Request, exc: ReviewStoreError) -> Response:
        # A request the queue refuses (a label it does not know, too many tags): the message says why.
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ClaimConflict)
    async def claim_conflict(request: Request, exc: ClaimConflict) -> Response:
        # The reviewer's claim lapsed and the item went to someone else (or is finished).
        return JSONResponse({"detail": str(exc)}, status_code=409)

    # -- sign-in ----------------------------------------------------------------------------------------

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:
        target = next if next.startswith("/") and not next.startswith(("//", "/\\")) else "/"  # this site only
        if store.authenticate(token.strip()) is None:
            return templates.TemplateResponse(
                request, "signin.html.j2", {"message": "unknown or revoked token", "next": target}, status_code=401
            )
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            token.strip(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=30 * 24 * 3600,
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(person: FormSignedIn) -> Response:
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # -- pages ------------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, person: SignedIn) -> Response:
        runs = [store.stats(run_id, person.name) for run_id in store.runs()]
        return templates.TemplateResponse(request, "runs.html.j2", {"runs": runs, "reviewer": person})

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def review_page(request: Request, run_id: str, person: SignedIn) -> Response:
        """The item the reviewer holds in this run; without one, a page that offers to start (a POST)."""
        stats = _stats_or_404(store, run_id, person.name)
        queued = store.held_item(run_id, person.name)
        latest = store.labels_by(run_id, person.name, limit=1)
        previous = latest[0].queued.item.id if latest else None
        if queued is None:
            return templates.TemplateResponse(
                request,
                "done.html.j2",
                {"stats": stats, "reviewer": person, "run_id": run_id, "tried": False, "previous": previous},
            )
        return item_page(
            request,
            person,
            run_id,
            queued,
            stats=stats,
            previous=previous,
            lease_left_s=_seconds_until(queued.lease_expires_at),
        )

    @app.get("/runs/{run_id}/items/{item_id}", response_class=HTMLResponse)
    def labelled_page(request: Request, run_id: str, item_id: str, person: SignedIn) -> Response:
        """A pair the reviewer labelled earlier (undo), with their label shown and changeable. Reads only."""
        stats = _stats_or_404(store, run_id, person.name)
        [given] = store.labels_by(run_id, person.name, item_id=item_id) or [None]
        if given is None:
            raise HTTPException(404, f"you have not labelled item {item_id!r} in run {run_id!r}")
        return item_page(request, person, run_id, given.queued, stats=stats, given=given)

    @app.get("/runs/{run_id}/mine", response_class=HTMLResponse)
    def my_labels(request: Request, run_id: str, person: SignedIn) -> Response:
        """Every label the reviewer gave in the run, the latest first, each a link to change it."""
        stats = _stats_or_404(store, run_id, person.name)
        given = store.labels_by(run_id, person.name)
        rows = [
            (
                g,
                f"ranked {ranking_text(g.ranking)}"
                if g.ranking
                else CHOICE_NAMES[displayed_choice(g.label, g.queued.shown_swapped)],
            )
            for g in given
        ]
        return templates.TemplateResponse(
            request, "mine.html.j2", {"stats": stats, "reviewer": person, "run_id": run_id, "rows": rows}
        )

    @app.get("/runs/{run_id}/agreement", response_class=HTMLResponse)
    def agreement_page(request: Request, run_id: str, person: SignedIn) -> Response:
        """How often reviewers agree with each other and with the judge on the audit, and where they do not."""
        stats = _stats_or_404(store, run_id, person.name)
        report = agreement_report(store.decisions(run_id).values())
        shown = report["disagreements"][:SHOWN_DISAGREEMENTS]
        return templates.TemplateResponse(
            request,
            "agreement.html.j2",
            {
                "stats": stats,
                "reviewer": person,
                "run_id": run_id,
                "report": report,
                "shown": [(found, found.pair or store.get(found.decision.item_id).pair) for found in shown],
                "label_names": LABEL_NAMES,
            },
        )

    def item_page(
        request: Request,
        person: Reviewer,
        run_id: str,
        queued: QueuedItem,
        stats: dict[str, Any],
        previous: str | None = None,
        lease_left_s: int = 0,
        given: GivenLabel | None = None,
    ) -> Response:
        """The page of one item: the item the reviewer holds, or (`given`) one they labelled earlier; a pair, or
        (ranking mode) a prompt's answers to rank."""
        settings = store.run_settings(run_id)
        if queued.candidates:
            return templates.TemplateResponse(
                request,
                "rank.html.j2",
                {
                    "settings": settings,
                    "stats": stats,
                    "reviewer": person,
                    "run_id": run_id,
                    "item": queued,
                    "answers": [answer_view(n, candidate) for n, candidate in enumerate(queued.candidates, start=1)],
                    "lease_s": lease_s,
                    "lease_left_s": lease_left_s,
                    "previous": previous,
                    "given": given,
                    "given_ranking": ranking_text(given.ranking) if given is not None and given.ranking else None,
                },
            )
        shown = (queued.pair.b, queued.pair.a) if queued.shown_swapped else (queued.pair.a, queued.pair.b)
        chosen = displayed_choice(given.label, queued.shown_swapped) if given is not None else None
        return templates.TemplateResponse(
            request,
            "item.html.j2",
            {
                "settings": settings,
                "tag_keys": [(str(key), tag, tag.replace("_", " ")) for key, tag in enumerate(settings.tags, start=3)],
                "stats": stats,
                "reviewer": person,
                "run_id": run_id,
                "item": queued,
                "answers": [answer_view(number, candidate) for number, candidate in enumerate(shown, start=1)],
                "diff": answer_diff(shown[0].text, shown[1].text),
                "lease_s": lease_s,
                "lease_left_s": lease_left_s,
                "previous": previous,
                "given": given,
                "chosen": chosen,
                "chosen_name": CHOICE_NAMES.get(chosen or ""),
            },
        )

    @app.post("/runs/{run_id}/items/{item_id}/rank")
    def review_rank(
        request: Request,
        run_id: str,
        item_id: str,
        person: FormSignedIn,
        ranking: Annotated[str, Form(max_length=400)],
        comment: Annotated[str, Form(max_length=4000)] = "",
    ) -> Response:
        """A ranking of a ranking item's answers, as the page sends it ("3,1=2,4": answer numbers, best first)."""
        queued = _item_or_404(store, item_id)
        tiers = parse_ranking(ranking, len(queued.candidates))
        return submit_then_next(request, run_id, item_id, person, None, comment, ranking=tiers)

    def submit_then_next(
        request: Request,
        run_id: str,
        item_id: str,
        person: Reviewer,
        label: ReviewLabel | None,
        comment: str,
        **given: Any,
    ) -> Response:
        """A label (or ranking) sent by the page, then the reviewer's next item; a lapsed claim said plainly."""
        try:
            _submit(store, item_id, person.name, label, comment, on_queue_emptied, **given)
        except ClaimConflict:
            # The claim lapsed and the item went to someone else: say so plainly, keep the comment, offer the next.
            stats = _stats_or_404(store, run_id, person.name)
            return templates.TemplateResponse(
                request,
                "lost.html.j2",
                {"stats": stats, "reviewer": person, "run_id": run_id, "comment": comment},
                status_code=409,
            )
        store.claim_next(run_id, person.name, lease_s)  # the next item, shown by the page it redirects to
        return RedirectResponse(f"/runs/{quote(run_id, safe='')}", status_code=303)

    @app.post("/runs/{run_id}/next", response_class=HTMLResponse)
    def review_start(request: Request, run_id: str, person: FormSignedIn) -> Response:
        """Claim the reviewer's next item in this run and show it; or say that none is left for them."""
        stats = _stats_or_404(store, run_id, person.name)
        if store.claim_next(run_id, person.name, lease_s) is None:
            return templates.TemplateResponse(
                request, "done.html.j2", {"stats": stats, "reviewer": person, "run_id": run_id, "tried": True}
            )
        return RedirectResponse(f"/runs/{quote(run_id, safe='')}", status_code=303)

    @app.post("/runs/{run_id}/items/{item_id}")
    def review_submit(
        request: Request,
        run_id: str,
        item_id: str,
        person: FormSignedIn,
        choice: Annotated[Literal["left", "right", "tie", "both_bad", "skip", "another"], Form()],
        comment: Annotated[str, Form(max_length=4000)] = "",
        strength: Annotated[Strength | None, Form()] = None,
        tags: Annotated[list[str], Form(max_length=MAX_TAGS)] = [],  # noqa: B006 - FastAPI copies defaults
    ) -> Response:
        queued = _item_or_404(store, item_id)
        if choice == "another":  # give it back (it stays open for everyone) and take a different one
            store.claim_next(run_id, person.name, lease_s, release=item_id)
            return RedirectResponse(f"/runs/{quote(run_id, safe='')}", status_code=303)
        label = stored_label(choice, queued.shown_swapped)
        strength, tags = _offered(store.run_settings(run_id), label, strength, tags)
        return submit_then_next(request, run_id, item_id, person, label, comment, strength=strength, tags=tags)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str, person: SignedIn) -> Response:
        media = {"review.js": "text/javascript", "rank.js": "text/javascript", "review.css": "text/css"}
        if name not in media:
            raise HTTPException(404)
        return Response((web / name).read_text(encoding="utf-8"), media_type=media[name])

    # -- JSON API ---------------------------------------------------------------------------------------

    # The API's answers are plain dicts, sent as they are (response_model=None): for a sync route FastAPI would
    # check a dict against the return annotation in another trip through the thread pool, which under load
    # doubled a label's time in the service (50 reviewers: 98 ms against 45 ms for `next` at the median).
    @app.get("/api/runs", response_model=None)
    def api_runs(person: SignedIn) -> list[dict[str, Any]]:
        return [store.stats(run_id, person.name) for run_id in store.runs()]

    @app.post("/api/runs/{run_id}/next")
    def api_next(run_id: str, person: SignedIn) -> Response:
        queued = store.claim_next(run_id, person.name, lease_s)  # ItemNotFound (404) for a run with no queue
        if queued is None:
            return Response(status_code=204)
        return JSONResponse(queued.to_json())

    @app.post("/api/items/{item_id}/label", response_model=None)
    def api_label(item_id: str, body: LabelBody, person: SignedIn) -> dict[str, Any]:
        queued = _item_or_404(store, item_id) if body.strength or body.tags else None
        strength, tags = body.strength, body.tags
        if queued is not None:
            strength, tags = _offered(store.run_settings(queued.item.run_id), body.label, strength, tags)
        result = _submit(store, item_id, person.name, body.label, body.comment, on_queue_emptied, strength, tags)
        return {"item": item_id, "label": body.label, "status": result.status, "repeated": result.repeated}

    @app.post("/api/items/{item_id}/rank", response_model=None)
    def api_rank(item_id: str, body: RankBody, person: SignedIn) -> dict[str, Any]:
        result = _submit(store, item_id, person.name, None, body.comment, on_queue_emptied, ranking=body.ranking)
        return {"item": item_id, "status": result.status, "repeated": result.repeated}

    @app.post("/api/items/{item_id}/renew", response_model=None)
    def api_renew(item_id: str, person: SignedIn) -> dict[str, Any]:
        """Keep holding an item: the page calls this while the item is open and visible."""
        expires = store.renew(item_id, person.name, lease_s)
        return {"item": item_id, "lease_expires_at": expires.isoformat() + "Z", "lease_s": lease_s}

    @app.post("/api/items/{item_id}/release")
    def api_release(item_id: str, person: SignedIn) -> Response:
        """Show me another: give the item back, open for everyone, and claim a different one (the same one when
        no other is free for this reviewer; 204 when none is)."""
        queued = _item_or_404(store, item_id)
        following = store.claim_next(queued.item.run_id, person.name, lease_s, release=item_id)
        return Response(status_code=204) if following is None else JSONResponse(following.to_json())

    @app.post("/api/items/{item_id}/skip", response_model=None)
    def api_skip(item_id: str, person: SignedIn) -> dict[str, Any]:
        result = _submit(store, item_id, person.name, None, None, on_queue_emptied)
        return {"item": item_id, "status": result.status}

    @app.get("/api/runs/{run_id}/agreement", response_model=None)
    def api_agreement(run_id: str, person: SignedIn) -> dict[str, Any]:
        _stats_or_404(store, run_id, person.name)
        report = agreement_report(store.decisions(run_id).values())
        return {
            **{key: value for key, value in report.items() if key != "disagreements"},
            "disagreements": [
                {
                    "item": found.decision.item_id,
                    "pair": found.decision.pair_id,
                    "labels": dict(found.decision.labels),
                    "judge": found.decision.judgment.winner,
                    "between_reviewers": found.between_reviewers,
                    "with_judge": found.with_judge,
                    "settled": found.decision.settled,
                    "settled_by": found.decision.settled_by,
                }
                for found in report["disagreements"]
            ],
        }

    @app.get("/api/runs/{run_id}/stats", response_model=None)
    def api_stats(run_id: str, person: SignedIn) -> dict[str, Any]:
        return _stats_or_404(store, run_id, person.name)

    return app


class SecurityGate:
    """ASGI middleware in front of every route: refuses a state-changing request from another site (403) and
    one without a valid token (401) before anything reads its body, finds who a token belongs to (for
    `current_reviewer`; a valid token is asked about again after SIGNED_IN_S, an invalid one every time), and adds
    the security headers to every answer. (Plain ASGI rather than Starlette's BaseHTTPMiddleware, which costs a
    task and a stream per request.)"""

    def __init__(
        self,
        app: Any,
        store: ReviewStore,
        refuse_unsigned: Callable[[Request, str], Response],
        database_down: Callable[[Request, Exception], Response],
    ) -> None:
        self.app = app
        self.store = store
        self.refuse_unsigned = refuse_unsigned
        self.database_down = database_down
        self.signed_in: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=SIGNED_IN_S)  # token hash -> reviewer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        request = Request(scope)
        refusal: Response | None = None
        try:
            request.state.signed_in_as = await self._reviewer(_token_of(request)[0])
            writes = request.method not in SAFE_METHODS
            if writes and _cross_site(request):
                refusal = JSONResponse({"detail": "cross-site request refused"}, status_code=403)
            elif writes and request.url.path != "/login" and request.state.signed_in_as is None:
                refusal = self.refuse_unsigned(request, "a valid reviewer token is required")
        except (OperationalError, InterfaceError) as exc:
            # Raised here, outside the app, it would pass the app's exception handlers and answer 500.
            refusal = self.database_down(request, exc)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
        else:
            await self.app(scope, receive, send_with_headers)

    async def _reviewer(self, token: str) -> str | None:
        """Whose token this is (None: unknown or revoked), from the database unless found valid within SIGNED_IN_S."""
        key = hash_token(token)
        name = self.signed_in.get(key)
        if name is None:
            name = await run_in_threadpool(self.store.authenticate, token)
            if name is not None:
                self.signed_in[key] = name
        return name


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413, whether its Content-Length says
    so at once or its chunks add up to it while being read (nothing past the limit is held in memory)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await JSONResponse(
                {"detail": f"request body over {self.limit} bytes"}, status_code=413, headers={"Connection": "close"}
            )(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def answer_view(number: int, candidate: Candidate) -> dict[str, Any]:
    """What the page shows of one answer: its text, word count, and whether it is empty or was cut off at
    the policy's max_tokens (finish_reason length)."""
    return {
        "number": number,
        "text": candidate.text,
        "words": len(candidate.text.split()),
        "empty": not candidate.text.strip(),
        "cut_off": candidate.finish_reason == "length",
    }


def parse_ranking(text: str, count: int) -> list[list[int]]:
    """The page's ranking ("3,1=2,4": answer numbers from 1, best first, "=" between tied ones) as tiers of
    0-based answer indices; 422 unless it places each of the `count` answers once."""
    try:
        tiers = [[int(number) - 1 for number in tier.split("=")] for tier in text.split(",")]
    except ValueError:
        raise HTTPException(422, f"a ranking is answer numbers separated by ',' and '=', not {text!r}") from None
    if sorted(index for tier in tiers for index in tier) != list(range(count)):
        raise HTTPException(422, f"a ranking places each of the {count} answers exactly once")
    return tiers


def ranking_text(ranking: Sequence[Sequence[int]]) -> str:
    """A stored ranking as the page writes it: `parse_ranking` undone."""
    return ",".join("=".join(str(index + 1) for index in tier) for tier in ranking)


def displayed_choice(label: ReviewLabel | None, shown_swapped: bool) -> str:
    """The page's choice (left, right, tie, both_bad, skip) for a stored label: `stored_label` undone."""
    if label in ("a", "b"):
        return "left" if (label == "a") != shown_swapped else "right"
    return "skip" if label is None else label


def stored_label(choice: str, shown_swapped: bool) -> ReviewLabel | None:
    """The label in the pair's stored order for a choice made on the page (left/right as displayed)."""
    if choice in CHOICES:
        return CHOICES[choice]
    left_is_a = not shown_swapped
    return "a" if (choice == "left") == left_is_a else "b"


def _submit(
    store: ReviewStore,
    item_id: str,
    reviewer: str,
    label: ReviewLabel | None,
    comment: str | None,
    on_queue_emptied: Callable[[str], None] | None,
    strength: Strength | None = None,
    tags: list[str] | tuple[str, ...] = (),
    ranking: list[list[int]] | None = None,
) -> Any:
    result = store.submit(item_id, reviewer, label, comment, strength, tags, ranking)
    if result.queue_emptied and on_queue_emptied is not None:
        on_queue_emptied(result.run_id)
    return result


def _offered(
    settings: RunSettings, label: ReviewLabel | None, strength: Strength | None, tags: list[str]
) -> tuple[Strength | None, list[str]]:
    """The strength and tags of a label, checked against what the run offers: a strength only where the run asks
    for one and the label prefers an answer (a strength sent with a tie is dropped), tags only the run's."""
    unknown = sorted(set(tags) - set(settings.tags))
    if unknown:
        raise HTTPException(422, f"tags {unknown} are not offered in this run (it offers {list(settings.tags)})")
    if strength is not None and not settings.strength:
        raise HTTPException(422, "this run does not ask how much better an answer is (review.strength is off)")
    return (strength if label in ("a", "b") else None), tags


def _item_or_404(store: ReviewStore, item_id: str) -> QueuedItem:
    try:
        return store.get(item_id)
    except ItemNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _stats_or_404(store: ReviewStore, run_id: str, reviewer: str) -> dict[str, Any]:
    try:
        return store.stats(run_id, reviewer)
    except ItemNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _seconds_until(moment: datetime | None) -> int:
    """Whole seconds from now (UTC) until a naive UTC time; 0 when it has passed or is unknown."""
    if moment is None:
        return 0
    return max(0, int((moment - now()).total_seconds()))


def _token_of(request: Request) -> tuple[str, bool]:
    """The token a request carries, and whether it came from the cookie (else the Bearer header)."""
    header = request.headers.get("authorization", "")
    scheme, _, bearer = header.partition(" ")
    if header and scheme.lower() == "bearer" and bearer.strip():
        return bearer.strip(), False
    return request.cookies.get(COOKIE, ""), True


def _cross_site(request: Request) -> bool:
    """A browser request from another origin: its Origin differs from our Host, or Sec-Fetch-Site says so."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    if origin == "null":
        return True
    return urlsplit(origin).netloc != request.headers.get("host", "")
