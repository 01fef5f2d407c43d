"""The human-review queue: items, claims with leases, labels and reviewer tokens, in SQLite or PostgreSQL.

One database holds the queues of many runs. Two reviewers never hold the same slot of an item and each
slot is labelled once. SQLite serialises every write (`BEGIN IMMEDIATE`). PostgreSQL lets reviewers work
side by side, with the database's own queue idiom: an item's claims, labels and status change only while
its row is locked; claiming takes the first free item with `SELECT ... FOR UPDATE SKIP LOCKED` (an item
someone else is claiming or labelling is passed over, not waited for), and only the moment that may empty
a run's queue is serialised per run (a transaction-level advisory lock), so the queue-emptied event fires
once. (A lock on the whole run for every claim and label held 50 reviewers to 130 requests/s, p95 481 ms.)
A label is acknowledged only after its transaction commits (SQLite in WAL mode with synchronous=FULL),
so a process killed mid-submit loses nothing it answered for.

Item status: `pending` (open), `done` (it has `labels_needed` labels), `skipped` (set aside after
`max_skips` reviewers skipped it); an open item a reviewer holds a live lease on counts as `claimed` (in
`stats`, and in the item a reviewer is given). A lease lapses by time alone: the queue counts live claims
only (queue_queries.py), so nothing has to sweep lapsed ones before the next claim. Labels refer to
the pair's stored A/B order; `shown_swapped` is the order the page shows, fixed per item.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    Engine,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from rlaif.errors import ExpectedError
from rlaif.message_text import redact_url
from rlaif.review import queue_queries as queries
from rlaif.review.migrations import OLDEST_UPGRADABLE, upgrade
from rlaif.review.tables import (
    OPEN,
    OPEN_STATUSES,
    SCHEMA_VERSION,
    Base,
    ClaimRow,
    ItemRow,
    LabelRow,
    MetaRow,
    ReviewerRow,
    RunRow,
)
from rlaif.schema import Candidate, Judgment, Pair, PromptItem, ReviewItem, ReviewLabel, ReviewReason, ReviewStatus

LABELS: tuple[ReviewLabel, ...] = ("a", "b", "tie", "both_bad")
Strength = Literal["much", "slightly"]
Ranking = tuple[tuple[int, ...], ...]  # candidate indices, best first; the indices in one tier are tied
RANKED = "ranked"  # the label of a ranking (ranking mode): the order itself is in the label's ranking
STRENGTHS: tuple[Strength, ...] = ("much", "slightly")
MAX_TAGS = 16
GOLD_LABELS = 1_000_000  # a gold item's labels_needed: every reviewer labels it once, and it never finishes
SHUFFLE_WINDOW = 16  # items that want several labels: each reviewer takes the next this many in an order of their own


class ReviewStoreError(ExpectedError, ValueError):
    """A review database that cannot be used, or a request the queue refuses; the message says why."""


class ItemNotFound(ReviewStoreError):
    pass


class ClaimConflict(ReviewStoreError):
    """The reviewer's claim on an item expired and the item went to someone else, or it is finished."""


@dataclass(frozen=True)
class QueuedItem:
    """An item as a reviewer sees it: the pair (stored order), the order to show it in, and its state."""

    item: ReviewItem
    pair: Pair
    judgment: Judgment
    shown_swapped: bool
    labels_needed: int
    lease_expires_at: datetime | None = None
    candidates: tuple[Candidate, ...] = ()  # ranking mode: every answer of the prompt, to rank

    def to_json(self) -> dict[str, Any]:
        """The API form: labels a/b refer to `pair.a`/`pair.b`; `shown_swapped` says the page shows B first. A
        ranking item also has `candidates`, the answers to rank (a ranking names them by their index)."""
        ranking = {"candidates": [c.text for c in self.candidates]} if self.candidates else {}
        return {
            **ranking,
            "id": self.item.id,
            "run_id": self.item.run_id,
            "pair_id": self.item.pair_id,
            "reason": "audit" if self.item.reason == "gold" else self.item.reason,  # gold looks like any audit item
            "status": self.item.status,
            "prompt": [m.model_dump() for m in self.pair.prompt.messages],
            "a": self.pair.a.text,
            "b": self.pair.b.text,
            "shown_swapped": self.shown_swapped,
            "lease_expires_at": self.lease_expires_at.isoformat() + "Z" if self.lease_expires_at else None,
        }


@dataclass(frozen=True)
class Submission:
    """The outcome of a label or skip: the item's new status, and whether this emptied the run's queue."""

    item_id: str
    run_id: str
    status: ReviewStatus
    queue_emptied: bool
    repeated: bool = False  # the same label was already stored (a client retry): nothing changed


@dataclass(frozen=True)
class GivenLabel:
    """A label (or set-aside, label None) a reviewer gave, with the item it is for: what undo and "my labels" show."""

    queued: QueuedItem
    label: ReviewLabel | None
    comment: str | None
    updated_at: datetime
    strength: Strength | None = None
    tags: tuple[str, ...] = ()
    ranking: Ranking | None = None


@dataclass(frozen=True)
class RunSettings:
    """What the page offers reviewers of one run, from its config: guidelines (Markdown), whether they say how
    much better an answer is, and the tags they may put on a pair."""

    guidelines: str | None = None
    strength: bool = False
    tags: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"guidelines": self.guidelines, "strength": self.strength, "tags": list(self.tags)})

    @classmethod
    def from_json(cls, text: str | None) -> RunSettings:
        if not text:
            return cls()
        found = json.loads(text)
        return cls(found.get("guidelines"), bool(found.get("strength")), tuple(found.get("tags") or ()))


