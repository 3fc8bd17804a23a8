"""The label half of the session store: items, marks, the undo history of marks, counts and the
training set. Mixed into ``SessionStore``, which owns the connections (``_q``, ``_tx``, ``_conn``),
the session checks (``_check``) and putting a pending session on disk (``keep``).

A mark (one click, a whole page at once, or a box drawn on an image) is one *action*: the states it
replaced are kept in the ``history`` table, so ``undo`` puts back exactly what the last action changed,
viewed flags and boxes included. A box (``censor.core.regions``) belongs to a malign image: drawing one
marks the image malign, and any mark that makes an image something else drops its box.
"""

from __future__ import annotations

import time

import numpy as np

from censor.core.errors import CensorError
from censor.core.regions import Box, check_box
from censor.labels.schema import BOX_SQL, Counts, box_of, decode

BENIGN, MALIGN, UNSURE = 0, 1, 2
STATE_NAMES = {BENIGN: "benign", MALIGN: "malign", UNSURE: "unsure"}
UNDO_DEPTH = 200  # actions kept per session; older ones can no longer be undone
_TRAINED = "WHERE session_id=? AND viewed=1 AND state!=2 ORDER BY item"  # the labels a reward trains on
_KEEP = object()  # set_states: leave each image's box as it is


class Marks:
    """Items and their labels (see the module docstring for what the host class provides)."""

    def items(self, sid: str, offset: int = 0, limit: int = 1000, round_: int | None = None,
              item: int | None = None) -> list[dict]:
        """Items in order, each with its image, label state, viewed flag and box (None: none); a labelling
        round's only, or one ``item``'s."""
        self._check(sid)
        where, args = ("AND round=?", (round_,)) if round_ is not None else ("", ())
        if item is not None:
            where, args = where + " AND item=?", (*args, int(item))
        rows = self._q(f"SELECT item, round, seed, image, height, width, state, viewed, {BOX_SQL} FROM items "
                       f"WHERE session_id=? {where} ORDER BY item LIMIT ? OFFSET ?", (sid, *args, int(limit), int(offset)),
                       sid)
        return [dict(item=i, round=r, seed=s, image=decode(b, h, w), state=st, viewed=bool(v), box=box_of(box))
                for i, r, s, b, h, w, st, v, *box in rows]

    def item(self, sid: str, item: int) -> dict:
        """One item (as ``items`` gives it), or a CensorError when the session has no such image."""
        found = self.items(sid, item=item, limit=1)
        if not found:
            raise CensorError(f"no image {item} in this session")
        return found[0]

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
        self._act(sid, items, state, _KEEP if state == MALIGN else None)
        return [state] * len(items)

    def set_box(self, sid: str, item: int, box: Box | None) -> Box | None:
        """Show where image ``item`` is malign (it becomes malign if it was not), or ``None``: take its box
        away (the image stays malign; nothing happens to an image without one). One undoable action;
        returns the box as stored."""
        it = self.item(sid, item)
        if box is None and it["box"] is None:
            return None
        box = None if box is None else check_box(box, *it["image"].shape[:2])
        self._act(sid, [int(item)], MALIGN, box)
        return box

    def _act(self, sid: str, items: list[int], state: int, box) -> None:
        """One action: ``items`` get ``state`` and ``box`` (``_KEEP``: each keeps its own), with what they
        had kept in ``history`` for ``undo``."""
        self._check(sid)
        if not items:
            return
        marks = "?" + ",?" * (len(items) - 1)
        old = self._q(f"SELECT item, state, viewed, {BOX_SQL} FROM items WHERE session_id=? AND item IN ({marks})",
                      (sid, *items), sid)
        if len(old) != len(set(items)):
            missing = sorted(set(items) - {r[0] for r in old})
            raise CensorError(f"no image {missing[0]} in this session")
        self.keep(sid)  # the first label puts a pending session on disk
        now = time.time()
        with self._tx(self._db) as db:
            (action,), = db.execute("SELECT COALESCE(MAX(action) + 1, 0) FROM history WHERE session_id=?",
                                    (sid,)).fetchall()
            db.executemany(f"INSERT INTO history (session_id, action, item, state, viewed, {BOX_SQL}) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [(sid, action, *r) for r in old])
            db.execute("DELETE FROM history WHERE session_id=? AND action<=?", (sid, action - UNDO_DEPTH))
            boxes = {r[0]: tuple(r[3:]) if box is _KEEP else (box or (None,) * 4) for r in old}
            db.executemany("UPDATE items SET state=?, viewed=1, updated=?, box_x0=?, box_y0=?, box_x1=?, box_y1=? "
                           "WHERE session_id=? AND item=?", [(state, now, *boxes[i], sid, i) for i in items])
            db.execute("UPDATE sessions SET touched=? WHERE id=?", (now, sid))

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
            rows = db.execute(f"SELECT item, state, viewed, {BOX_SQL} FROM history WHERE session_id=? AND action="
                              "(SELECT MAX(action) FROM history WHERE session_id=?)", (sid, sid)).fetchall()
            db.executemany("UPDATE items SET state=?, viewed=?, updated=?, box_x0=?, box_y0=?, box_x1=?, box_y1=? "
                           "WHERE session_id=? AND item=?", [(st, v, time.time(), *box, sid, i) for i, st, v, *box in rows])
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
        rows = self._q(f"SELECT image, height, width, state FROM items {_TRAINED}", (sid,), sid)
        if not rows:
            return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
        return (np.stack([decode(b, h, w) for b, h, w, _ in rows]),
                np.array([1 if s == BENIGN else 0 for *_, s in rows]))

    def training_boxes(self, sid: str) -> list[Box | None]:
        """The box of each of ``training_data``'s images, in its order (None: no box)."""
        return [box_of(r) for r in self._q(f"SELECT {BOX_SQL} FROM items {_TRAINED}", (self._check(sid),), sid)]
