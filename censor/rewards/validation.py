"""How well a reward trained on a person's labels calls labels it has not seen: the studio's
"held-out balanced accuracy" after training (a quick check, not a benchmark)."""

from __future__ import annotations

import numpy as np
import torch

from censor.core.data import to_model_range
from censor.rewards.training import train_reward

MIN_LABELS, MIN_PER_CLASS = 30, 5  # below these a 20% split holds too few of a class to mean anything


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """The mean of the per-class hit rates over the classes present. With ~10% malign, plain accuracy
    rewards calling everything benign (and α < 1 deliberately leans the other way)."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    hit = predicted == labels
    return float(np.mean([hit[labels == c].mean() for c in (0, 1) if (labels == c).any()]))


def class_hits(predicted: np.ndarray, labels: np.ndarray) -> dict:
    """Hits and counts per class (label 0 malign, 1 benign): what an interval on the balanced
    accuracy needs, which a bare float hides."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    hit = predicted == labels
    return dict(malign_hits=int(hit[labels == 0].sum()), malign_n=int((labels == 0).sum()),
                benign_hits=int(hit[labels == 1].sum()), benign_n=int((labels == 1).sum()))


def held_out_check(images: np.ndarray, labels: np.ndarray, *, kind: str, diffusion, iterations: int,
                   alpha: float) -> dict | None:
    """One quick single-member reward of ``kind`` on 80% of the labels (half the iterations, at least
    10), judged on the other 20% (P(benign) > 0.5 = benign, label 1): its balanced ``accuracy`` and the
    per-class hits and counts (``class_hits``). None with fewer than 30 labels or 5 of a class, or a
    training split that lacks a class."""
    if len(labels) < MIN_LABELS or min((labels == 0).sum(), (labels == 1).sum()) < MIN_PER_CLASS:
        return None
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[: len(order) // 5], order[len(order) // 5:]
    if len(np.unique(labels[train])) < 2:
        return None
    r = train_reward(images[train], labels[train], kind=kind, diffusion=diffusion, members=1, alpha=alpha,
                     iterations=max(10, iterations // 2))
    x = to_model_range(images[test])
    t = torch.zeros(len(x), dtype=torch.long) if r.time_dependent else None
    predicted = (r.benign_prob(x, t).numpy() > 0.5).astype(int)
    return dict(accuracy=balanced_accuracy(predicted, labels[test]), **class_hits(predicted, labels[test]))


def held_out_accuracy(images: np.ndarray, labels: np.ndarray, *, kind: str, diffusion, iterations: int,
                      alpha: float) -> float | None:
    """``held_out_check``'s balanced accuracy alone (None where it is None)."""
    check = held_out_check(images, labels, kind=kind, diffusion=diffusion, iterations=iterations, alpha=alpha)
    return None if check is None else check["accuracy"]