@dataclass(frozen=True)
class HumanDecision:
    """What people said about one routed pair, for the merge."""

    item_id: str
    pair_id: str
    reason: ReviewReason
    status: ReviewStatus
    labels: tuple[tuple[str, ReviewLabel], ...]  # (reviewer, label); skips are not labels
    judgment: Judgment
    strengths: tuple[Strength | None, ...] = ()  # each label's strength, in the order of `labels`
    tags: tuple[str, ...] = ()  # every tag any reviewer gave, sorted
    gold_label: ReviewLabel | None = None  # a gold item's known answer
    candidates: tuple[Candidate, ...] = ()  # ranking mode: the answers ranked
    rankings: tuple[Ranking | None, ...] = ()  # ranking mode: each label's ranking, in the order of `labels`
    prompt: PromptItem | None = None  # ranking mode: the prompt the answers are for
    settled: ReviewLabel | None = None  # the label the run's owner settled the item with (`rlaif review settle`)
    settled_by: str | None = None

    @property
    def open(self) -> bool:
        """Whether the item still waits for people (neither done nor set aside)."""
        return self.status in OPEN_STATUSES

    @property
    def label(self) -> ReviewLabel | None:
        """The owner's settled label if any; else the majority label, a split vote between a and b being a tie.
        None when nobody labelled it."""
        if self.settled is not None:
            return self.settled
        if not self.labels:
            return None
        counts = Counter(label for _, label in self.labels).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            return "tie"
        return counts[0][0]

    @property
    def strength(self) -> Strength | None:
        """How much better the majority's answer is, as most of those who chose it said ("much" only when more
        said much than slightly); None when nobody was asked or the majority is no answer."""
        label = self.label
        given = [
            strength for (_, chosen), strength in zip(self.labels, self.strengths, strict=False) if chosen == label
        ]
        said = [strength for strength in given if strength is not None]
        if label not in ("a", "b") or not said:
            return None
        return "much" if said.count("much") > said.count("slightly") else "slightly"


