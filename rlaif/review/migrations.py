"""Upgrades of the review database's schema: one function per version, applied in order to an older
database when a store opens it, in the same transaction as the new version number.

Alembic's operations do the DDL (they know each database's dialect, SQLite's limits included); its script
directory and revision files are left out, since the store, not a command, decides when to upgrade.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Column, String, Text
from sqlalchemy.engine import Connection

from rlaif.review.tables import SCHEMA_VERSION

if TYPE_CHECKING:
    from alembic.operations import Operations


def _to_2(ops: Operations) -> None:
    """The page's per-run settings (guidelines, label strength, tags), a label's strength and tags, gold
    items' known answers, ranking mode's answers and rankings, and the owner's settled labels."""
    ops.add_column("review_runs", Column("settings_json", Text, nullable=True))
    ops.add_column("review_items", Column("gold_label", String(16), nullable=True))
    ops.add_column("review_items", Column("candidates_json", Text, nullable=True))
    ops.add_column("review_items", Column("settled_label", String(16), nullable=True))
    ops.add_column("review_items", Column("settled_by", String(128), nullable=True))
    ops.add_column("review_labels", Column("ranking_json", Text, nullable=True))
    ops.add_column("review_labels", Column("strength", String(16), nullable=True))
    ops.add_column("review_labels", Column("tags_json", Text, nullable=True))


UPGRADES: dict[int, Callable[[Operations], None]] = {2: _to_2}  # version reached -> how
OLDEST_UPGRADABLE = 1


def upgrade(conn: Connection, found: int) -> None:
    """Bring a database of schema version `found` to SCHEMA_VERSION, inside the caller's transaction. (Alembic
    is imported here, when a database needs it: every command that opens a store would pay its import.)"""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    ops = Operations(MigrationContext.configure(conn))
    for version in range(found + 1, SCHEMA_VERSION + 1):
        UPGRADES[version](ops)
