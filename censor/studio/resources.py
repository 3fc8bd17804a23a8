"""What every tab of one running studio shares, loaded on first use: the diffusion model, the
labelling pool, the oracle and the store of every person's sessions. Tabs (labelling, training,
galleries, sharing, the RLHF tab) get this object and use only its public surface."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

from censor.core.errors import CensorError, source_name
from censor.diffusion.models import EMBEDDED_MODEL_DIR, DiffusionModel
from censor.diffusion.sources import load_model
from censor.eval.oracle import load_oracle, load_reference
from censor.labels.pool import load_pool
from censor.labels.sessions import Quotas, SessionStore
from censor.rewards.ensemble import load_reward
from censor.studio.common import (
    MAX_PENDING_SESSIONS,
    MAX_ROUND,
    MAX_SESSION_BYTES,
    MAX_SESSION_ITEMS,
    MAX_TOTAL_BYTES,
    SESSION_IDLE_DAYS,
    SWEEP_EVERY_S,
)

DEFAULT_DATA_DIR = Path(os.environ.get("CENSOR_DATA_DIR", "studio_data"))


class Resources:
    """The model, pool, oracle and session store of one app, each made when first asked for."""

    def __init__(self, model_dir: str | Path | None = None, model: DiffusionModel | None = None,
                 data_dir: str | Path | None = None, pool=None, model_options: dict | None = None,
                 pool_dir: str | Path | None = None):
        # model_dir: our folder, a diffusers pipeline folder or a hub id (sources.load_model), with
        # model_options (prompt, class_label, guidance_scale, runtime) for conditional models
        self.model_dir = Path(model_dir) if model_dir else EMBEDDED_MODEL_DIR
        self.model_options = dict(model_options or {})
        self.pool_dir = Path(pool_dir) if pool_dir else None
        self._model = model
        self._pool = pool
        self._data_dir = Path(data_dir or DEFAULT_DATA_DIR)
        self._store = None
        self._oracle = None
        self._reference = None
        self._swept = 0.0  # when the last sweep ran (time.monotonic)
        self._sweep_lock = threading.Lock()

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def cache_dir(self) -> Path:
        """Where runs shared by every session (the comparison's reference galleries) are kept."""
        return self._data_dir / "cache"

    @property
    def store(self) -> SessionStore:
        if self._store is None:
            quotas = Quotas(max_items=MAX_SESSION_ITEMS, max_round=MAX_ROUND, session_bytes=MAX_SESSION_BYTES,
                            total_bytes=MAX_TOTAL_BYTES, max_pending=MAX_PENDING_SESSIONS)
            store = SessionStore(self._data_dir, quotas)
            self._sweep(store, temp_age_s=0.0)  # at start no import is in flight: every temp folder is stale
            self._store = store
        elif time.monotonic() - self._swept > SWEEP_EVERY_S:
            self._sweep(self._store, temp_age_s=SWEEP_EVERY_S)
        return self._store

    def _sweep(self, store: SessionStore, temp_age_s: float) -> None:
        """Expire idle sessions and imported galleries, and remove what interrupted imports left."""
        if not self._sweep_lock.acquire(blocking=False):
            return  # another thread is sweeping
        try:
            self._swept = time.monotonic()
            idle = SESSION_IDLE_DAYS * 86400
            store.sweep(idle_s=idle, temp_age_s=temp_age_s)
            bundles = self._data_dir / "bundles"
            for folder in bundles.iterdir() if bundles.is_dir() else ():
                if time.time() - folder.stat().st_mtime > idle:
                    shutil.rmtree(folder, ignore_errors=True)
        finally:
            self._sweep_lock.release()

    @property
    def model(self) -> DiffusionModel:
        if self._model is None:
            self._model = load_model(self.model_dir, **self.model_options)
        return self._model

    @property
    def pool(self):
        if self._pool is None:
            if self.pool_dir is None and self.model_dir == EMBEDDED_MODEL_DIR:
                self._pool = load_pool(model_dir=self.model_dir)
            elif self.pool_dir is None:
                raise CensorError(f"no sample pool for {source_name(self.model_dir)!r}: make one with python -m censor make-pool "
                                  "--model ... --out DIR and start the studio with CENSOR_POOL_DIR=DIR")
            else:  # a pool made for this model: checked against its weights (and prompt or class)
                self._pool = load_pool(self.pool_dir, model_dir=self.model_dir, model=self.model)
        return self._pool

    @property
    def oracle(self):
        if self._oracle is None:
            self._oracle = load_oracle()
        return self._oracle

    @property
    def reference(self) -> dict:
        """The oracle's features of the real test images (what the gallery judge's recall compares to)."""
        if self._reference is None:
            self._reference = load_reference()
        return self._reference

    def session_folder(self, sid: str) -> Path:
        """A session's own folder (its reward, shares, comparison runs), on disk from here on (a session
        that was only viewed so far is kept); an unknown id -> CensorError."""
        return self.store.folder(self.store.keep(sid))

    def reward_dir(self, sid: str) -> Path:
        return self.session_folder(sid) / "reward"

    def has_reward(self, sid: str) -> bool:
        return (self.store.folder(sid) / "reward" / "reward.json").exists()  # a read: keeps nothing

    def session_reward(self, sid: str):
        """The session's trained reward, checked against the loaded model."""
        return load_reward(self.reward_dir(sid), self.model)
