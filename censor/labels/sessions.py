"""Labelling sessions that survive reloads and restarts: SQLite (WAL) for labels, a folder per session.

A session is keyed by an unguessable id (``secrets.token_urlsafe``). Its images (28x28 uint8, a few
hundred bytes each) live in the database next to their seeds and labels, so a click is a single
small transaction, committed before the UI hears back: a reload, or a killed server, loses nothing
that was acknowledged. Files that belong to a session (reward weights, galleries) go to
``<root>/<session id>/``.

Label states follow the paper's labelling tool: every image starts benign; a click marks it malign,
a second click unsure (left out of training), a third resets it to benign. Only images the person
has actually been shown ("viewed") count as labelled.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from censor.core.errors import CensorError

BENIGN, MALIGN, UNSURE = 0, 1, 2
STATE_NAMES = {BENIGN: "benign", MALIGN: "malign", UNSURE: "unsure"}
_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, created REAL NOT NULL, model TEXT NOT NULL, instructions TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS items (
    session_id TEXT NOT NULL REFERENCES sessions(id), item INTEGER NOT NULL,
    round INTEGER NOT NULL, seed INTEGER NOT NULL, image BLOB NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0, viewed INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
    PRIMARY KEY (session_id, item)
);
"""


@dataclass
class Counts:
    viewed: int
    malign: int
    benign: int
    unsure: int
    total: int


class SessionStore:
    """All sessions under one data directory (a local folder, or a Space's persistent storage)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection shared by Gradio's worker threads
        self._db = sqlite3.connect(self.root / "sessions.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.executescript(_SCHEMA)

    def _q(self, sql: str, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _check(self, sid: str) -> str:
        if not isinstance(sid, str) or not _ID.match(sid) or not self._q("SELECT 1 FROM sessions WHERE id=?", (sid,)):
            raise CensorError("unknown session")
        return sid

    def create(self, model: str, instructions: str = "") -> str:
        sid = secrets.token_urlsafe(18)
        self._q("INSERT INTO sessions VALUES (?, ?, ?, ?)", (sid, time.time(), model, instructions))
        self.folder(sid).mkdir(parents=True, exist_ok=True)
        return sid

    def exists(self, sid: str) -> bool:
        try:
            self._check(sid)
        except CensorError:
            return False
        return True

    def folder(self, sid: str) -> Path:
        if not _ID.match(sid or ""):
            raise CensorError("unknown session")
        return self.root / sid

    def info(self, sid: str) -> dict:
        self._check(sid)
        created, model, instructions = self._q("SELECT created, model, instructions FROM sessions WHERE id=?", (sid,))[0]
        return dict(id=sid, created=created, model=model, instructions=instructions)

    def set_instructions(self, sid: str, text: str) -> None:
        self._q("UPDATE sessions SET instructions=? WHERE id=?", (text, self._check(sid)))

    def add_items(self, sid: str, images: np.ndarray, seeds, round_: int = 1) -> list[int]:
        """Append images (uint8 [N, H, W], or [N, H, W, 3] for colour) with their seeds; returns their item numbers."""
        self._check(sid)
        images = np.asarray(images)
        colour_ok = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)
        if images.dtype != np.uint8 or not colour_ok or len(images) != len(seeds):
            raise CensorError("items need uint8 [N, H, W] or [N, H, W, 3] images and one seed each")
        now = time.time()
        with self._lock:
            (start,) = self._db.execute("SELECT COALESCE(MAX(item) + 1, 0) FROM items WHERE session_id=?", (sid,)).fetchone()
            h, w = images.shape[1:3]
            rows = [(sid, start + i, round_, int(s), np.ascontiguousarray(im).tobytes(), h, w, now)
                    for i, (im, s) in enumerate(zip(images, seeds))]
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO items (session_id, item, round, seed, image, height, width, updated) "
                                 "VALUES (?,?,?,?,?,?,?,?)", rows)
            self._db.execute("COMMIT")
        return [start + i for i in range(len(rows))]

    def items(self, sid: str, offset: int = 0, limit: int = 1000, round_: int | None = None) -> list[dict]:
        self._check(sid)
        where, args = ("AND round=?", (round_,)) if round_ is not None else ("", ())
        rows = self._q(f"SELECT item, round, seed, image, height, width, state, viewed FROM items WHERE session_id=? "
                       f"{where} ORDER BY item LIMIT ? OFFSET ?", (sid, *args, int(limit), int(offset)))
        return [dict(item=i, round=r, seed=s, image=_decode(b, h, w), state=st, viewed=bool(v))
                for i, r, s, b, h, w, st, v in rows]

    def mark_viewed(self, sid: str, item_ids) -> None:
        self._check(sid)
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE items SET viewed=1 WHERE session_id=? AND item=?", [(sid, int(i)) for i in item_ids])
            self._db.execute("COMMIT")

    def set_state(self, sid: str, item: int, state: int) -> int:
        if state not in STATE_NAMES:
            raise CensorError(f"label state must be one of {sorted(STATE_NAMES)}")
        self._check(sid)
        with self._lock:
            cur = self._db.execute("UPDATE items SET state=?, viewed=1, updated=? WHERE session_id=? AND item=?",
                                   (state, time.time(), sid, int(item)))
        if cur.rowcount != 1:
            raise CensorError(f"no image {item} in this session")
        return state

    def cycle(self, sid: str, item: int) -> int:
        """One click: benign -> malign -> unsure -> benign."""
        rows = self._q("SELECT state FROM items WHERE session_id=? AND item=?", (self._check(sid), int(item)))
        if not rows:
            raise CensorError(f"no image {item} in this session")
        return self.set_state(sid, item, (rows[0][0] + 1) % 3)

    def counts(self, sid: str) -> Counts:
        self._check(sid)
        (viewed, malign, unsure, total), = self._q(
            "SELECT SUM(viewed), SUM(viewed AND state=1), SUM(viewed AND state=2), COUNT(*) FROM items WHERE session_id=?", (sid,))
        viewed, malign, unsure = viewed or 0, malign or 0, unsure or 0
        return Counts(viewed, malign, viewed - malign - unsure, unsure, total)

    def training_data(self, sid: str) -> tuple[np.ndarray, np.ndarray]:
        """Viewed, not-unsure images with labels 1 = benign, 0 = malign (the reward's convention)."""
        self._check(sid)
        rows = self._q("SELECT image, height, width, state FROM items WHERE session_id=? AND viewed=1 AND state!=2 "
                       "ORDER BY item", (sid,))
        if not rows:
            return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
        return (np.stack([_decode(b, h, w) for b, h, w, _ in rows]),
                np.array([1 if s == BENIGN else 0 for *_, s in rows]))


def _decode(blob: bytes, h: int, w: int) -> np.ndarray:
    channels = len(blob) // (h * w)  # the schema keeps height and width; colour items are 3 times longer
    return np.frombuffer(blob, dtype=np.uint8).reshape((h, w) if channels == 1 else (h, w, channels))