def now() -> datetime:
    """UTC now without tzinfo: SQLite keeps no time zone, so every stored time is naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def display_swapped(item_id: str) -> bool:
    """The order the page shows an item in: fixed per item, half the items B first, unrelated to A/B."""
    return hashlib.sha256(f"display:{item_id}".encode()).digest()[0] % 2 == 1


class ReviewStore:
    """The review queue in one database. Open with `ReviewStore.open(url)`; close with `close()`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        # Single reads need no transaction: on PostgreSQL that saves a BEGIN and a ROLLBACK round trip each.
        # (SQLite's connections begin their own way, below.)
        self._reads = engine.execution_options(isolation_level="AUTOCOMMIT") if self.is_postgres else engine

    @classmethod
    def open(cls, url: str) -> ReviewStore:
        """Connect, create the tables in a new database, and refuse one whose schema this code cannot use."""
        engine = _engine(url)
        store = cls(engine)
        try:
            store._check_schema()
        except OperationalError as exc:
            engine.dispose()
            raise ReviewStoreError(f"cannot open review database {redact_url(url)}: {exc.orig}") from None
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------------------

    def _check_schema(self) -> None:
        tables = set(inspect(self.engine).get_table_names())
        ours = {table.name for table in Base.metadata.sorted_tables}
        if MetaRow.__tablename__ not in tables:
            if tables & ours:
                raise ReviewStoreError(
                    f"review database {redact_url(str(self.engine.url))} has review tables but no schema version: "
                    "it was not made by this rlaif; use a new database"
                )
            with self._transaction() as conn:
                Base.metadata.create_all(conn)
                conn.execute(MetaRow.__table__.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        with self.engine.connect() as conn:
            version = conn.execute(select(MetaRow.value).where(MetaRow.key == "schema_version")).scalar()
        if version is None or not version.isdigit():
            raise ReviewStoreError(f"review database has no readable schema version ({version!r})")
        if int(version) > SCHEMA_VERSION:
            raise ReviewStoreError(
                f"review database schema version {version} is newer than this rlaif supports ({SCHEMA_VERSION}): "
                "upgrade rlaif-pipeline"
            )
        if int(version) < OLDEST_UPGRADABLE:
            raise ReviewStoreError(
                f"review database schema version {version} is older than {OLDEST_UPGRADABLE} and has no upgrade path: "
                "export its queues with an older rlaif (`rlaif review export`) and import them into a new database"
            )
        if int(version) < SCHEMA_VERSION:
            self._upgrade()
        self._add_missing_indexes()

    def _upgrade(self) -> None:
        """Bring an older database to this schema, once, whoever opens it first (the version read again under
        the lock); the upgrade and the new version commit together, or neither does."""
        with self.engine.begin() as conn:
            self._serialise(conn, "", "schema-upgrade")
            found = int(conn.execute(select(MetaRow.value).where(MetaRow.key == "schema_version")).scalar_one())
            if found >= SCHEMA_VERSION:
                return
            upgrade(conn, found)
            conn.execute(update(MetaRow).where(MetaRow.key == "schema_version").values(value=str(SCHEMA_VERSION)))

    def _add_missing_indexes(self) -> None:
        """Indexes added since a database was made (the tables are unchanged, so the schema version is too)."""
        for index in ItemRow.__table__.indexes:
            try:
                with self._transaction() as conn:
                    index.create(conn, checkfirst=True)
            except DBAPIError:  # another process opening the database made it at the same moment
                present = {found["name"] for found in inspect(self.engine).get_indexes(ItemRow.__tablename__)}
                if index.name not in present:
                    raise

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(MetaRow.value).where(MetaRow.key == "schema_version")).scalar_one())

    @contextmanager
    def _transaction(self, run_id: str | None = None) -> Iterator[Connection]:
        """A write transaction; with `run_id`, serialised against every other one on that run."""
        with self.engine.begin() as conn:
            if run_id is not None:
                self._serialise(conn, run_id)
            yield conn

    def _serialise(self, conn: Connection, *key: str) -> None:
        """Hold, until the transaction ends, a lock on `key` (a run, or a run and a reviewer). PostgreSQL only:
        SQLite's write transactions are serialised already."""
        if self.is_postgres:
            conn.execute(queries.ADVISORY_LOCK, {"key": _lock_key(*key)})

    # -- reviewers ------------------------------------------------------------------------------------

    def add_reviewer(self, name: str) -> str:
        """Create a reviewer (or give an existing one a new token) and return the token; only its hash is kept."""
        name = name.strip()
        if not name or len(name) > 128:
            raise ReviewStoreError("a reviewer name must be 1 to 128 characters")
        token = secrets.token_urlsafe(32)
        with self._transaction() as conn:
            exists = conn.execute(select(ReviewerRow.name).where(ReviewerRow.name == name)).first()
            values = {"token_hash": hash_token(token), "created_at": now(), "revoked_at": None}
            if exists:
                conn.execute(update(ReviewerRow).where(ReviewerRow.name == name).values(**values))
            else:
                conn.execute(ReviewerRow.__table__.insert().values(name=name, **values))
        return token

    def revoke_reviewer(self, name: str) -> None:
        with self._transaction() as conn:
            result = conn.execute(update(ReviewerRow).where(ReviewerRow.name == name).values(revoked_at=now()))
        if result.rowcount == 0:
            raise ReviewStoreError(f"no reviewer named {name!r}")

    def reviewers(self) -> list[tuple[str, datetime, bool]]:
        """(name, created, active) of every reviewer."""
        with self._reads.connect() as conn:
            rows = conn.execute(
                select(ReviewerRow.name, ReviewerRow.created_at, ReviewerRow.revoked_at).order_by(ReviewerRow.name)
            ).all()
        return [(name, created, revoked is None) for name, created, revoked in rows]

    def authenticate(self, token: str) -> str | None:
        """The reviewer whose token this is, or None (unknown or revoked)."""
        if not token:
            return None
        with self._reads.connect() as conn:
            return conn.execute(queries.TOKEN_OWNER, {"token_hash": hash_token(token)}).scalar()

    # -- enqueue --------------------------------------------------------------------------------------

    def enqueue(
        self,
        run_id: str,
        entries: Iterable[tuple[ReviewItem, Pair, Judgment]],
        labels_needed: int = 1,
        max_skips: int = 1,
        settings: RunSettings | None = None,
        gold: Mapping[str, ReviewLabel] | None = None,
        rankings: Mapping[str, Sequence[Candidate]] | None = None,
    ) -> int:
        """Add a run's routed pairs; items already queued are kept as they are. Returns how many were added.
        `settings`, when given, become the run's (the latest enqueue's config wins). `gold`: the known answers
        of gold items among the entries (reason gold), by item id: every reviewer labels each once, and they
        count towards no progress and never keep the queue from emptying. `rankings`: ranking mode, every
        answer of each item's prompt, by item id, for people to rank (the item's pair is one routed pair of it)."""
        gold = gold or {}
        rankings = rankings or {}
        added = 0
        with self._transaction(run_id) as conn:
            if conn.execute(select(RunRow.run_id).where(RunRow.run_id == run_id)).first() is None:
                conn.execute(RunRow.__table__.insert().values(run_id=run_id, created_at=now()))
            if settings is not None:
                conn.execute(update(RunRow).where(RunRow.run_id == run_id).values(settings_json=settings.to_json()))
            known = set(conn.execute(select(ItemRow.id).where(ItemRow.run_id == run_id)).scalars())
            position = conn.execute(select(func.count()).where(ItemRow.run_id == run_id)).scalar_one()
            for item, pair, judgment in entries:
                if item.run_id != run_id or item.pair_id != pair.id or judgment.pair_id != pair.id:
                    raise ReviewStoreError(f"review item {item.id} does not match run {run_id} and pair {pair.id}")
                if item.id in known:
                    continue
                known.add(item.id)
                stamp = now()
                conn.execute(
                    ItemRow.__table__.insert().values(
                        id=item.id,
                        run_id=run_id,
                        pair_id=pair.id,
                        position=position,
                        reason=item.reason,
                        status="pending",
                        shown_swapped=display_swapped(item.id),
                        labels_needed=GOLD_LABELS if item.id in gold else labels_needed,
                        max_skips=GOLD_LABELS if item.id in gold else max_skips,
                        pair_json=pair.model_dump_json(),
                        judgment_json=judgment.model_dump_json(),
                        gold_label=gold.get(item.id),
                        candidates_json=(
                            json.dumps([c.model_dump(mode="json") for c in rankings[item.id]])
                            if item.id in rankings
                            else None
                        ),
                        created_at=stamp,
                        updated_at=stamp,
                    )
                )
                position += 1
                added += 1
            if added:
                conn.execute(update(RunRow).where(RunRow.run_id == run_id).values(emptied_at=None))
        return added

    # -- claims and labels ----------------------------------------------------------------------------

    def claim_next(
        self, run_id: str, reviewer: str, lease_s: float = 900.0, release: str | None = None
    ) -> QueuedItem | None:
        """The reviewer's next item, claimed for `lease_s` seconds; the one they already hold, if any. None when
        no item is free for them; ItemNotFound when the run has no queue.

        `release`: an item the reviewer holds and gives back ("show me another"): it stays open for everyone,
        and the reviewer gets a different item when there is one (else that one again).
        """
        stamp = now()
        expires = stamp + timedelta(seconds=lease_s)
        asked = {"run": run_id, "reviewer_name": reviewer, "now": stamp, "expires": expires}
        with self.engine.begin() as conn:
            self._serialise(conn, run_id, reviewer)  # one claim per reviewer and run, even from two tabs at once
            if release is not None:
                self._lock_item(conn, release)
                conn.execute(delete(ClaimRow).where(ClaimRow.item_id == release, ClaimRow.reviewer == reviewer))
            held = conn.execute(queries.RENEW_HELD, asked).scalar()
            if held is not None:
                row = conn.execute(select(ItemRow).where(ItemRow.id == held)).one()
                return _queued(row, lease_expires_at=expires)
            row = self._claim_free_item(conn, asked, avoid=release)
            if row is None:
                if conn.execute(select(RunRow.run_id).where(RunRow.run_id == run_id)).first() is None:
                    raise ItemNotFound(f"no review queue for run {run_id!r}")
                return None
        return _queued(row, lease_expires_at=expires)

    def _claim_free_item(self, conn: Connection, asked: dict[str, Any], avoid: str | None) -> Any:
        """Claim and return the first item with a free slot the reviewer has not labelled, in queue order (`avoid`
        last), passing over items another transaction holds (SKIP LOCKED); an item whose slot turns out taken
        when claimed (`_take_slot`) is passed over too. Items that want several labels are taken in an order of
        the reviewer's own within the next SHUFFLE_WINDOW, so that the reviewers who share them do not move
        through the queue in lockstep."""
        passed: list[str] = []
        while True:
            query = queries.next_free(avoid is not None, bool(passed))
            row = conn.execute(query, {**asked, "avoid": avoid, "passed": passed}).first()
            if row is None:
                return None
            if row.reason == "gold" and not self._has_open_item(conn, asked["run"]):
                return None  # gold items are mixed into work; once the run's own items are finished, none is left
            if row.labels_needed > 1:
                preferred = self._claim_preferred(conn, asked, avoid, row.id)
                if preferred is not None:
                    return preferred
            if self._take_slot(conn, asked, row):
                return row
            passed.append(row.id)

    def _claim_preferred(self, conn: Connection, asked: dict[str, Any], avoid: str | None, first: str) -> Any:
        """Of the reviewer's next SHUFFLE_WINDOW free items, the first in the reviewer's own order that wants
        several labels and could be claimed; None when that is `first` (the caller claims it) or none could."""
        window = conn.execute(queries.free_window(SHUFFLE_WINDOW, avoid is not None), {**asked, "avoid": avoid})
        ahead = [item_id for item_id in window.scalars() if item_id != avoid]
        reviewer = asked["reviewer_name"]
        for item_id in sorted(ahead, key=lambda found: hashlib.sha256(f"{reviewer}\x00{found}".encode()).digest()):
            if item_id == first:
                return None
            preferred = conn.execute(select(ItemRow).where(ItemRow.id == item_id).with_for_update(skip_locked=True))
            found = preferred.first()
            if found is not None and found.labels_needed > 1 and self._take_slot(conn, asked, found):
                return found
        return None

    def _take_slot(self, conn: Connection, asked: dict[str, Any], row: Any) -> bool:
        """Claim a slot of the locked item `row` if one is free for the reviewer (checked in the same statement)."""
        taken = conn.execute(queries.TAKE_SLOT, {**asked, "item": row.id, "labels_needed": row.labels_needed})
        return taken.first() is not None

    def renew(self, item_id: str, reviewer: str, lease_s: float = 900.0) -> datetime:
        """Extend the reviewer's claim on an item by `lease_s` seconds from now (the page does this while the item
        is open and visible); returns the new expiry. ClaimConflict when the claim is gone (expired, or the item
        finished)."""
        stamp = now()
        expires = stamp + timedelta(seconds=lease_s)
        with self.engine.begin() as conn:
            renewed = conn.execute(
                update(ClaimRow)
                .where(ClaimRow.item_id == item_id, ClaimRow.reviewer == reviewer, ClaimRow.expires_at >= stamp)
                .values(expires_at=expires)
            ).rowcount
        if not renewed:
            self._run_of(item_id)  # ItemNotFound for an unknown item
            raise ClaimConflict(f"item {item_id} is no longer yours: its claim expired or the item is finished")
        return expires

    def held_item(self, run_id: str, reviewer: str) -> QueuedItem | None:
        """The item the reviewer holds an unexpired claim on in this run, if any. Reads only: showing a page
        never claims anything (claims come from POSTs)."""
        with self._reads.connect() as conn:
            row = conn.execute(
                select(ItemRow, ClaimRow.expires_at)
                .join(ClaimRow, ClaimRow.item_id == ItemRow.id)
                .where(ClaimRow.run_id == run_id, ClaimRow.reviewer == reviewer, ClaimRow.expires_at >= now())
            ).first()
        return None if row is None else _queued(row, lease_expires_at=row.expires_at)

    @staticmethod
    def _lock_item(conn: Connection, item_id: str) -> Any:
        """The item's row, locked until the transaction ends (waiting for another holder); ItemNotFound if none."""
        row = conn.execute(select(ItemRow).where(ItemRow.id == item_id).with_for_update()).first()
        if row is None:
            raise ItemNotFound(f"no review item {item_id!r}")
        return row

    def submit(
        self,
        item_id: str,
        reviewer: str,
        label: ReviewLabel | None,
        comment: str | None = None,
        strength: Strength | None = None,
        tags: Iterable[str] = (),
        ranking: Sequence[Sequence[int]] | None = None,
    ) -> Submission:
        """Store a reviewer's label for an item (None: they skip it) and release their claim; with a preferred
        answer, optionally how much better it is (`strength`), and any tags.

        Accepted when the reviewer holds a claim on the item, or holds none but the item still has a
        free slot; a reviewer may change their own label. Refused (ClaimConflict) when the item went
        to others meanwhile; ItemNotFound for an unknown item. A ranking item (ranking mode) takes a `ranking`
        (label None with it) or a set-aside, never a pairwise label.
        """
        if ranking is not None:
            label = RANKED  # type: ignore[assignment]
        elif label is not None and label not in LABELS:
            raise ReviewStoreError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
        if strength is not None and (strength not in STRENGTHS or label not in ("a", "b")):
            raise ReviewStoreError(f"strength must be one of {', '.join(STRENGTHS)}, and only with label a or b")
        tag_list = sorted(set(tags))
        if len(tag_list) > MAX_TAGS or any(not tag or len(tag) > 64 for tag in tag_list):
            raise ReviewStoreError(f"at most {MAX_TAGS} tags of 1 to 64 characters")
        tags_json = json.dumps(tag_list) if tag_list else None
        comment = (comment or "").strip() or None
        stamp = now()
        asked = {"item": item_id, "reviewer_name": reviewer, "now": stamp}
        with self.engine.begin() as conn:
            item = conn.execute(queries.LOCK_FOR_LABEL, asked).first()
            if item is None:
                raise ItemNotFound(f"no review item {item_id!r}")
            run_id = item.run_id
            ranking_json = _checked_ranking(item, label, ranking)
            ended = conn.execute(queries.END_CLAIMS, asked).all()
            holds = any(claim.reviewer == reviewer and claim.expires_at >= stamp for claim in ended)
            found = conn.execute(queries.OCCUPANCY, asked).one()
            given = {
                "label": label,
                "comment": comment,
                "strength": strength,
                "tags_json": tags_json,
                "ranking_json": ranking_json,
            }
            labelled, skipped = found.labelled, found.skipped
            if found.by_reviewer:
                mine = conn.execute(
                    select(LabelRow).where(LabelRow.item_id == item_id, LabelRow.reviewer == reviewer)
                ).one()
                if all(getattr(mine, key) == value for key, value in given.items()):
                    return Submission(item_id, run_id, item.status, False, repeated=True)
                conn.execute(
                    update(LabelRow)
                    .where(LabelRow.item_id == item_id, LabelRow.reviewer == reviewer)
                    .values(**given, updated_at=stamp)
                )
                labelled, skipped = (labelled - 1, skipped) if mine.label is not None else (labelled, skipped - 1)
            else:
                slots_left = found.labels_needed - found.labelled - found.claimed
                if not holds and (item.status not in OPEN_STATUSES or slots_left <= 0):
                    raise ClaimConflict(f"item {item_id} is no longer yours: its claim expired and others took it")
                conn.execute(
                    queries.INSERT_LABEL,
                    {
                        "item_id": item_id,
                        "reviewer": reviewer,
                        "run_id": run_id,
                        **given,
                        "created_at": stamp,
                        "updated_at": stamp,
                    },
                )
            labelled, skipped = (labelled + 1, skipped) if label is not None else (labelled, skipped + 1)
            status = _status(found.labels_needed, found.max_skips, labelled, skipped, found.claimed)
            if status != item.status:
                conn.execute(queries.SET_STATUS, {"item": item_id, "new_status": status, "stamp": stamp})
        emptied = status in ("done", "skipped") and self._mark_if_emptied(run_id)
        return Submission(item_id, run_id, status, emptied)

    def settle(self, item_id: str, label: ReviewLabel, by: str) -> None:
        """The run's owner decides an item's label (a disagreement): it replaces the reviewers' majority in the
        merge; their labels stay as they gave them. Not for ranking items (rank it as a reviewer instead)."""
        if label not in LABELS:
            raise ReviewStoreError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
        with self.engine.begin() as conn:
            item = self._lock_item(conn, item_id)
            if item.candidates_json is not None:
                raise ReviewStoreError(f"item {item_id} is a ranking item: rank its answers on the page instead")
            conn.execute(
                update(ItemRow)
                .where(ItemRow.id == item_id)
                .values(settled_label=label, settled_by=by, updated_at=now())
            )

    def _run_of(self, item_id: str) -> str:
        with self._reads.connect() as conn:
            run_id = conn.execute(select(ItemRow.run_id).where(ItemRow.id == item_id)).scalar()
        if run_id is None:
            raise ItemNotFound(f"no review item {item_id!r}")
        return run_id

    def _update_status(self, conn: Connection, item_id: str, stamp: datetime) -> ReviewStatus:
        """Store the status the item's labels and live claims give it (the item's row is locked)."""
        found = conn.execute(queries.OCCUPANCY, {"item": item_id, "reviewer_name": "", "now": stamp}).one()
        status = _status(found.labels_needed, found.max_skips, found.labelled, found.skipped, found.claimed)
        if status != found.status:
            conn.execute(queries.SET_STATUS, {"item": item_id, "new_status": status, "stamp": stamp})
        return status

    def _mark_if_emptied(self, run_id: str) -> bool:
        """True exactly once per run: when its last open item is finished. Called after the label's transaction
        committed: of two reviewers finishing the last two items at once, the later one sees both finished
        (inside their own transactions each saw the other's still open). An item still open is someone else's
        to finish, so only a run that looks empty takes the run's lock, to mark it once and let no enqueue slip
        in between. (Holding the run's lock for every label kept a run's labels waiting in line.)"""
        with self._reads.connect() as conn:
            if self._has_open_item(conn, run_id):
                return False
        with self._transaction(run_id) as conn:
            if self._has_open_item(conn, run_id):
                return False
            result = conn.execute(
                update(RunRow).where(RunRow.run_id == run_id, RunRow.emptied_at.is_(None)).values(emptied_at=now())
            )
        return result.rowcount == 1

    @staticmethod
    def _has_open_item(conn: Connection, run_id: str) -> bool:
        """Whether the run has an open item; one is enough to know (a count would read every open item)."""
        return conn.execute(queries.HAS_OPEN_ITEM, {"run": run_id}).first() is not None

    # -- reading --------------------------------------------------------------------------------------

    def runs(self) -> list[str]:
        with self._reads.connect() as conn:
            return list(conn.execute(select(RunRow.run_id).order_by(RunRow.created_at, RunRow.run_id)).scalars())

    def get(self, item_id: str) -> QueuedItem:
        with self._reads.connect() as conn:
            row = conn.execute(select(ItemRow).where(ItemRow.id == item_id)).first()
        if row is None:
            raise ItemNotFound(f"no review item {item_id!r}")
        return _queued(row)

    def stats(self, run_id: str, reviewer: str | None = None) -> dict[str, Any]:
        """Counts of a run's queue by status and reason, labels given, and the agreement between reviewers."""
        with self.engine.connect() as conn:
            if conn.execute(select(RunRow.run_id).where(RunRow.run_id == run_id)).first() is None:
                raise ItemNotFound(f"no review queue for run {run_id!r}")
            by_status = dict(  # gold items (always open) count towards no progress
                conn.execute(
                    select(ItemRow.status, func.count())
                    .where(ItemRow.run_id == run_id, ItemRow.reason != "gold")
                    .group_by(ItemRow.status)
                ).all()
            )
            held = conn.execute(  # open items someone holds a live claim on
                select(func.count(ClaimRow.item_id.distinct()))
                .join(ItemRow, ItemRow.id == ClaimRow.item_id)
                .where(ClaimRow.run_id == run_id, ClaimRow.expires_at >= now(), OPEN, ItemRow.reason != "gold")
            ).scalar_one()
            by_reason = dict(
                conn.execute(
                    select(ItemRow.reason, func.count()).where(ItemRow.run_id == run_id).group_by(ItemRow.reason)
                ).all()
            )
            labels = conn.execute(
                select(LabelRow.item_id, LabelRow.reviewer, LabelRow.label, ItemRow.reason)
                .join(ItemRow, ItemRow.id == LabelRow.item_id)
                .where(LabelRow.run_id == run_id)
            ).all()
        total = sum(by_status.values())
        open_items = by_status.get("pending", 0) + by_status.get("claimed", 0)
        statuses = {
            "pending": open_items - held,
            "claimed": held,
            "done": by_status.get("done", 0),
            "skipped": by_status.get("skipped", 0),
        }
        given = [row for row in labels if row.label is not None]
        return {
            "run": run_id,
            "total": total,
            **statuses,
            "finished": statuses["done"] + statuses["skipped"],
            "by_reason": by_reason,
            "labels": len(given),
            "skips": len(labels) - len(given),
            "by_label": dict(Counter(row.label for row in given)),
            "mine": sum(1 for row in labels if row.reviewer == reviewer) if reviewer else None,
            # (gold measures each reviewer; rankings are compared pair by pair on the agreement page)
            "inter_annotator_agreement": _pairwise_agreement(
                [row for row in given if row.reason != "gold" and row.label != RANKED]
            ),
        }

    def labels_by(
        self, run_id: str, reviewer: str, item_id: str | None = None, limit: int | None = None
    ) -> list[GivenLabel]:
        """The labels a reviewer gave in a run, the latest first (only the one for `item_id` when given)."""
        query = (
            select(
                ItemRow,
                LabelRow.label,
                LabelRow.comment,
                LabelRow.strength,
                LabelRow.tags_json,
                LabelRow.ranking_json,
                LabelRow.updated_at.label("given_at"),
            )
            .join(LabelRow, LabelRow.item_id == ItemRow.id)
            .where(LabelRow.run_id == run_id, LabelRow.reviewer == reviewer)
            .order_by(LabelRow.updated_at.desc(), ItemRow.position.desc())
        )
        if item_id is not None:
            query = query.where(ItemRow.id == item_id)
        if limit is not None:
            query = query.limit(limit)
        with self._reads.connect() as conn:
            rows = conn.execute(query).all()
        return [
            GivenLabel(
                _queued(row),
                row.label,
                row.comment,
                row.given_at,
                row.strength,
                _tags(row.tags_json),
                _ranking(row.ranking_json),
            )
            for row in rows
        ]

    def decisions(self, run_id: str) -> dict[str, HumanDecision]:
        """Every item of a run with its labels, by pair id (what the merge needs)."""
        with self.engine.connect() as conn:
            items = conn.execute(select(ItemRow).where(ItemRow.run_id == run_id).order_by(ItemRow.position)).all()
            labels = conn.execute(
                select(
                    LabelRow.item_id,
                    LabelRow.reviewer,
                    LabelRow.label,
                    LabelRow.strength,
                    LabelRow.tags_json,
                    LabelRow.ranking_json,
                )
                .where(LabelRow.run_id == run_id, LabelRow.label.is_not(None))
                .order_by(LabelRow.created_at, LabelRow.reviewer)
            ).all()
        by_item: dict[str, list[Any]] = {}
        for row in labels:
            by_item.setdefault(row.item_id, []).append(row)
        return {
            row.pair_id: HumanDecision(
                item_id=row.id,
                pair_id=row.pair_id,
                reason=row.reason,
                status=row.status,
                labels=tuple((given.reviewer, given.label) for given in by_item.get(row.id, [])),
                judgment=Judgment.model_validate_json(row.judgment_json),
                strengths=tuple(given.strength for given in by_item.get(row.id, [])),
                tags=tuple(sorted({tag for given in by_item.get(row.id, []) for tag in _tags(given.tags_json)})),
                gold_label=row.gold_label,
                candidates=_candidates(row.candidates_json),
                rankings=tuple(_ranking(given.ranking_json) for given in by_item.get(row.id, [])),
                prompt=Pair.model_validate_json(row.pair_json).prompt if row.candidates_json else None,
                settled=row.settled_label,
                settled_by=row.settled_by,
            )
            for row in items
        }

    def run_settings(self, run_id: str) -> RunSettings:
        """What the page offers the run's reviewers (defaults for a run enqueued without settings)."""
        with self._reads.connect() as conn:
            found = conn.execute(select(RunRow.settings_json).where(RunRow.run_id == run_id)).first()
        if found is None:
            raise ItemNotFound(f"no review queue for run {run_id!r}")
        return RunSettings.from_json(found.settings_json)

    # -- export and import ----------------------------------------------------------------------------

    def export_rows(self, run_id: str) -> Iterator[dict[str, Any]]:
        """One JSON-able row per item: the item, its pair and judgment, and every label and skip; the first row
        also carries the run's page settings (`run_settings`)."""
        with self.engine.connect() as conn:
            run = conn.execute(select(RunRow.settings_json).where(RunRow.run_id == run_id)).first()
            items = conn.execute(select(ItemRow).where(ItemRow.run_id == run_id).order_by(ItemRow.position)).all()
            labels = conn.execute(select(LabelRow).where(LabelRow.run_id == run_id)).all()
        settings = RunSettings.from_json(run.settings_json if run is not None else None)
        by_item: dict[str, list[dict[str, Any]]] = {}
        for label in labels:
            by_item.setdefault(label.item_id, []).append(
                {
                    "reviewer": label.reviewer,
                    "label": label.label,
                    "comment": label.comment,
                    "strength": label.strength,
                    "tags": list(_tags(label.tags_json)),
                    **({"ranking": json.loads(label.ranking_json)} if label.ranking_json else {}),
                    "created_at": label.created_at.isoformat() + "Z",
                }
            )
        for number, row in enumerate(items):
            yield {
                **({"run_settings": json.loads(settings.to_json())} if number == 0 else {}),
                "item": _item(row).model_dump(mode="json"),
                "pair": json.loads(row.pair_json),
                "judgment": json.loads(row.judgment_json),
                "shown_swapped": row.shown_swapped,
                "labels_needed": row.labels_needed,
                "max_skips": row.max_skips,
                **({"gold_label": row.gold_label} if row.gold_label else {}),
                **({"candidates": json.loads(row.candidates_json)} if row.candidates_json else {}),
                **({"settled": {"label": row.settled_label, "by": row.settled_by}} if row.settled_label else {}),
                "labels": sorted(by_item.get(row.id, []), key=lambda entry: entry["reviewer"]),
            }

    def import_rows(self, rows: Iterable[dict[str, Any]], source: str = "import") -> tuple[int, int]:
        """Load exported rows: items missing here are added, labels missing here are added. Returns (items, labels)."""
        items_added = labels_added = 0
        for number, row in enumerate(rows, start=1):
            try:
                item = ReviewItem.model_validate(row["item"])
                pair = Pair.model_validate(row["pair"])
                judgment = Judgment.model_validate(row["judgment"])
                labels = [
                    {
                        "label": entry["label"],
                        "comment": entry.get("comment"),
                        "strength": entry.get("strength"),
                        "tags_json": json.dumps(sorted(entry["tags"])) if entry.get("tags") else None,
                        "ranking_json": json.dumps(entry["ranking"]) if entry.get("ranking") else None,
                        "created_at": _parse_time(entry.get("created_at")),
                        "reviewer": entry["reviewer"],
                    }
                    for entry in row.get("labels", [])
                ]
                settings = RunSettings.from_json(json.dumps(row["run_settings"])) if "run_settings" in row else None
                answers = [Candidate.model_validate(c) for c in row["candidates"]] if row.get("candidates") else None
            except (KeyError, TypeError, ValueError) as exc:
                raise ReviewStoreError(f"{source}:{number}: not an exported review row: {exc}") from None
            if row.get("gold_label") not in (None, *LABELS):
                raise ReviewStoreError(f"{source}:{number}: unknown gold label {row['gold_label']!r}")
            items_added += self.enqueue(
                item.run_id,
                [(item, pair, judgment)],
                int(row.get("labels_needed", 1)),
                int(row.get("max_skips", 1)),
                settings,
                {item.id: row["gold_label"]} if row.get("gold_label") else None,
                {item.id: answers} if answers else None,
            )
            for given in labels:
                if given["label"] is not None and given["label"] not in (*LABELS, RANKED):
                    raise ReviewStoreError(f"{source}:{number}: unknown label {given['label']!r}")
                if given["strength"] is not None and given["strength"] not in STRENGTHS:
                    raise ReviewStoreError(f"{source}:{number}: unknown strength {given['strength']!r}")
                labels_added += self._import_label(item, given)
            settled = row.get("settled")
            if settled and settled.get("label") in LABELS:
                self.settle(item.id, settled["label"], str(settled.get("by") or source))
        return items_added, labels_added

    def _import_label(self, item: ReviewItem, given: dict[str, Any]) -> int:
        """One exported label (LabelRow's columns, reviewer and created_at included) of an item, unless the
        reviewer labelled it here already."""
        reviewer = given["reviewer"]
        stamp = now()
        with self._transaction(item.run_id) as conn:
            exists = conn.execute(
                select(LabelRow.item_id).where(LabelRow.item_id == item.id, LabelRow.reviewer == reviewer)
            ).first()
            if exists:
                return 0
            conn.execute(
                LabelRow.__table__.insert().values(item_id=item.id, run_id=item.run_id, **given, updated_at=stamp)
            )
            self._update_status(conn, item.id, stamp)
        self._mark_if_emptied(item.run_id)
        return 1


