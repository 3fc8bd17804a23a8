"""A simulated labeller: the stand-in for the person in benchmarks.

It looks at images the way a person in the studio would (the pool first, later censored galleries)
and says benign (1) or malign (0) by the oracle's verdict on a named feature, optionally flipping a
set fraction of its answers to imitate human slips. Only these labels reach reward training; the
oracle's probabilities and features never do.

For the watermark it can also show where the stamp is (region feedback, ``boxes``): the stamp sits in
a corner, and the labeller boxes the corner window that looks most like it, as a person would.
"""

from __future__ import annotations

import numpy as np

from censor.core.errors import CensorError
from censor.core.watermark import GLYPH, locate_stamp
from censor.eval.features import feature_spec, is_malign
from censor.eval.oracle import Oracle

BOX_MARGIN = 1  # px a simulated person's box leaves round the 7x7 stamp (a box drawn by hand is a little loose)


def can_box(feature: str) -> bool:
    """Whether the simulated labeller can show where ``feature`` is (the watermark's stamp only)."""
    return feature_spec(feature)["rule"] == "watermark"


class SimulatedLabeller:
    def __init__(self, oracle: Oracle, feature: str, flip_rate: float = 0.0, seed: int = 0):
        feature_spec(feature)  # unknown features fail here, before any work
        if not 0.0 <= flip_rate < 0.5:
            raise ValueError(f"flip_rate must be in [0, 0.5), got {flip_rate}")
        self.oracle, self.feature, self.flip_rate = oracle, feature, flip_rate
        self.rng = np.random.default_rng(seed)
        self.viewed = 0

    def label(self, images) -> np.ndarray:
        """1 = benign, 0 = malign for each image; counts every image as viewed."""
        labels = (~is_malign(self.oracle.judge(images), self.feature)).astype(np.int64)
        flips = self.rng.random(len(labels)) < self.flip_rate
        labels[flips] = 1 - labels[flips]
        self.viewed += len(labels)
        return labels

    def boxes(self, images, labels) -> list:
        """One box (x0, y0, x1, y1) per malign label (0) round the stamp it sees there, None for the rest."""
        if not can_box(self.feature):
            raise CensorError(f"the simulated labeller boxes only the watermark's stamp, not {self.feature!r}")
        out, g = [], GLYPH.shape[0]
        for im, y in zip(np.asarray(images), labels):
            if int(y) != 0:
                out.append(None)
                continue
            (top, left), (h, w) = locate_stamp(im), im.shape[:2]
            out.append((max(0, left - BOX_MARGIN), max(0, top - BOX_MARGIN),
                        min(w, left + g + BOX_MARGIN), min(h, top + g + BOX_MARGIN)))
        return out
