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
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from censor.core.errors import CensorError
from censor.labels.marks import BENIGN, MALIGN, STATE_NAMES, UNSURE, Marks
from censor.labels.schema import ITEM_COLS, ITEM_SLOTS, SCHEMA, Counts, migrate
from censor.labels.upkeep import Quotas, sweep_root, tree_bytes

_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
__all__ = ["BENIGN", "MALIGN", "UNSURE", "STATE_NAMES", "Counts", "Quotas", "SessionStore"]


class SessionStore(Marks):
    """All sessions under one data directory (a local folder, or a Space's persistent storage).

    A session made with ``create(..., pending=True)`` (a page view) lives in an in-memory database
    until its first label (``set_state``) or ``keep``: page views cost no disk. At most
    ``quotas.max_pending`` are kept; the least recently used is forgotten.
    """

    def __init__(self, root: str | Path, quotas: Quotas = Quotas()):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.quotas = quotas
        self._lock = threading.Lock()  # one connection shared by Gradio's worker threads
        self._db = sqlite3.connect(self.root / "sessions.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on the disk before the click is acknowledged, across power loss too
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        migrate(self._db)  # an older store: its new columns (boxes) added, its rows kept
        self._mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._mem.executescript(SCHEMA)
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._disk: tuple[float, int] | None = None  # (when, bytes) of the last walk

    def _conn(self, sid) -> sqlite3.Connection:
        return self._mem if sid in self._pending else self._db

    def _q(self, sql: str, args=(), sid=None):
        with self._lock:
            return self._conn(sid).execute(sql, args).fetchall()

    @contextmanager
    def _tx(self, conn):
        """One transaction under the lock: all of it is committed, or none."""
        with self._lock:
            conn.execute("BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _check(self, sid: str) -> str:
        if isinstance(sid, str) and sid in self._pending:
            with self._lock:
                if sid in self._pending:
                    self._pending.move_to_end(sid)
                    return sid
        if not isinstance(sid, str) or not _ID.match(sid) or not self._q("SELECT 1 FROM sessions WHERE id=?", (sid,)):
            raise CensorError("unknown session")
        return sid

    def _check_total(self, extra: int = 0) -> None:
        if self.quotas.total_bytes is not None and self.disk_bytes() + extra > self.quotas.total_bytes:
            raise CensorError("the studio's storage is full; try again later")

    def create(self, model: str, instructions: str = "", pending: bool = False) -> str:
        sid = secrets.token_urlsafe(18)
        row = (sid, time.time(), model, instructions, time.time())
        if pending:
            with self._lock:
                self._mem.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", row)
                self._pending[sid] = None
                while len(self._pending) > self.quotas.max_pending:  # forget the least recently used
                    old, _ = self._pending.popitem(last=False)
                    self._mem.execute("DELETE FROM items WHERE session_id=?", (old,))
                    self._mem.execute("DELETE FROM sessions WHERE id=?", (old,))
            return sid
        self._check_total()
        self._q("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", row)
        self.folder(sid).mkdir(parents=True, exist_ok=True)
        return sid

    def is_pending(self, sid: str) -> bool:
        return sid in self._pending

    def keep(self, sid: str) -> str:
        """Put a pending session on disk (its first label, or anything that writes to its folder)."""
        if self._check(sid) not in self._pending:
            return sid
        self._check_total(self.session_bytes(sid))
        with self._lock:
            session = self._mem.execute("SELECT * FROM sessions WHERE id=?", (sid,)).fetchall()
            items = self._mem.execute(f"SELECT {ITEM_COLS} FROM items WHERE session_id=?", (sid,)).fetchall()
        self._insert(sid, session, items)
        with self._lock:
            self._mem.execute("DELETE FROM items WHERE session_id=?", (sid,))
            self._mem.execute("DELETE FROM sessions WHERE id=?", (sid,))
            self._pending.pop(sid, None)
        return sid

    def _insert(self, sid: str, session: list, items: list) -> None:
        """A whole session (its row and its items) in one transaction; its folder made first."""
        self.folder(sid).mkdir(parents=True, exist_ok=True)
        with self._tx(self._db) as db:
            db.executemany("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)", session)
            db.executemany(f"INSERT INTO items ({ITEM_COLS}) VALUES ({ITEM_SLOTS})", items)

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
        created, model, instructions = self._q("SELECT created, model, instructions FROM sessions WHERE id=?",
                                               (sid,), sid)[0]
        return dict(id=sid, created=created, model=model, instructions=instructions)

    def set_instructions(self, sid: str, text: str) -> None:
        self._q("UPDATE sessions SET instructions=?, touched=? WHERE id=?", (text, time.time(), self.keep(sid)))

    # ---- quotas ------------------------------------------------------------------------------
    def session_bytes(self, sid: str) -> int:
        """Disk a session takes: its images in the database and its folder (reward, shares, runs)."""
        (blobs,), = self._q("SELECT COALESCE(SUM(LENGTH(image)), 0) FROM items WHERE session_id=?", (sid,), sid)
        return int(blobs) + tree_bytes(self.folder(sid))

    def disk_bytes(self) -> int:
        """The data directory's size, walked at most every 10 s (a walk per new session would not scale)."""
        if self._disk is None or time.monotonic() - self._disk[0] > 10.0:
            self._disk = (time.monotonic(), tree_bytes(self.root))
        return self._disk[1]

    def _check_room(self, sid: str, rounds, n: int, new_bytes: int) -> None:
        q = self.quotas
        if q.max_round is not None and len(rounds) and not all(0 <= int(r) <= q.max_round for r in rounds):
            raise CensorError(f"labelling rounds must be between 0 and {q.max_round}")
        (have,), = self._q("SELECT COUNT(*) FROM items WHERE session_id=?", (sid,), sid) if sid else [(0,)]
        if q.max_items is not None and have + n > q.max_items:
            raise CensorError(f"a session holds at most {q.max_items} images ({have} already, {n} more asked)")
        if q.session_bytes is not None and (self.session_bytes(sid) if sid else 0) + new_bytes > q.session_bytes:
            raise CensorError(f"a session may use at most {q.session_bytes // 2**20} MB of storage")
        if sid not in self._pending:
            self._check_total(new_bytes)

    def add_items(self, sid: str, images: np.ndarray, seeds, round_: int = 1) -> list[int]:
        """Append images (uint8 [N, H, W], or [N, H, W, 3] for colour) with their seeds; returns their item numbers."""
        self._check(sid)
        images = np.asarray(images)
        colour_ok = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)
        if images.dtype != np.uint8 or not colour_ok or len(images) != len(seeds):
            raise CensorError("items need uint8 [N, H, W] or [N, H, W, 3] images and one seed each")
        self._check_room(sid, [round_], len(images), images.nbytes)
        now = time.time()
        with self._tx(self._conn(sid)) as db:
            (start,) = db.execute("SELECT COALESCE(MAX(item) + 1, 0) FROM items WHERE session_id=?", (sid,)).fetchone()
            h, w = images.shape[1:3]
            rows = [(sid, start + i, round_, int(s), np.ascontiguousarray(im).tobytes(), h, w, now)
                    for i, (im, s) in enumerate(zip(images, seeds))]
            db.executemany("INSERT INTO items (session_id, item, round, seed, image, height, width, updated) "
                           "VALUES (?,?,?,?,?,?,?,?)", rows)
            db.execute("UPDATE sessions SET touched=? WHERE id=?", (now, sid))
        return [start + i for i in range(len(rows))]

    def import_session(self, model: str, instructions: str, images: np.ndarray, items: list[dict],
                       folder: Path | None = None) -> str:
        """A new session holding ``images`` with each item's seed, round, state, viewed flag and box
        (checked by the caller; none when absent), in one transaction (linear in the items). ``folder`` (a prepared session folder) is renamed into place
        first: a kill leaves either nothing or a folder without a session, which ``sweep`` removes."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(items):
            raise CensorError("items need uint8 [N, H, W] images and one entry each")
        self._check_room(None, [it["round"] for it in items], len(images), images.nbytes + tree_bytes(folder))
        sid, now = secrets.token_urlsafe(18), time.time()
        h, w = images.shape[1:3]
        rows = [(sid, i, int(it["round"]), int(it["seed"]), np.ascontiguousarray(im).tobytes(), h, w,
                 int(it["state"]), int(bool(it["viewed"])), now, *(it.get("box") or (None,) * 4))
                for i, (im, it) in enumerate(zip(images, items))]
        if folder is not None:
            Path(folder).rename(self.folder(sid))
        try:
            self._insert(sid, [(sid, now, model, instructions, now)], rows)
        except BaseException:
            shutil.rmtree(self.folder(sid), ignore_errors=True)
            raise
        return sid

    def delete(self, sid: str) -> None:
        with self._tx(self._conn(sid)) as db:
            db.execute("DELETE FROM items WHERE session_id=?", (sid,))
            db.execute("DELETE FROM history WHERE session_id=?", (sid,))
            db.execute("DELETE FROM sessions WHERE id=?", (sid,))
        self._pending.pop(sid, None)
        shutil.rmtree(self.folder(sid), ignore_errors=True)

    def sweep(self, idle_s: float | None, temp_age_s: float = 0.0) -> dict:
        """Delete sessions untouched for ``idle_s`` seconds, session folders the database does not know
        (an interrupted import) and temporary import folders older than ``temp_age_s``."""
        cutoff = time.time() - idle_s if idle_s is not None else None
        old = [] if cutoff is None else [r[0] for r in self._q(
            "SELECT id FROM sessions WHERE COALESCE(touched, created) < ?", (cutoff,))]
        for sid in old:
            self.delete(sid)
        known = {r[0] for r in self._q("SELECT id FROM sessions")}
        leftovers, temps = sweep_root(self.root, lambda name: bool(_ID.match(name)) and name not in known, temp_age_s)
        return dict(expired=len(old), leftovers=leftovers, temp=temps)
