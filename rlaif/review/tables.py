"""The review database's tables (SQLAlchemy ORM): reviewers, runs, items, claims, labels, and the schema version.

A change to them raises SCHEMA_VERSION and adds the upgrade from the version before to `migrations.py`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 2


class Base(DeclarativeBase):
    pass


class MetaRow(Base):
    __tablename__ = "rlaif_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class ReviewerRow(Base):
    __tablename__ = "review_reviewers"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class RunRow(Base):
    __tablename__ = "review_runs"
    run_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    emptied_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The page's settings for the run (`RunSettings` as JSON: guidelines, label strength, tags); version 2.
    settings_json: Mapped[str | None] = mapped_column(Text, nullable=True)


# The statuses of an open item: "claimed" is what older versions stored for an item someone held.
OPEN_STATUSES = ("pending", "claimed")
_OPEN = text("status IN ('pending', 'claimed')")
# Open items, for queries: written out rather than bound, since PostgreSQL uses the partial index below only
# when a query states its condition literally (a prepared statement's generic plan, with the statuses bound,
# read the whole run: 110 ms per claim at 20,000 items).
OPEN = text("review_items.status IN ('pending', 'claimed')")


class ItemRow(Base):
    __tablename__ = "review_items"
    __table_args__ = (
        UniqueConstraint("run_id", "pair_id"),
        # The open items of a run in queue order: finding the next item reads the first few, not the whole
        # queue. Added to older databases when they are opened (`_add_missing_indexes`).
        Index("ix_review_items_open", "run_id", "position", postgresql_where=_OPEN, sqlite_where=_OPEN),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(256), ForeignKey("review_runs.run_id"), index=True)
    pair_id: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    shown_swapped: Mapped[bool] = mapped_column(Boolean)
    labels_needed: Mapped[int] = mapped_column(Integer)
    max_skips: Mapped[int] = mapped_column(Integer)
    pair_json: Mapped[str] = mapped_column(Text)
    judgment_json: Mapped[str] = mapped_column(Text)
    gold_label: Mapped[str | None] = mapped_column(String(16), nullable=True)  # version 2: a gold item's answer
    # Version 2, ranking mode: all the prompt's answers (a JSON list of candidates) for people to rank.
    candidates_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Version 2: the label the run's owner settled a disagreement with (`rlaif review settle`), and who.
    settled_label: Mapped[str | None] = mapped_column(String(16), nullable=True)
    settled_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class ClaimRow(Base):
    __tablename__ = "review_claims"
    item_id: Mapped[str] = mapped_column(String(32), ForeignKey("review_items.id"), primary_key=True)
    reviewer: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(256), index=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class LabelRow(Base):
    __tablename__ = "review_labels"
    item_id: Mapped[str] = mapped_column(String(32), ForeignKey("review_items.id"), primary_key=True)
    reviewer: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(256), index=True)
    label: Mapped[str | None] = mapped_column(String(16), nullable=True)  # None: the reviewer skipped it
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    # Version 2: how much better the chosen answer is (much | slightly; None when not asked), and tags (JSON list).
    strength: Mapped[str | None] = mapped_column(String(16), nullable=True)
    tags_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Version 2, ranking mode (label "ranked"): the answers' order, best first, as a JSON list of tiers of
    # candidate indices (answers in one tier are tied).
    ranking_json: Mapped[str | None] = mapped_column(Text, nullable=True)