def _pairwise_agreement(labels: list[Any]) -> dict[str, Any] | None:
    """Share of reviewer pairs on the same item who gave the same label (items with 2+ labels)."""
    by_item: dict[str, list[str]] = {}
    for row in labels:
        by_item.setdefault(row.item_id, []).append(row.label)
    agree = total = 0
    for values in by_item.values():
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                total += 1
                agree += values[i] == values[j]
    return {"pairs": total, "agreement": agree / total} if total else None


def _checked_ranking(item: Any, label: str | None, ranking: Sequence[Sequence[int]] | None) -> str | None:
    """A ranking as stored (JSON), checked against the item: every answer placed once; None without one."""
    if item.candidates_json is None:
        if ranking is not None:
            raise ReviewStoreError(f"item {item.id} is a pair, not answers to rank: send a label")
        return None
    if ranking is None:
        if label is not None:
            raise ReviewStoreError(f"item {item.id} asks for a ranking of its answers, not a pairwise label")
        return None
    count = len(json.loads(item.candidates_json))
    tiers = [sorted({int(index) for index in tier}) for tier in ranking if len(tier)]
    placed = [index for tier in tiers for index in tier]
    if sorted(placed) != list(range(count)):
        raise ReviewStoreError(f"a ranking must place each of the {count} answers (0 to {count - 1}) exactly once")
    return json.dumps(tiers)


