"""Informative-first labelling in a studio session: the pool's order for one session, kept on disk
and re-ranked as labels arrive (the ranking itself is ``labels.ranking``)."""


from __future__ import annotations

import json
import os
import threading
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

    def __init__(self, weights: ActiveWeights = ActiveWeights()):
        self.weights = weights
        self._lock = threading.Lock()
        self._features: dict[str, tuple] = {}  # sid -> ((item ids), EncoderFeatures)
        self._rewards: dict[str, tuple] = {}  # sid -> ((mtime, size), RewardEnsemble)

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
        with self._lock:
            state = self._read(folder)
            state["informative"] = bool(on)
            self._write(folder, state)

    # features and reward, cached
    def _session_features(self, model, sid: str, ids: list[int], images: np.ndarray) -> EncoderFeatures:
        key = tuple(ids)
        hit = self._features.get(sid)
        if hit is None or hit[0] != key:
            hit = (key, EncoderFeatures(model, images))
            self._features[sid] = hit
        return hit[1]

    def _reward(self, model, sid: str, reward_dir):

        path = Path(reward_dir) / "reward.safetensors"
        if not path.is_file() or not (Path(reward_dir) / "reward.json").is_file():
            return None
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        hit = self._rewards.get(sid)
        if hit is None or hit[0] != key:
            try:
                hit = (key, load_reward(reward_dir, model))
            except CensorError:
                hit = (key, None)  # a reward for another model: rank by coverage alone
            self._rewards[sid] = hit
        return hit[1]

    def _probs(self, reward, features: EncoderFeatures, images: np.ndarray):
        if reward is None:
            return None
        return member_probs(reward, features=features, images=images)

    def order(self, model, store, sid: str, reward_dir, upto: int = 0, seed: int = 0) -> list[int]:
        """Every item id of the session exactly once, most informative unviewed first after the frozen
        prefix; the first ``upto`` positions are frozen (and saved) before returning."""
        items = store.items(sid, limit=1_000_000)
        ids = [it["item"] for it in items]
        with self._lock:
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
                images = np.stack([it["image"] for it in items])
                features = self._session_features(model, sid, ids, images)
                probs = self._probs(self._reward(model, sid, reward_dir), features, images)
                viewed = np.array([it["viewed"] for it in items], bool)
                for rnd in sorted({items[k]["round"] for k in rest}, reverse=True):  # newest round first
                    others = np.ones(len(items), bool)
                    others[[k for k in rest if items[k]["round"] == rnd]] = False
                    # this round's unfrozen images ranked against the viewed (labelled) ones
                    sub = np.where(~others | viewed)[0]
                    lab = viewed[sub]
                    order = rank(features.embedding[sub], lab, None if probs is None else probs[:, sub],
                                 self.weights, seed=seed)
                    tail += [ids[sub[i]] for i in order]
            full = frozen + tail
            if upto > len(frozen):
                frozen = full[: upto]
            state["frozen"] = frozen
            self._write(folder, state)
            return full

    def rank_gallery(self, model, viewed_images: np.ndarray, gallery: np.ndarray, reward_dir, sid: str,
                     seed: int = 0) -> np.ndarray:
        """The order to show a censored gallery sent back for labelling: most informative first."""
        both = np.concatenate([np.asarray(viewed_images, np.uint8).reshape(-1, *gallery.shape[1:]), gallery])
        features = EncoderFeatures(model, both)
        probs = self._probs(self._reward(model, sid, reward_dir), features, both)
        seen = np.arange(len(both)) < len(both) - len(gallery)
        return rank(features.embedding, seen, probs, self.weights, seed=seed) - (len(both) - len(gallery))
