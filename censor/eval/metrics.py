"""Judging galleries with the oracle: malign fractions, k-NN precision/recall, FID, model quality.

Censoring features are data (``features.json``): a feature is either ``watermark`` (malign when
the oracle sees the stamp) or ``classes`` (malign when the oracle's class is in a list). Add a
feature by adding an entry; no code changes."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from censor.core.errors import CensorError
from censor.eval.features import is_malign
from censor.eval.oracle import Judgement, Oracle


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion k/n (sane at k = 0, unlike the normal one)."""
    if n <= 0:
        raise CensorError("a proportion needs at least one image")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class MalignRate:
    feature: str
    malign: int
    n: int
    fraction: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.feature}: {100 * self.fraction:.2f}% malign [{100 * self.low:.2f}, {100 * self.high:.2f}] (n={self.n})"


def malign_fraction(judgement: Judgement, feature: str) -> MalignRate:
    bad = is_malign(judgement, feature)
    k, n = int(bad.sum()), int(len(bad))
    lo, hi = wilson_interval(k, n)
    return MalignRate(feature, k, n, k / n, lo, hi)


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour within its own set (self excluded)."""
    radii = np.empty(len(x))
    for i in range(0, len(x), 1024):
        d = _pairwise_sq(x[i:i + 1024], x)
        radii[i:i + 1024] = np.sqrt(np.partition(d, k, axis=1)[:, k])  # column 0 is the point itself
    return radii


def _covered(queries: np.ndarray, support: np.ndarray, radii: np.ndarray) -> np.ndarray:
    hit = np.zeros(len(queries), dtype=bool)
    for i in range(0, len(queries), 1024):
        d = np.sqrt(_pairwise_sq(queries[i:i + 1024], support))
        hit[i:i + 1024] = (d <= radii[None, :]).any(1)
    return hit


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) in a feature space.

    Precision: share of fake points inside the k-NN balls of the real set (quality).
    Recall: share of real points inside the k-NN balls of the fake set (coverage / diversity).
    """
    if len(real) <= k or len(fake) <= k:
        raise CensorError(f"k-NN precision/recall with k={k} needs more than {k} images in each set")
    precision = _covered(fake, real, _knn_radii(real, k)).mean()
    recall = _covered(real, fake, _knn_radii(fake, k)).mean()
    return float(precision), float(recall)


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrtm_psd(s_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


def quality_report(oracle: Oracle, images, reference_features: np.ndarray | None = None) -> dict:
    """What the foundation issue's quality bar asks about a batch of generated images."""
    j = oracle.judge(images)
    n = len(j.classes)
    shares = np.bincount(j.classes, minlength=j.class_probs.shape[1]) / n
    wm = int(j.watermarked.sum())
    report = dict(
        n=n,
        class_shares=[round(float(s), 4) for s in shares],
        watermark_rate=wm / n,
        watermark_interval=wilson_interval(wm, n),
        confident_fraction=float(j.confident.mean()),
    )
    if reference_features is not None:
        report["fid_vs_test"] = frechet_distance(j.features, reference_features)
        report["precision_vs_test"], report["recall_vs_test"] = knn_precision_recall(reference_features, j.features)
    return report


def as_dict(rate: MalignRate) -> dict:
    return asdict(rate)


NUM_CLASSES = 10


def class_histogram(judgement: Judgement, keep: np.ndarray | None = None) -> np.ndarray:
    """Share of each oracle class among the (kept) images; all zeros when nothing is kept."""
    classes = judgement.classes if keep is None else judgement.classes[keep]
    counts = np.bincount(classes, minlength=NUM_CLASSES).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation ½·Σ|p − q| between two histograms (0: identical, 1: disjoint)."""
    return 0.5 * float(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def benign_histogram(judgement: Judgement, feature: str) -> np.ndarray:
    """The class histogram of a gallery's benign images, renormalised: what a perfect censor of it gives."""
    return class_histogram(judgement, ~is_malign(judgement, feature))


def benign_tv(reference_judgement: Judgement, censored: Judgement, feature: str) -> float:
    """tv between the censored gallery's class histogram and the reference's benign histogram."""
    return tv_distance(class_histogram(censored), benign_histogram(reference_judgement, feature))


def tv_floor(baseline: Judgement, second: Judgement, feature: str) -> float:
    """The sampling floor of ``benign_tv``: two unguided galleries from disjoint seeds, both
    restricted to their benign images (an ideal censor of one against the other's target)."""
    return tv_distance(benign_histogram(second, feature), benign_histogram(baseline, feature))


def per_class_recall(real: np.ndarray, real_classes: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[int, float]:
    """k-NN recall of each real class separately: which kinds of image a gallery stopped covering."""
    radii = _knn_radii(fake, k)
    return {int(c): float(_covered(real[real_classes == c], fake, radii).mean())
            for c in np.unique(real_classes)}


def pooled_rate(malign: int, n: int) -> dict:
    """Malign % with its Wilson interval, as every bench JSON stores it."""
    lo, hi = wilson_interval(malign, n)
    return dict(malign=int(malign), n=int(n), malign_pct=100 * malign / n, ci_pct=[100 * lo, 100 * hi])