def _ranking(ranking_json: str | None) -> Ranking | None:
    return tuple(tuple(tier) for tier in json.loads(ranking_json)) if ranking_json else None


def _candidates(candidates_json: str | None) -> tuple[Candidate, ...]:
    return tuple(Candidate.model_validate(c) for c in json.loads(candidates_json)) if candidates_json else ()


def _tags(tags_json: str | None) -> tuple[str, ...]:
    return tuple(json.loads(tags_json)) if tags_json else ()


def _parse_time(value: str | None) -> datetime:
    """An exported timestamp (ISO 8601, UTC, trailing Z) as naive UTC; now when absent."""
    if not value:
        return now()
    return datetime.fromisoformat(value.removesuffix("Z")).replace(tzinfo=None)


def _status(labels_needed: int, max_skips: int, labelled: int, skipped: int, claimed: int) -> ReviewStatus:
    """An item's stored status from its counts: done with enough labels; set aside (skipped) after `max_skips`
    set-asides, once no one else holds a live claim on it (they may still label it); else pending (open)."""
    if labelled >= labels_needed:
        return "done"
    if skipped >= max_skips and not claimed:
        return "skipped"
    return "pending"


def _item(row: Any) -> ReviewItem:
    return ReviewItem(id=row.id, run_id=row.run_id, pair_id=row.pair_id, reason=row.reason, status=row.status)


