"""The label half of the session store: items, marks, the undo history of marks, counts and the
training set. Mixed into ``SessionStore``, which owns the connections (``_q``, ``_tx``, ``_conn``),
the session checks (``_check``) and putting a pending session on disk (``keep``).

A mark (one click, or a whole page at once) is one *action*: the states it replaced are kept in the
``history`` table, so ``undo`` puts back exactly what the last action changed, viewed flags included.
"""

from __future__ import annotations

import time

import numpy as np

from censor.core.errors import CensorError
from censor.labels.schema import Counts, decode

BENIGN, MALIGN, UNSURE = 0, 1, 2
STATE_NAMES = {BENIGN: "benign", MALIGN: "malign", UNSURE: "unsure"}
UNDO_DEPTH = 200  # actions kept per session; older ones can no longer be undone


class Marks:
    """Items and their labels (see the module docstring for what the host class provides)."""

    def items(self, sid: str, offset: int = 0, limit: int = 1000, round_: int | None = None) -> list[dict]:
        self._check(sid)
        where, args = ("AND round=?", (round_,)) if round_ is not None else ("", ())
        rows = self._q(f"SELECT item, round, seed, image, height, width, state, viewed FROM items WHERE session_id=? "
                       f"{where} ORDER BY item LIMIT ? OFFSET ?", (sid, *args, int(limit), int(offset)), sid)
        return [dict(item=i, round=r, seed=s, image=decode(b, h, w), state=st, viewed=bool(v))
                for i, r, s, b, h, w, st, v in rows]

    def mark_viewed(self, sid: str, item_ids) -> None:
        self._check(sid)
        with self._tx(self._conn(sid)) as db:
            db.executemany("UPDATE items SET viewed=1 WHERE session_id=? AND item=?", [(sid, int(i)) for i in item_ids])
            db.execute("UPDATE sessions SET touched=? WHERE id=?", (time.time(), sid))

    def set_state(self, sid: str, item: int, state: int) -> int:
        return self.set_states(sid, [item], state)[0]

    def set_states(self, sid: str, items, state: int) -> list[int]:
        """Mark ``items`` (all shown: they count as viewed) with ``state`` as one undoable action."""
        if state not in STATE_NAMES:
            raise CensorError(f"label state must be one of {sorted(STATE_NAMES)}")
        items = [int(i) for i in items]
        self._check(sid)
        if not items:
            return []
        marks = "?" + ",?" * (len(items) - 1)
        old = self._q(f"SELECT item, state, viewed FROM items WHERE session_id=? AND item IN ({marks})",
                      (sid, *items), sid)
        if len(old) != len(set(items)):
            missing = sorted(set(items) - {r[0] for r in old})
            raise CensorError(f"no image {missing[0]} in this session")
        self.keep(sid)  # the first label puts a pending session on disk
        now = time.time()
        with self._tx(self._db) as db:
            (action,), = db.execute("SELECT COALESCE(MAX(action) + 1, 0) FROM history WHERE session_id=?",
                                    (sid,)).fetchall()
            db.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?)", [(sid, action, *r) for r in old])
            db.execute("DELETE FROM history WHERE session_id=? AND action<=?", (sid, action - UNDO_DEPTH))
            db.executemany("UPDATE items SET state=?, viewed=1, updated=? WHERE session_id=? AND item=?",
                           [(state, now, sid, i) for i in items])
            db.execute("UPDATE sessions SET touched=? WHERE id=?", (now, sid))
        return [state] * len(items)

    def cycle(self, sid: str, item: int) -> int:
        """One click: benign -> malign -> unsure -> benign."""
        rows = self._q("SELECT state FROM items WHERE session_id=? AND item=?", (self._check(sid), int(item)), sid)
        if not rows:
            raise CensorError(f"no image {item} in this session")
        return self.set_state(sid, item, (rows[0][0] + 1) % 3)

    def undo(self, sid: str) -> list[int]:
        """Put back what the last mark changed; returns the items it touched (none: nothing to undo)."""
        self._check(sid)
        if self.is_pending(sid):
            return []
        with self._tx(self._db) as db:
            rows = db.execute("SELECT item, state, viewed FROM history WHERE session_id=? AND action="
                              "(SELECT MAX(action) FROM history WHERE session_id=?)", (sid, sid)).fetchall()
            db.executemany("UPDATE items SET state=?, viewed=?, updated=? WHERE session_id=? AND item=?",
                           [(st, v, time.time(), sid, i) for i, st, v in rows])
            db.execute("DELETE FROM history WHERE session_id=? AND action="
                       "(SELECT MAX(action) FROM history WHERE session_id=?)", (sid, sid))
        return [r[0] for r in rows]

    def can_undo(self, sid: str) -> bool:
        return not self.is_pending(self._check(sid)) and bool(
            self._q("SELECT 1 FROM history WHERE session_id=? LIMIT 1", (sid,)))

    def counts(self, sid: str) -> Counts:
        self._check(sid)
        (viewed, malign, unsure, total), = self._q(
            "SELECT SUM(viewed), SUM(viewed AND state=1), SUM(viewed AND state=2), COUNT(*) FROM items "
            "WHERE session_id=?", (sid,), sid)
        viewed, malign, unsure = viewed or 0, malign or 0, unsure or 0
        return Counts(viewed, malign, viewed - malign - unsure, unsure, total)

    def training_data(self, sid: str) -> tuple[np.ndarray, np.ndarray]:
        """Viewed, not-unsure images with labels 1 = benign, 0 = malign (the reward's convention)."""
        self._check(sid)
        rows = self._q("SELECT image, height, width, state FROM items WHERE session_id=? AND viewed=1 AND state!=2 "
                       "ORDER BY item", (sid,), sid)
        if not rows:
            return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
        return (np.stack([decode(b, h, w) for b, h, w, _ in rows]),
                np.array([1 if s == BENIGN else 0 for *_, s in rows]))
