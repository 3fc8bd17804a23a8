"""The Label tab: sessions opened from the pool, pages of the label grid, clicks, boxes on malign
images (region feedback, ``censor.core.regions``), the method hint, and the "most informative first"
order (``censor.labels.active``)."""

from __future__ import annotations

import numpy as np

from censor.labels.active import SessionRanker
from censor.core.errors import CensorError
from censor.core.regions import box_at, next_preset
from censor.labels.sessions import BENIGN, MALIGN, STATE_NAMES, UNSURE
from censor.studio.common import (
    LABEL_TARGET,
    PAGE_SIZE,
    POOL_PER_SESSION,
    RANK_CANDIDATES,
    RANK_REFERENCE,
    RANKER_CACHE_SESSIONS,
    png_data_uri,
)
from censor.studio.resources import Resources


class Labelling:
    """What the Label tab calls, for every session of one studio."""

    def __init__(self, res: Resources):
        self.res = res
        self._ranker = None  # active labelling, made on first use

    @property
    def store(self):
        return self.res.store

    def open_session(self, sid: str | None, instructions: str = "") -> str:
        """Resume the browser's session if the store knows it, else start one from the pool. A new one
        is pending (in memory): a page view puts nothing on disk; the first label keeps it."""
        if sid and self.store.exists(sid):
            return sid
        sid = self.store.create(str(self.res.model_dir), instructions, pending=True)
        pool = self.res.pool
        take = np.random.default_rng().permutation(len(pool))[:POOL_PER_SESSION]
        self.store.add_items(sid, pool.images[take], pool.seeds[take], round_=1)
        return sid

    def _page_items(self, sid: str, page: int, round_: int | None = None) -> list[dict]:
        if round_ is None and self.informative_first(sid):
            ids = self.label_order(sid, upto=(page + 1) * PAGE_SIZE)[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
            by_id = {it["item"]: it for it in self.store.items(sid, limit=1_000_000)}
            return [by_id[i] for i in ids]
        return self.store.items(sid, offset=page * PAGE_SIZE, limit=PAGE_SIZE, round_=round_)

    def page(self, sid: str, page: int, round_: int | None = None) -> list[dict]:
        """One page of the label grid; showing it counts its images as viewed (benign unless marked)."""
        items = self._page_items(sid, page, round_)
        self.store.mark_viewed(sid, [it["item"] for it in items])
        return [dict(id=it["item"], src=png_data_uri(it["image"]), state=STATE_NAMES[it["state"]],
                     h=it["image"].shape[0], w=it["image"].shape[1], box=region_view(it["box"], *it["image"].shape[:2]))
                for it in items]

    def click(self, sid: str, item: int) -> str:
        return STATE_NAMES[self.store.cycle(sid, item)]

    def set_box(self, sid: str, item: int, box=None, at=None):
        """The grid's box gestures on image ``item``: ``box`` four pixel edges (a drag), ``"next"`` (the
        keyboard: the next preset position), ``"clear"`` (take it away); or ``at`` (x, y), a default-size
        box centred there (shift+click). A box marks the image malign; returns the box stored (or None)."""
        it = self.store.item(sid, item)
        h, w = it["image"].shape[:2]
        if at is not None:
            box = box_at(at, h, w, "a click on a box: ")
        elif box == "next":
            box = next_preset(it["box"], h, w)
        elif box == "clear":
            box = None
        return self.store.set_box(sid, int(item), box)

    def mark_page(self, sid: str, page: int, how: str) -> int:
        """A whole page at once, as one undoable action: ``malign`` marks every image on it; ``leave out``
        marks its unmarked images unsure, for a page that was shown but not really looked at (shown
        images otherwise count as benign). Returns how many images changed."""
        items = self._page_items(sid, page)
        if how == "malign":
            ids, state = [it["item"] for it in items if it["state"] != MALIGN], MALIGN
        elif how == "leave out":
            ids, state = [it["item"] for it in items if it["state"] == BENIGN], UNSURE
        else:
            raise CensorError("a page is marked 'malign' or 'leave out'")
        self.store.set_states(sid, ids, state)
        return len(ids)

    def undo(self, sid: str) -> int:
        """Undo the last mark (a click or a whole page); returns how many images it put back."""
        return len(self.store.undo(sid))

    def counts_text(self, sid: str) -> str:
        c = self.store.counts(sid)
        return (f"viewed {c.viewed} · malign {c.malign} · target {LABEL_TARGET} "
                f"(benign {c.benign} · unsure {c.unsure})")

    def suggest_method(self, sid: str) -> tuple[str, str]:
        """Benign-dominant -> ensemble, malign-dominant -> imitation (the paper's rule of thumb)."""
        c = self.store.counts(sid)
        judged = c.malign + c.benign
        if judged == 0:
            return "ensemble", "no labels yet"
        share = c.malign / judged
        method = "imitation" if share > 0.5 else "ensemble"
        return method, f"{100 * share:.0f}% of labelled images are malign → {method}"

    def send_to_labelling(self, sid: str, images: np.ndarray, seeds) -> int:
        """Imitation learning: a censored gallery becomes the next round to label (most informative
        first when the session shows the most informative first)."""
        next_round = 1 + max((it["round"] for it in self.store.items(sid, limit=100_000)), default=0)
        if self.informative_first(sid) and len(seeds):
            viewed, _ = self.store.training_data(sid)
            order = self.ranker.rank_gallery(self.res.model, viewed, np.asarray(images, np.uint8),
                                             self.res.reward_dir(sid), sid)
            images, seeds = np.asarray(images)[order], [seeds[i] for i in order]
        self.store.add_items(sid, images, seeds, round_=next_round)
        return next_round

    # ---- most informative first --------------------------------------------------------------
    @property
    def ranker(self) -> SessionRanker:
        if self._ranker is None:
            self._ranker = SessionRanker(candidates=RANK_CANDIDATES, reference=RANK_REFERENCE,
                                         cache_sessions=RANKER_CACHE_SESSIONS)
        return self._ranker

    def informative_first(self, sid: str) -> bool:
        return self.store.exists(sid) and self.ranker.enabled(self.store.folder(sid))

    def set_informative_first(self, sid: str, on: bool) -> None:
        """The Label tab's "show most informative first" toggle (kept in the session folder)."""
        self.ranker.set_enabled(self.res.session_folder(sid), on)  # unknown -> CensorError; keeps a pending one

    def label_order(self, sid: str, upto: int = 0) -> list[int]:
        """The Label grid's item order when showing the most informative first (every item once)."""
        return self.ranker.order(self.res.model, self.store, sid, self.res.reward_dir(sid), upto=upto)

    def first_page_of_round(self, sid: str, round_: int) -> int:
        """The grid page on which a labelling round's first image appears, in the current order."""
        items = self.store.items(sid, limit=1_000_000)
        in_round = {it["item"] for it in items if it["round"] == round_}
        order = self.label_order(sid) if self.informative_first(sid) else [it["item"] for it in items]
        first = next((k for k, i in enumerate(order) if i in in_round), 0)
        return first // PAGE_SIZE


def region_view(box, h: int, w: int) -> dict | None:
    """How the grid draws a box over its image: edges in percent of the image, and a text for its title."""
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return dict(left=round(100 * x0 / w, 3), top=round(100 * y0 / h, 3), width=round(100 * (x1 - x0) / w, 3),
                height=round(100 * (y1 - y0) / h, 3), text=f"box x {x0}-{x1}, y {y0}-{y1}")