def _queued(row: Any, lease_expires_at: datetime | None = None) -> QueuedItem:
    """The item of `row`; with `lease_expires_at`, as its reviewer holds it (status claimed while open)."""
    item = _item(row)
    if lease_expires_at is not None and item.status in OPEN_STATUSES:
        item = item.model_copy(update={"status": "claimed"})
    return QueuedItem(
        item=item,
        pair=Pair.model_validate_json(row.pair_json),
        judgment=Judgment.model_validate_json(row.judgment_json),
        shown_swapped=row.shown_swapped,
        labels_needed=row.labels_needed,
        lease_expires_at=lease_expires_at,
        candidates=_candidates(row.candidates_json),
    )


def _lock_key(*key: str) -> int:
    """A signed 64-bit advisory-lock key for a run (or a run and a reviewer)."""
    name = "\x00".join(key)
    return int.from_bytes(hashlib.sha256(f"rlaif-review:{name}".encode()).digest()[:8], "big", signed=True)


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ReviewStoreError(
            "review.db is not a database URL (use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30, "isolation_level": None})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Connection) -> None:
            # Take the write lock at the start, so concurrent claims queue up instead of failing to upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        # No ping before each use: it cost a round trip per request (a fifth of the throughput with 50 reviewers).
        # A connection that a database restart broke fails its one request with OperationalError (answered 503
        # with Retry-After, so clients send it again), and SQLAlchemy then replaces every pooled connection.
        return create_engine(parsed, pool_pre_ping=False, pool_size=10, max_overflow=20)
    raise ReviewStoreError(f"review.db: unsupported database {parsed.get_backend_name()!r} (use sqlite or postgresql)")
