"""Judging galleries with the oracle: malign fractions, k-NN precision/recall, FID, model quality.

Censoring features are data (``features.json``): a feature is either ``watermark`` (malign when
the oracle sees the stamp) or ``classes`` (malign when the oracle's class is in a list). Add a
feature by adding an entry; no code changes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import CensorError
from .oracle import Judgement, Oracle

FEATURES_FILE = Path(__file__).resolve().parent / "features.json"


def load_features(path: str | Path = FEATURES_FILE) -> dict[str, dict]:
    features = json.loads(Path(path).read_text())
    for name, spec in features.items():
        if spec.get("rule") not in ("watermark", "classes"):
            raise CensorError(f"feature {name!r} in {path}: rule must be 'watermark' or 'classes'")
        if spec["rule"] == "classes" and not spec.get("malign_classes"):
            raise CensorError(f"feature {name!r} in {path}: 'classes' rule needs malign_classes")
    return features


def feature_spec(name: str) -> dict:
    features = load_features()
    if name not in features:
        raise CensorError(f"unknown feature {name!r}; known: {', '.join(sorted(features))}")
    return features[name]


def is_malign(judgement: Judgement, feature: str) -> np.ndarray:
    """Boolean [N]: the oracle's verdict that each image shows the censored feature."""
    spec = feature_spec(feature)
    if spec["rule"] == "watermark":
        return judgement.watermarked
    return np.isin(judgement.classes, spec["malign_classes"])


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
