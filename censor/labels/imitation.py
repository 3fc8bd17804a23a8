"""Labelling rounds of a simulated (or real) session: the first view of the pool, then imitation rounds.

An imitation round shows the labeller a gallery censored by the current reward and retrains,
resuming from it, on everything labelled so far: malign-dominant features need it, because the
pool alone holds too few benign examples of what censoring will produce. The benchmarks (``bench``,
``bench-reject``, ``bench-active``) and the studio run the round from here, so its seeds and its
order (sample, pick, label, retrain) are the same wherever it is measured.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from censor.core.data import to_uint8
from censor.sampling.guidance import Guidance
from censor.sampling.loop import sample, seeds_for

IMITATION_SEED = 20_000  # round galleries: disjoint from the pool (1), the bench galleries (10_000) and floors (40_000)


def pool_view(pool_size: int, budget: int, seed: int) -> np.ndarray:
    """Which pool images a session of labelling seed ``seed`` views first: ``budget`` of them, at random."""
    return np.random.default_rng(seed).choice(pool_size, size=min(budget, pool_size), replace=False)


def round_seeds(count: int, session_seed: int, round_: int) -> list[int]:
    """The gallery seeds of imitation round ``round_`` of labelling seed ``session_seed``: every
    (seed, round) pair draws its own noises, so no round relabels another's images."""
    return seeds_for(count, IMITATION_SEED + 100 * session_seed + round_)


def round_gallery(model, guidance: Guidance, count: int, session_seed: int, round_: int, steps: int) -> np.ndarray:
    """The censored gallery an imitation round shows: ``count`` uint8 images guided by the current reward."""
    return to_uint8(sample(model, round_seeds(count, session_seed, round_), steps=steps, guidance=guidance))


def imitation_round(model, labeller, reward, guidance: Guidance, images: np.ndarray, labels: np.ndarray, *,
                    count: int, session_seed: int, round_: int, steps: int,
                    train: Callable, pick: Callable[[np.ndarray], np.ndarray] | None = None):
    """One round: sample the censored gallery, ``pick`` what the labeller views (default: all of it),
    label it, and ``train(images, labels, resume=reward)`` on the grown set.

    Returns (images, labels, the retrained reward)."""
    gallery = round_gallery(model, guidance, count, session_seed, round_, steps)
    shown = gallery if pick is None else pick(gallery)
    images = np.concatenate([images, shown])
    labels = np.concatenate([labels, labeller.label(shown)])
    return images, labels, train(images, labels, resume=reward)
