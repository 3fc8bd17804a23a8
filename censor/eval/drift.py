"""An oracle-free fidelity figure: has the censored gallery drifted from p_data·r?

The studio has no oracle for a user's feature, so it measures drift where it can: in the diffusion
model's own encoder feature space (the taps the ddpm-encoder reward reads, mean- and max-pooled),
clustered once on the unguided labelling pool. The target is the pool reweighted by the reward,
p_data·r, so the figure is the total-variation distance between the censored gallery's cluster
histogram and the reward-weighted pool's; the same statistic the benchmark computes with the
oracle's classes (``evaluate.benign_tv``), with clusters in place of classes. Small galleries have
a large distance by chance alone, so it comes with its chance level (95th percentile of the
distance of n images drawn from the target itself), and the warning fires only above that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from censor.core.data import to_model_range
from censor.core.errors import CensorError
from censor.core.progress import Progress, part
from censor.eval.metrics import tv_distance
from censor.rewards.taps import mean_max_pool, unet_taps

CLUSTERS = 8  # few enough that a 32-image gallery still says something
CHANCE_QUANTILE = 0.95
EMBED_BATCH = 64  # images per encoder pass: a fraction of a second on the CPU, between progress calls
DRIFT_MESSAGE = ("the censored gallery has drifted from the baseline: some benign kinds of image lost or gained "
                 "share beyond chance; lower the strength")


@torch.no_grad()
def encoder_embedding(model, images: np.ndarray, batch_size: int = EMBED_BATCH,
                      progress: Progress | None = None) -> np.ndarray:
    """[N, D] pooled encoder taps at t = 0 (pixels pooled to 7×7 for networks without a UNet encoder);
    ``progress`` hears after every batch."""
    x = to_model_range(np.asarray(images))
    out, chunks = [], x.split(batch_size)
    for i, chunk in enumerate(chunks):
        if progress is not None and i:
            progress(i / len(chunks))
        if hasattr(model.unet, "down_blocks") and hasattr(model.unet, "mid_block"):
            if getattr(model, "is_latent", False):
                chunk = model.encode(chunk)
            taps = unet_taps(model.unet, chunk, torch.zeros(len(chunk), dtype=torch.long))
            out.append(mean_max_pool(taps))
        else:
            out.append(torch.nn.functional.adaptive_avg_pool2d(chunk.float(), 7).flatten(1))
    return torch.cat(out).double().numpy()


def kmeans(z: np.ndarray, k: int, seed: int = 0, iterations: int = 25, progress: Progress | None = None) -> np.ndarray:
    """Centres [k, D] by Lloyd's algorithm from a k-means++ start (deterministic for a seed); ``progress``
    hears at every iteration (seconds in all on a CPU for a pool of a thousand)."""
    if len(z) < k:
        raise CensorError(f"clustering into {k} groups needs at least {k} reference images, got {len(z)}")
    rng = np.random.default_rng(seed)
    centres = [z[rng.integers(len(z))]]
    for _ in range(1, k):
        d = np.min([((z - c) ** 2).sum(1) for c in centres], axis=0)
        centres.append(z[rng.choice(len(z), p=d / d.sum())] if d.sum() > 0 else z[rng.integers(len(z))])
    centres = np.array(centres)
    for i in range(iterations):
        if progress is not None:
            progress(i / iterations)
        assign = assign_clusters(z, centres)
        for j in range(k):
            if (assign == j).any():
                centres[j] = z[assign == j].mean(0)
    return centres


def assign_clusters(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (z * z).sum(1)[:, None] + (centres * centres).sum(1)[None, :] - 2 * z @ centres.T
    return d.argmin(1)


def weighted_histogram(assign: np.ndarray, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    w = np.ones(len(assign)) if weights is None else np.asarray(weights, np.float64)
    h = np.bincount(assign, weights=w, minlength=k)
    return h / max(h.sum(), 1e-12)


def chance_tv(target: np.ndarray, n: int, draws: int = 400, seed: int = 0, q: float = CHANCE_QUANTILE) -> float:
    """The ``q`` quantile of tv(histogram of n draws from ``target``, ``target``): what chance alone gives."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, target, size=draws) / n
    return float(np.quantile(0.5 * np.abs(counts - target[None]).sum(1), q))


@dataclass
class Drift:
    tv: float
    chance: float
    n: int

    @property
    def drifted(self) -> bool:
        return self.tv > self.chance

    def as_dict(self) -> dict:
        return dict(tv=round(self.tv, 4), chance=round(self.chance, 4), n=self.n, drifted=self.drifted)

    def __str__(self) -> str:
        verdict = "⚠ drifted" if self.drifted else "within chance"
        return f"drift {self.tv:.2f} (chance level for {self.n} images ≤ {self.chance:.2f}): {verdict}"


class DriftMeter:
    """Clusters of the reference (unguided) images in the encoder's feature space, fitted once;
    ``measure`` compares a gallery with the reference reweighted by the reward (p_data·r)."""

    def __init__(self, model, reference_images: np.ndarray, clusters: int = CLUSTERS, seed: int = 0,
                 progress: Progress | None = None):
        self.model, self.k = model, clusters
        z = encoder_embedding(model, reference_images, progress=part(progress, 0.0, 0.6))
        self.mu, self.sd = z.mean(0), z.std(0) + 1e-6
        zs = (z - self.mu) / self.sd
        self.centres = kmeans(zs, clusters, seed, progress=part(progress, 0.6, 0.4))
        self.assign = assign_clusters(zs, self.centres)

    def assign_images(self, images: np.ndarray) -> np.ndarray:
        return assign_clusters((encoder_embedding(self.model, images) - self.mu) / self.sd, self.centres)

    def target(self, reference_weights: np.ndarray | None = None) -> np.ndarray:
        return weighted_histogram(self.assign, self.k, reference_weights)

    def measure(self, images: np.ndarray, reference_weights: np.ndarray | None = None) -> Drift:
        """The gallery's drift from the reference weighted by ``reference_weights`` (the reward's
        P(benign) on each reference image; None: the plain reference)."""
        a = self.assign_images(images)
        target = self.target(reference_weights)
        return Drift(tv_distance(weighted_histogram(a, self.k), target), chance_tv(target, len(a)), len(a))
