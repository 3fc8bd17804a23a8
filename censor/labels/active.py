"""Informative-first labelling in a studio session: the pool's order for one session, kept on disk
and re-ranked as labels arrive (the ranking itself is ``labels.ranking``)."""


from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from censor.core.errors import CensorError
from censor.labels.ranking import ActiveWeights, EncoderFeatures, member_probs, rank
from censor.rewards.ensemble import load_reward

ORDER_FILE = "label_order.json"


class SessionRanker:
    """Page order of a labelling session when "show most informative first" is on.

    The order is a *frozen prefix* (every image already put on a page, so pages a person has seen
    stay where they were) followed by the unfrozen images ranked afresh (newest labelling round
    first, then ``rank`` with every viewed image as labelled and the session's reward, if any).
    Turning to page p freezes the order up to the end of p. The flag and the prefix live in the
    session folder (``label_order.json``), so a reload or restart keeps them; encoder features are
    cached per session and recomputed only when images are added.
    """

    def __init__(self, weights: ActiveWeights = ActiveWeights(), candidates: int | None = None,
                 reference: int | None = None, cache_sessions: int = 8):
        # candidates: unfrozen images ranked per call (the greedy coverage step is cubic in them), the
        # rest follow unranked until a later call; reference: labelled images coverage is measured
        # against (a seeded sample beyond it). Both bound one call's cost whatever the session holds.
        self.weights = weights
        self.candidates, self.reference, self.cache_sessions = candidates, reference, cache_sessions
        self._lock = threading.Lock()  # guards only the dicts below, never a ranking
        self._session_locks: dict[str, threading.Lock] = {}  # one session's ranking never waits for another's
        self._features: OrderedDict[str, tuple] = OrderedDict()  # sid -> ((item ids), EncoderFeatures), LRU
        self._rewards: OrderedDict[str, tuple] = OrderedDict()  # sid -> ((mtime, size), RewardEnsemble), LRU

    def _session_lock(self, sid: str) -> threading.Lock:
        with self._lock:
            return self._session_locks.setdefault(sid, threading.Lock())

    def _cached(self, cache: OrderedDict, sid: str, key, make):
        """``make()`` cached per session under ``key``; the least recently used session is evicted."""
        with self._lock:
            hit = cache.get(sid)
            if hit is not None:
                cache.move_to_end(sid)
        if hit is None or hit[0] != key:
            hit = (key, make())
            with self._lock:
                cache[sid] = hit
                cache.move_to_end(sid)
                while len(cache) > self.cache_sessions:
                    cache.popitem(last=False)
        return hit[1]

    def _sample(self, idx: np.ndarray, n: int | None, seed: int) -> np.ndarray:
        """At most ``n`` of ``idx`` (a seeded, sorted sample), all of them when ``n`` is None."""
        idx = np.asarray(idx, np.int64)
        if n is None or len(idx) <= n:
            return idx
        return np.sort(np.random.default_rng(seed).choice(idx, n, replace=False))

    # persisted state
    @staticmethod
    def _read(folder) -> dict:
        path = Path(folder) / ORDER_FILE
        try:
            state = json.loads(path.read_text())
            if isinstance(state, dict) and isinstance(state.get("frozen"), (list, type(None))):
                return state
        except (OSError, ValueError):
            pass
        return {"informative": False, "frozen": None}

    @staticmethod
    def _write(folder, state: dict) -> None:
        path = Path(folder) / ORDER_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def enabled(self, folder) -> bool:
        return bool(self._read(folder).get("informative"))

    def set_enabled(self, folder, on: bool) -> None:
        with self._session_lock(Path(folder).name):
            state = self._read(folder)
            state["informative"] = bool(on)
            self._write(folder, state)

    # features and reward, cached
    def _session_features(self, model, sid: str, ids: list[int], images: np.ndarray) -> EncoderFeatures:
        return self._cached(self._features, sid, tuple(ids), lambda: EncoderFeatures(model, images))

    def _reward(self, model, sid: str, reward_dir):
        path = Path(reward_dir) / "reward.safetensors"
        if not path.is_file() or not (Path(reward_dir) / "reward.json").is_file():
            return None
        st = path.stat()

        def load():
            try:
                return load_reward(reward_dir, model)
            except CensorError:
                return None  # a reward for another model: rank by coverage alone
        return self._cached(self._rewards, sid, (st.st_mtime_ns, st.st_size), load)

    def _probs(self, reward, features: EncoderFeatures, images: np.ndarray):
        if reward is None:
            return None
        return member_probs(reward, features=features, images=images)

    def order(self, model, store, sid: str, reward_dir, upto: int = 0, seed: int = 0) -> list[int]:
        """Every item id of the session exactly once, most informative unviewed first after the frozen
        prefix; the first ``upto`` positions are frozen (and saved) before returning."""
        items = store.items(sid, limit=1_000_000)
        ids = [it["item"] for it in items]
        with self._session_lock(sid):
            folder = store.folder(sid)
            state = self._read(folder)
            known = set(ids)
            frozen = state.get("frozen")
            if frozen is None:  # first use (or an old session): what was already viewed keeps its place
                frozen = [it["item"] for it in items if it["viewed"]]
            frozen = [i for i in dict.fromkeys(frozen) if i in known]
            in_frozen = set(frozen)
            # viewed while the toggle was off: labelled already, so it joins the prefix
            frozen += [it["item"] for it in items if it["viewed"] and it["item"] not in in_frozen]
            in_frozen = set(frozen)
            rest = [k for k, it in enumerate(items) if it["item"] not in in_frozen]
            tail: list[int] = []
            if rest:
                tail = self._rank_rest(model, sid, reward_dir, items, ids, rest, seed)
            full = frozen + tail
            if upto > len(frozen):
                frozen = full[: upto]
            state["frozen"] = frozen
            self._write(folder, state)
            return full

    def _rank_rest(self, model, sid, reward_dir, items, ids, rest, seed) -> list[int]:
        """The unfrozen items, newest round first: at most ``candidates`` ranked against at most
        ``reference`` labelled ones, then the others in item order (ranked by a later call)."""
        images = np.stack([it["image"] for it in items])
        features = self._session_features(model, sid, ids, images)
        probs = self._probs(self._reward(model, sid, reward_dir), features, images)
        viewed = self._sample(np.where([it["viewed"] for it in items])[0], self.reference, seed)
        budget = len(rest) if self.candidates is None else self.candidates
        ranked: list[int] = []
        later: list[int] = []
        for rnd in sorted({items[k]["round"] for k in rest}, reverse=True):  # newest round first
            this = self._sample([k for k in rest if items[k]["round"] == rnd], budget, seed + rnd)
            picked = set(this.tolist())
            later += [ids[k] for k in rest if items[k]["round"] == rnd and k not in picked]
            if not len(this):
                continue
            budget -= len(this)
            # this round's candidates ranked against the viewed (labelled) ones
            sub = np.concatenate([this, viewed[~np.isin(viewed, this)]])
            lab = np.arange(len(sub)) >= len(this)
            order = rank(features.embedding[sub], lab, None if probs is None else probs[:, sub],
                         self.weights, seed=seed)
            ranked += [ids[sub[i]] for i in order]
        return ranked + later

    def rank_gallery(self, model, viewed_images: np.ndarray, gallery: np.ndarray, reward_dir, sid: str,
                     seed: int = 0) -> np.ndarray:
        """The order to show a censored gallery sent back for labelling: most informative first."""
        viewed_images = np.asarray(viewed_images, np.uint8).reshape(-1, *gallery.shape[1:])
        viewed_images = viewed_images[self._sample(np.arange(len(viewed_images)), self.reference, seed)]
        both = np.concatenate([viewed_images, gallery])
        features = EncoderFeatures(model, both)
        probs = self._probs(self._reward(model, sid, reward_dir), features, both)
        seen = np.arange(len(both)) < len(both) - len(gallery)
        return rank(features.embedding, seen, probs, self.weights, seed=seed) - (len(both) - len(gallery))
