"""What the studio's buttons call: ``Studio``, one running app, composed of one part per tab.

No UI code here and no method logic: the shared model, pool, oracle and session store are
``resources.Resources``; each tab's calls live in its own module (labelling, training, galleries,
sharing; the RLHF tab's in rlhf.py), and those call the library. ``Studio`` keeps the one API that
app.py, the session timing and the tests use, forwarding each call to its tab.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from censor.diffusion.models import DiffusionModel
from censor.studio import training
from censor.studio.common import (
    LIMITS,
    MAX_GALLERY,
    MAX_TRAIN_LABELS,
    PAGE_SIZE,
    POOL_PER_SESSION,
    check_range,
    conditioning_info,
    display,
    png_data_uri,
    reported,
)
from censor.studio.galleries import Galleries
from censor.studio.labelling import Labelling
from censor.studio.manifest import check_guidance_extras, guidance_from_settings, guidance_settings_dict
from censor.studio.resources import DEFAULT_DATA_DIR, Resources
from censor.studio.sharing import Sharing

__all__ = ["Studio", "LIMITS", "MAX_GALLERY", "MAX_TRAIN_LABELS", "PAGE_SIZE", "POOL_PER_SESSION",
           "DEFAULT_DATA_DIR", "check_range", "conditioning_info", "display", "png_data_uri", "reported",
           "check_guidance_extras", "guidance_from_settings", "guidance_settings_dict"]


class Studio(Resources):
    """One running app: the model, the labelling pool and every person's session store
    (``Resources``), and the calls of each tab."""

    def __init__(self, model_dir: str | Path | None = None, model: DiffusionModel | None = None,
                 data_dir: str | Path | None = None, pool=None, model_options: dict | None = None,
                 pool_dir: str | Path | None = None):
        super().__init__(model_dir, model, data_dir, pool, model_options, pool_dir)
        self.labelling = Labelling(self)
        self.galleries = Galleries(self)
        self.sharing = Sharing(self)
        self._warm, self._warm_lock = None, threading.Lock()

    # ---- Label tab ---------------------------------------------------------------------------
    def open_session(self, sid: str | None, instructions: str = "") -> str:
        return self.labelling.open_session(sid, instructions)

    def page(self, sid: str, page: int, round_: int | None = None) -> list[dict]:
        return self.labelling.page(sid, page, round_)

    def click(self, sid: str, item: int) -> str:
        return self.labelling.click(sid, item)

    def set_box(self, sid: str, item: int, box=None, at=None):
        return self.labelling.set_box(sid, item, box, at)

    def mark_page(self, sid: str, page: int, how: str) -> int:
        return self.labelling.mark_page(sid, page, how)

    def undo(self, sid: str) -> int:
        return self.labelling.undo(sid)

    def counts_text(self, sid: str) -> str:
        return self.labelling.counts_text(sid)

    def suggest_method(self, sid: str) -> tuple[str, str]:
        return self.labelling.suggest_method(sid)

    def send_to_labelling(self, sid: str, images: np.ndarray, seeds) -> int:
        return self.labelling.send_to_labelling(sid, images, seeds)

    def informative_first(self, sid: str) -> bool:
        return self.labelling.informative_first(sid)

    def set_informative_first(self, sid: str, on: bool) -> None:
        self.labelling.set_informative_first(sid, on)

    def label_order(self, sid: str, upto: int = 0) -> list[int]:
        return self.labelling.label_order(sid, upto)

    def first_page_of_round(self, sid: str, round_: int) -> int:
        return self.labelling.first_page_of_round(sid, round_)

    @property
    def ranker(self):
        return self.labelling.ranker

    # ---- Train tab ---------------------------------------------------------------------------
    def train(self, sid: str, method: str, kind: str, members: int, iterations: int, alpha: float,
              progress: Callable[[float], None] | None = None) -> dict:
        return training.train(self, sid, method, kind, members, iterations, alpha, progress)

    # ---- Samples and Censored gallery tabs ---------------------------------------------------
    def fresh_gallery(self, n: int, steps: int, seed: int,
                      progress: Callable[[float], None] | None = None) -> list[Image.Image]:
        return self.galleries.fresh_gallery(n, steps, seed, progress)

    def censored_gallery(self, sid: str, guidance: str, weight: float, backward: int, recurrence: int,
                         steps: int, seed: int, count: int, feature: str | None = None,
                         progress: Callable[[float], None] | None = None,
                         tuned: tuple[str, DiffusionModel] | None = None, strict: bool = False,
                         strict_p: float | None = None, auto: bool = False, strict_mode: str = "auto") -> dict:
        return self.galleries.censored_gallery(sid, guidance, weight, backward, recurrence, steps, seed, count,
                                               feature, progress, tuned, strict, strict_p, auto, strict_mode)

    def cost_text(self, sid: str, guidance: str, backward: int, recurrence: int, steps: int, strict: bool,
                  strict_mode: str = "auto") -> str:
        return self.galleries.cost_text(sid, guidance, backward, recurrence, steps, strict, strict_mode)

    def warm_up(self, wait: bool = False) -> None:
        """Start (once per studio) ``Galleries.warm_up`` in a background thread at low priority;
        ``wait`` joins it. The app calls it when the first page has been shown."""
        with self._warm_lock:
            if self._warm is None:
                self._warm = threading.Thread(target=_quietly, args=(self.galleries.warm_up,), daemon=True,
                                              name="studio-warm-up")
                self._warm.start()
        if wait:
            self._warm.join()

    @property
    def drift_meter(self):
        return self.galleries.drift_meter

    # ---- Share tab ---------------------------------------------------------------------------
    def export_gallery(self, sid: str, result: dict) -> tuple[Path, Path]:
        return self.sharing.export_gallery(sid, result)

    def import_gallery(self, path: str | Path, progress: Callable[[float], None] | None = None) -> dict:
        return self.sharing.import_gallery(path, progress)

    def reproduce(self, bundle: dict, progress: Callable[[float], None] | None = None) -> dict:
        return self.sharing.reproduce(bundle, progress)

    def open_permalink(self, token: str) -> dict:
        return self.sharing.open_permalink(token)

    def export_session(self, sid: str) -> Path:
        return self.sharing.export_session(sid)

    def import_session(self, path: str | Path) -> str:
        return self.sharing.import_session(path)


def _quietly(fn) -> None:
    """A background job at the lowest CPU priority (Linux: per thread), its failure logged, never raised:
    a warm-up only saves time, and a person's own job must win the CPU."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
    try:
        fn()
    except Exception:
        logging.getLogger(__name__).exception("warm-up failed")
