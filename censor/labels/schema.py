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
    PRIMARY KEY (session_id, item)
);
CREATE TABLE IF NOT EXISTS history (
    session_id TEXT NOT NULL, action INTEGER NOT NULL, item INTEGER NOT NULL,
    state INTEGER NOT NULL, viewed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_action ON history (session_id, action);
"""
ITEM_COLS = "session_id, item, round, seed, image, height, width, state, viewed, updated"


@dataclass
class Counts:
    viewed: int
    malign: int
    benign: int
    unsure: int
    total: int


def decode(blob: bytes, h: int, w: int) -> np.ndarray:
    channels = len(blob) // (h * w)  # the schema keeps height and width; colour items are 3 times longer
    return np.frombuffer(blob, dtype=np.uint8).reshape((h, w) if channels == 1 else (h, w, channels))
