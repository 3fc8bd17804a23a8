"""A simulated labeller: the stand-in for the person in benchmarks.

It looks at images the way a person in the studio would (the pool first, later censored galleries)
and says benign (1) or malign (0) by the oracle's verdict on a named feature, optionally flipping a
set fraction of its answers to imitate human slips. Only these labels reach reward training; the
oracle's probabilities and features never do.
"""

from __future__ import annotations

import numpy as np

from censor.eval.features import feature_spec, is_malign
from censor.eval.oracle import Oracle


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
