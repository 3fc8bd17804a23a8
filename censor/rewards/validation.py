"""How well a reward trained on a person's labels calls labels it has not seen: the studio's
"held-out balanced accuracy" after training (a quick check, not a benchmark)."""

from __future__ import annotations

import numpy as np
import torch

from censor.core.data import to_model_range
from censor.core.progress import Progress
from censor.rewards.training import FeatureBank, train_reward, training_cost

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


def held_out_plan(labels: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The check's split (test, train) and iterations, or None when it would mean nothing: fewer than 30
    labels or 5 of a class, or a training split that lacks a class."""
    labels = np.asarray(labels)
    if len(labels) < MIN_LABELS or min((labels == 0).sum(), (labels == 1).sum()) < MIN_PER_CLASS:
        return None
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[: len(order) // 5], order[len(order) // 5:]
    if len(np.unique(labels[train])) < 2:
        return None
    return test, train, max(10, iterations // 2)


def held_out_cost(labels: np.ndarray, kind: str, iterations: int, encoded: bool = False) -> float:
    """What the check costs in ``training_cost``'s units (0 when it is skipped): sizes its part of a bar.
    ``encoded``: it trains on a bank already built (``held_out_check(..., bank=)``)."""
    plan = held_out_plan(labels, iterations)
    return 0.0 if plan is None else training_cost(len(plan[1]), 1, plan[2], kind, score_table=False, encoded=encoded)


def held_out_check(images: np.ndarray, labels: np.ndarray, *, kind: str, diffusion, iterations: int,
                   alpha: float, progress: Progress | None = None, bank: FeatureBank | None = None,
                   boxes: list | None = None) -> dict | None:
    """One quick single-member reward of ``kind`` on 80% of the labels (half the iterations, at least
    10), judged on the other 20% (P(benign) > 0.5 = benign, label 1): its balanced ``accuracy`` and the
    per-class hits and counts (``class_hits``); None when ``held_out_plan`` says the check would mean
    nothing. ``progress`` hears at every iteration. ``bank``: the final reward's feature bank of all
    ``images`` (``training.feature_bank``); the check trains on its training split's rows, so the
    encoder runs once per Train click, not twice. ``boxes`` (one per label) train with the split's labels."""
    plan = held_out_plan(labels, iterations)
    if plan is None:
        return None
    test, train, its = plan
    r = train_reward(images[train], labels[train], kind=kind, diffusion=diffusion, members=1, alpha=alpha,
                     iterations=its, progress=progress, score_table=False,
                     bank=None if bank is None else bank.subset(train),
                     boxes=None if boxes is None else [boxes[i] for i in train])
    x = to_model_range(images[test])
    t = torch.zeros(len(x), dtype=torch.long) if r.time_dependent else None
    predicted = (r.benign_prob(x, t).numpy() > 0.5).astype(int)
    return dict(accuracy=balanced_accuracy(predicted, labels[test]), **class_hits(predicted, labels[test]))


def held_out_accuracy(images: np.ndarray, labels: np.ndarray, *, kind: str, diffusion, iterations: int,
                      alpha: float, progress: Progress | None = None) -> float | None:
    """``held_out_check``'s balanced accuracy alone (None where it is None)."""
    check = held_out_check(images, labels, kind=kind, diffusion=diffusion, iterations=iterations, alpha=alpha,
                           progress=progress)
    return None if check is None else check["accuracy"]
