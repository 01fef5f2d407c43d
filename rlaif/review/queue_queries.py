"""The statements of the review queue's busiest requests (claim, label, sign-in), built once with bound parameters.

Built afresh for every request, SQLAlchemy spent most of a request's CPU constructing each expression and its
cache key; built once, it reuses the compiled form. With the slot checked and taken in one statement and no sweep
of lapsed claims, a claim and a label cost the store about 3 ms of CPU in 10 statements, against 11.1 ms in 15
before (one reviewer in a loop on PostgreSQL, 2-core Xeon). Parameters are named by `bindparam`: `run`, `item`,
`reviewer_name`, `now` (the request's time: only claims that expire at or after it are live) and `expires` (a new
lease's end).

A claim lapses when its lease ends, with no write: every count here looks at live claims only. A lapsed claim's
row is deleted when its item is next labelled, or replaced when the same reviewer claims that item again.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import DateTime, Select, bindparam, delete, func, insert, select, text, update

from rlaif.review.tables import OPEN, ClaimRow, ItemRow, LabelRow, ReviewerRow

NOW = bindparam("now", type_=DateTime())
EXPIRES = bindparam("expires", type_=DateTime())


def _labelled(item: Any) -> Any:
    return select(func.count()).where(LabelRow.item_id == item, LabelRow.label.is_not(None)).scalar_subquery()


def _skipped(item: Any) -> Any:
    return select(func.count()).where(LabelRow.item_id == item, LabelRow.label.is_(None)).scalar_subquery()


def _live_claims(item: Any) -> Any:
    return select(func.count()).where(ClaimRow.item_id == item, ClaimRow.expires_at >= NOW).scalar_subquery()


def _by_reviewer(item: Any) -> Any:
    """Whether `reviewer` labelled the item or set it aside."""
    return (
        select(LabelRow.item_id)
        .where(LabelRow.item_id == item, LabelRow.reviewer == bindparam("reviewer_name"))
        .exists()
    )


# The reviewer's own live claim in the run, renewed to `expires`: the item they hold, if any.
RENEW_HELD = (
    update(ClaimRow)
    .where(
        ClaimRow.run_id == bindparam("run"), ClaimRow.reviewer == bindparam("reviewer_name"), ClaimRow.expires_at >= NOW
    )
    .values(expires_at=EXPIRES)
    .returning(ClaimRow.item_id)
)

# What labelling an item needs of its row, locked until the transaction ends (waiting for another holder).
LOCK_FOR_LABEL = (
    select(ItemRow.id, ItemRow.run_id, ItemRow.status, ItemRow.candidates_json)
    .where(ItemRow.id == bindparam("item"))
    .with_for_update()
)

# An item's claims that end now: the reviewer's own, and any that lapsed (the item's row is locked).
END_CLAIMS = (
    delete(ClaimRow)
    .where(ClaimRow.item_id == bindparam("item"))
    .where((ClaimRow.reviewer == bindparam("reviewer_name")) | (ClaimRow.expires_at < NOW))
    .returning(ClaimRow.reviewer, ClaimRow.expires_at)
)

# An item's counts: labels given, set-asides, live claims, and whether `reviewer` labelled or set it aside.
OCCUPANCY = select(
    ItemRow.status,
    ItemRow.labels_needed,
    ItemRow.max_skips,
    _labelled(ItemRow.id).label("labelled"),
    _skipped(ItemRow.id).label("skipped"),
    _live_claims(ItemRow.id).label("claimed"),
    _by_reviewer(ItemRow.id).label("by_reviewer"),
).where(ItemRow.id == bindparam("item"))

# A lock held until the transaction ends (PostgreSQL), on a 64-bit key.
ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:key)")

# A new label (LabelRow's columns as parameters), and an item's new status.
INSERT_LABEL = insert(LabelRow)
SET_STATUS = (
    update(ItemRow)
    .where(ItemRow.id == bindparam("item"))
    .values(status=bindparam("new_status"), updated_at=bindparam("stamp", type_=DateTime()))
)

# Whether the run has an open item (gold items aside, which never finish); one is enough to know.
HAS_OPEN_ITEM = select(ItemRow.id).where(ItemRow.run_id == bindparam("run"), OPEN, ItemRow.reason != "gold").limit(1)

# The reviewer a token belongs to, unless revoked.
TOKEN_OWNER = select(ReviewerRow.name).where(
    ReviewerRow.token_hash == bindparam("token_hash"), ReviewerRow.revoked_at.is_(None)
)


def _free_items(query: Select[Any], avoid: bool) -> Select[Any]:
    """`query` narrowed to the run's open items with a free slot that the reviewer has not labelled, in queue
    order (with `avoid`, the item `avoid` last)."""
    free = _labelled(ItemRow.id) + _live_claims(ItemRow.id) < ItemRow.labels_needed
    query = query.where(ItemRow.run_id == bindparam("run"), OPEN, ~_by_reviewer(ItemRow.id), free)
    return query.order_by(*([ItemRow.id == bindparam("avoid")] if avoid else []), ItemRow.position)


@cache
def next_free(avoid: bool = False, passed: bool = False) -> Select[Any]:
    """The first free item for the reviewer (see `_free_items`), locked; SKIP LOCKED: an item another transaction
    holds is passed over. With `passed`, the items `passed` are left out."""
    query = _free_items(select(ItemRow), avoid)
    if passed:
        query = query.where(ItemRow.id.not_in(bindparam("passed", expanding=True)))
    return query.limit(1).with_for_update(skip_locked=True, of=ItemRow)


@cache
def free_window(size: int, avoid: bool = False) -> Select[Any]:
    """The ids of the first `size` free items for the reviewer (see `_free_items`), unlocked."""
    return _free_items(select(ItemRow.id), avoid).limit(size)


# Claim a slot of the locked item `item` (wanting `labels_needed` labels) for the reviewer until `expires`, if
# one is free and they have not labelled it: read afresh in this statement, since the query that found the item
# may predate a claim committed just before its lock was taken. Returns the item id when claimed. A lapsed claim
# of the reviewer's own on the item is replaced. Written as SQL that PostgreSQL and SQLite both run: SQLAlchemy
# would compile its ON CONFLICT construct anew for every request.
TAKE_SLOT = text(
    """
    INSERT INTO review_claims (item_id, reviewer, run_id, expires_at)
    SELECT CAST(:item AS VARCHAR), CAST(:reviewer_name AS VARCHAR), CAST(:run AS VARCHAR), :expires
    WHERE NOT EXISTS (SELECT 1 FROM review_labels WHERE item_id = :item AND reviewer = :reviewer_name)
      AND (SELECT count(*) FROM review_labels WHERE item_id = :item AND label IS NOT NULL)
        + (SELECT count(*) FROM review_claims WHERE item_id = :item AND expires_at >= :now) < :labels_needed
    ON CONFLICT (item_id, reviewer) DO UPDATE SET expires_at = excluded.expires_at
    RETURNING item_id
    """
).bindparams(NOW, EXPIRES)
