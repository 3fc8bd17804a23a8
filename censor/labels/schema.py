"""The session store's tables and row formats (``labels.sessions`` reads and writes them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, created REAL NOT NULL, model TEXT NOT NULL, instructions TEXT NOT NULL DEFAULT '',
    touched REAL
);
CREATE TABLE IF NOT EXISTS items (
    session_id TEXT NOT NULL REFERENCES sessions(id), item INTEGER NOT NULL,
    round INTEGER NOT NULL, seed INTEGER NOT NULL, image BLOB NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0, viewed INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
    box_x0 INTEGER, box_y0 INTEGER, box_x1 INTEGER, box_y1 INTEGER,
    PRIMARY KEY (session_id, item)
);
CREATE TABLE IF NOT EXISTS history (
    session_id TEXT NOT NULL, action INTEGER NOT NULL, item INTEGER NOT NULL,
    state INTEGER NOT NULL, viewed INTEGER NOT NULL,
    box_x0 INTEGER, box_y0 INTEGER, box_x1 INTEGER, box_y1 INTEGER
);
CREATE INDEX IF NOT EXISTS history_by_action ON history (session_id, action);
"""
# A malign image's optional box (censor.core.regions): four nullable columns, all NULL without one
BOX_COLS = ("box_x0", "box_y0", "box_x1", "box_y1")
BOX_SQL = ", ".join(BOX_COLS)
ITEM_COLS = "session_id, item, round, seed, image, height, width, state, viewed, updated, " + BOX_SQL
ITEM_SLOTS = ",".join("?" * len(ITEM_COLS.split(",")))
# Columns added after a store's first release: (table, column, type). A store made before them gets them
# on open (``migrate``); every old row reads NULL there (no box), which is what it had.
ADDED_COLUMNS = [("sessions", "touched", "REAL")] + [(t, c, "INTEGER") for t in ("items", "history") for c in BOX_COLS]


@dataclass
class Counts:
    viewed: int
    malign: int
    benign: int
    unsure: int
    total: int


def migrate(db) -> None:
    """Bring an older store's tables up to ``SCHEMA`` in place (SQLite adds a column without a rewrite)."""
    for table, column, kind in ADDED_COLUMNS:
        if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def box_of(row) -> tuple[int, int, int, int] | None:
    """The box in a row's four box columns (None when they are NULL)."""
    return None if row[0] is None else tuple(int(v) for v in row)


def decode(blob: bytes, h: int, w: int) -> np.ndarray:
    channels = len(blob) // (h * w)  # the schema keeps height and width; colour items are 3 times longer
    return np.frombuffer(blob, dtype=np.uint8).reshape((h, w) if channels == 1 else (h, w, channels))
