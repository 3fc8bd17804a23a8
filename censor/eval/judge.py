"""One judge for every benchmark: malign share with its interval, tv to the baseline's benign classes and its floor, recall, confident share."""

from __future__ import annotations

import numpy as np

from censor.eval.features import is_malign, real_benign
from censor.eval.metrics import (
    benign_histogram,
    benign_tv,
    class_histogram,
    knn_precision_recall,
    malign_fraction,
    per_class_recall,
    pooled_rate,
    tv_distance,
    tv_floor,
)
from censor.eval.oracle import Judgement, Oracle

KNN_K = 3  # k of the k-NN recall (metrics.knn_precision_recall): each set needs more than k images
# What each column of a judged gallery means, said once for every table and readout that shows them.
COLUMNS = dict(
    malign="malign %: the oracle's share of images showing the feature, with its 95% Wilson interval",
    tv="tv: distance of the class mix from the baseline's benign images (0 = the same mix; floor: what chance "
       "alone gives)",
    recall="recall vs baseline: how much of the real benign variety is still covered, 1× = as much as the baseline",
    confident="confident: share of images the oracle classifies with confidence",
)


def legend(*columns: str) -> str:
    """The meanings of ``columns`` (keys of ``COLUMNS``) as one sentence."""
    return "; ".join(COLUMNS[c] for c in columns) + "."


class GalleryJudge:
    """Judges censored galleries against one baseline, the same way in every benchmark.

    Holds the oracle's view of the baseline (and of a second unguided gallery from disjoint seeds
    for the tv floor) and the real benign test images for recall, so a bench only hands it images.
    """

    def __init__(self, oracle: Oracle, feature: str, reference: dict, baseline: np.ndarray,
                 second: np.ndarray | None = None, n_real: int | None = None):
        self.oracle, self.feature = oracle, feature
        mask = real_benign(reference, feature)
        n_real = n_real or len(baseline)
        self.real = reference["test_features"][mask][:n_real]
        self.real_classes = reference["test_labels"][mask][:n_real]
        self.base = oracle.judge(baseline)
        self.base_rate = malign_fraction(self.base, feature)
        self.base_precision = self.base_recall = None  # k-NN recall needs more than KNN_K images a side
        self.base_class_recall = {}
        if self._knn_ready(self.base):
            self.base_precision, self.base_recall = knn_precision_recall(self.real, self.base.features)
            self.base_class_recall = per_class_recall(self.real, self.real_classes, self.base.features)
        self.floor = None if second is None else tv_floor(self.base, oracle.judge(second), feature)

    def _knn_ready(self, judgement: Judgement) -> bool:
        return min(len(judgement.features), len(self.real)) > KNN_K

    def baseline_row(self) -> dict:
        r = self.base_rate
        return dict(pooled_rate(r.malign, r.n), precision=self.base_precision, recall=self.base_recall,
                    confident=float(self.base.confident.mean()), tv_floor=self.floor,
                    class_shares=_rounded(class_histogram(self.base)),
                    watermark_share=float(self.base.watermarked.mean()))

    def tv(self, judgement: Judgement) -> float:
        return benign_tv(self.base, judgement, self.feature)

    def pool(self, runs: list[dict]) -> dict:
        """The censored block of a bench JSON: ``pool_runs`` plus tv of the pooled histogram and its floor."""
        out = pool_runs(runs)
        out.update(tv=tv_distance(out["class_shares"], benign_histogram(self.base, self.feature)), tv_floor=self.floor)
        return out

    def __call__(self, images: np.ndarray, judgement: Judgement | None = None) -> dict:
        """One censored gallery judged: malign count, tv, recall (overall, per class), confident, shares."""
        j = judgement if judgement is not None else self.oracle.judge(images)
        bad = is_malign(j, self.feature)
        p = r = None
        cls = {}
        if self._knn_ready(j):
            p, r = knn_precision_recall(self.real, j.features)
            cls = per_class_recall(self.real, self.real_classes, j.features)
        return dict(
            pooled_rate(int(bad.sum()), len(bad)), precision=p, recall=r,
            recall_ratio=r / self.base_recall if r is not None and self.base_recall else None,
            class_recall_ratio={c: (v / self.base_class_recall[c] if self.base_class_recall.get(c) else None)
                                for c, v in cls.items()},
            tv=self.tv(j), confident=float(j.confident.mean()),
            class_shares=_rounded(class_histogram(j)), watermark_share=float(j.watermarked.mean()),
        )


def half_split_floor(judgement: Judgement, feature: str) -> float | None:
    """A floor for ``benign_tv`` without a second gallery: tv between the benign histograms of the
    gallery's two halves. Each half holds n/2 images, so it overstates the floor of n (an upper
    estimate, free where a second unguided gallery is too costly); None under 2 images."""
    n = len(judgement.classes)
    if n < 2:
        return None
    half = [Judgement(judgement.class_probs[s], judgement.watermark_prob[s], judgement.features[s])
            for s in (slice(0, n // 2), slice(n // 2, n))]
    return tv_floor(half[0], half[1], feature)


def pool_runs(runs: list[dict]) -> dict:
    """The censored block of a bench JSON from its per-seed judgements: counts pooled (Wilson), class
    shares pooled by count, the rest as means (``GalleryJudge.pool`` adds tv of the pooled shares)."""
    k, n = sum(r["malign"] for r in runs), sum(r["n"] for r in runs)
    shares = np.sum([np.asarray(r["class_shares"]) * r["n"] for r in runs], axis=0) / n
    out = dict(pooled_rate(k, n),
               tv_seeds=[r["tv"] for r in runs],
               recall_ratio=_mean_or_none(r.get("recall_ratio") for r in runs),
               confident=float(np.mean([r["confident"] for r in runs])),
               class_shares=_rounded(shares),
               watermark_share=float(np.sum([r["watermark_share"] * r["n"] for r in runs]) / n))
    classes = sorted({c for r in runs for c in r.get("class_recall_ratio", {})})
    out["class_recall_ratio"] = {c: _mean_or_none(r["class_recall_ratio"].get(c) for r in runs) for c in classes}
    return out


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _rounded(shares) -> list[float]:
    return [round(float(s), 4) for s in shares]

