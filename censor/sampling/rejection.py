"""Rejection filtering with the reward: sample (unguided or guided), drop what the reward calls malign,
draw more until the gallery is full or a cap on drawn samples is hit.

Two uses (issue 9):

- **reject only**: unguided sampling + the reward as a filter (best-of-n / discriminator rejection
  sampling). No gradients; the cost is the number of draws per kept image. It is the cost floor
  guided sampling is measured against.
- **strict**: guided sampling, then reject what the reward still doubts.

The verdict is the ensemble's geometric-mean P(benign) (``RewardEnsemble.benign_prob``) on the
final uint8 image at t = 0, the same score the studio reports. An image is kept when its score is
strictly above the threshold. The default threshold comes from cross-fitting on the person's own
labels (``heldout_threshold``): k stratified folds, each scored by a reward trained with the same
recipe on the other folds, and the threshold placed so that at least ``recall`` (99%) of the
held-out malign scores fall at or below it. With at most 100 malign labels that is the highest
held-out malign score: a small-sample estimate, not a guarantee.

Seeds continue from the gallery's: the i-th image examined has seed ``seeds_for(cap, seed)[i]``, so
the first ``count`` draws are exactly the baseline gallery's seeds and a run is reproducible; a kept
image is reproduced by sampling its seed alone (DDIM, eta = 0).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from censor.core.data import to_model_range, to_uint8
from censor.core.errors import CensorError
from censor.core.progress import SEP, Progress, part, reporter
from censor.core.settings import ALPHA, ITERATIONS, MEMBERS
from censor.gallery.bundles import sha256
from censor.rewards.ensemble import clean_input
from censor.rewards.training import HEAD_ITERATION_STEPS, train_reward, training_cost
from censor.sampling.loop import sample, seeds_for

DEFAULT_RECALL = 0.99
DEFAULT_CAP_FACTOR = 10
DEFAULT_FOLDS = 5


# ---- scores and thresholds --------------------------------------------------------------------
@torch.no_grad()
def benign_scores(reward, images: np.ndarray, batch_size: int = 500, model=None) -> np.ndarray:
    """The reward's per-image verdict score: geometric-mean P(benign) of uint8 images, at t = 0
    (on their latents when ``model`` is a latent model and the reward was trained on latents)."""
    images = np.asarray(images)
    if len(images) == 0:
        return np.zeros(0)
    out = []
    for i in range(0, len(images), batch_size):
        x = clean_input(reward, model, to_model_range(images[i:i + batch_size]))
        t = torch.zeros(len(x), dtype=torch.long) if reward.time_dependent else None
        out.append(reward.benign_prob(x, t).double().numpy())
    return np.concatenate(out)


def threshold_from_scores(malign_scores, recall: float = DEFAULT_RECALL) -> float:
    """The smallest score τ with at least ``recall`` of the malign scores ≤ τ (keep = score > τ).

    Sorted ascending m_1 ≤ … ≤ m_n, that is m_⌈recall·n⌉; with at most 100 malign scores and recall 0.99
    it is the highest one.
    """
    m = np.sort(np.asarray(malign_scores, dtype=float))
    if len(m) == 0:
        raise CensorError("no held-out malign scores to set a threshold from")
    if not 0 < recall <= 1:
        raise CensorError(f"recall must be in (0, 1], got {recall}")
    k = math.ceil(recall * len(m) - 1e-9)
    return float(m[max(k, 1) - 1])


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """Index sets of ``folds`` folds, each class dealt round-robin after a shuffle."""
    rng = np.random.default_rng(seed)
    out = [[] for _ in range(folds)]
    for c in (0, 1):
        idx = rng.permutation(np.where(labels == c)[0])
        for j, i in enumerate(idx):
            out[j % folds].append(int(i))
    return [np.array(sorted(f), dtype=int) for f in out]


def heldout_threshold(images: np.ndarray, labels: np.ndarray, *, kind: str, diffusion, members: int = MEMBERS,
                      alpha: float = ALPHA, iterations: int = ITERATIONS, folds: int = DEFAULT_FOLDS,
                      recall: float = DEFAULT_RECALL, seed: int = 0,
                      progress: Progress | None = None, boxes: list | None = None) -> dict:
    """Cross-fitted threshold: out-of-fold P(benign) of every labelled image, the threshold from the
    malign ones, and the share of held-out benign images it keeps (what the filter will cost).

    Every fold trains a reward with the given recipe on the other folds (the oracle is never used),
    with their ``boxes`` (region feedback, one per label) when given.
    """
    images, labels = np.asarray(images), np.asarray(labels).astype(int)
    n_malign, n_benign = int((labels == 0).sum()), int((labels == 1).sum())
    if n_malign < 2 or n_benign < 2:
        raise CensorError(f"a held-out threshold needs at least 2 malign and 2 benign labels "
                          f"({n_malign} malign, {n_benign} benign); set a probability threshold instead")
    folds = int(min(folds, n_malign, n_benign))
    parts = stratified_folds(labels, folds, seed)
    scores = np.full(len(labels), np.nan)
    t0 = time.time()
    for j, test in enumerate(parts):
        train = np.setdiff1d(np.arange(len(labels)), test)
        sub = part(progress, j / folds, 1 / folds, f"held-out threshold: fold {j + 1} of {folds}")
        r = train_reward(images[train], labels[train], kind=kind, diffusion=diffusion, members=members,
                         alpha=alpha, iterations=iterations, seed=seed + 1000 * (j + 1), progress=sub,
                         score_table=False,  # a fold's reward only scores its held-out labels
                         boxes=None if boxes is None else [boxes[i] for i in train])
        scores[test] = benign_scores(r, images[test], model=diffusion)
    malign, benign = scores[labels == 0], scores[labels == 1]
    tau = threshold_from_scores(malign, recall)
    return dict(threshold=tau, recall_target=recall, folds=folds, malign_labels=n_malign, benign_labels=n_benign,
                heldout_malign_recall=float((malign <= tau).mean()), heldout_benign_pass=float((benign > tau).mean()),
                malign_scores=[round(float(s), 6) for s in malign], seconds=round(time.time() - t0, 1))


def check_probability(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0 <= p < 1:
        raise CensorError(f"the rejection threshold is a probability in [0, 1), got {p!r}")
    return float(p)


# ---- the sampling mode ------------------------------------------------------------------------
@dataclass
class RejectionResult:
    images: np.ndarray  # the kept images, uint8 [kept, H, W], in seed order
    seeds: list[int]  # their seeds
    scores: np.ndarray  # their P(benign), all > threshold
    threshold: float
    requested: int
    drawn: int  # images examined in seed order until the gallery was full (or the cap was hit)
    dropped: int  # of those, the ones at or below the threshold
    sampled: int  # images generated (≥ drawn: the last batch may hold unneeded surplus)
    cap: int
    capped: bool  # True when the cap stopped the run before the gallery was full
    sampling_s: float = 0.0
    scoring_s: float = 0.0
    batches: list[int] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return len(self.seeds)

    def summary(self) -> str:
        text = f"drew {self.drawn}, dropped {self.dropped} (threshold p={self.threshold:.3g})"
        if self.capped:
            text += f"; hit the cap of {self.cap} draws with {self.kept} of {self.requested} images kept"
        return text

    def as_dict(self) -> dict:
        return dict(threshold=self.threshold, requested=self.requested, kept=self.kept, drawn=self.drawn,
                    dropped=self.dropped, sampled=self.sampled, cap=self.cap, capped=self.capped,
                    sampling_s=round(self.sampling_s, 2), scoring_s=round(self.scoring_s, 3), batches=self.batches)


def reject_sample(model, reward, count: int, seed: int, threshold: float, *, guidance=None, steps: int = 50,
                  cap: int | None = None, cap_factor: float = DEFAULT_CAP_FACTOR, batch_size: int | None = None,
                  sampler: Callable[[Sequence[int]], np.ndarray] | None = None,
                  progress: Progress | None = None, show_bar: bool = False) -> RejectionResult:
    """Sample in batches (unguided, or with ``guidance``), keep images whose P(benign) > ``threshold``,
    until ``count`` are kept or ``cap`` images were drawn (default ``cap_factor`` × count).

    The first batch is the ``count`` gallery seeds; later batches are sized from the acceptance rate
    so far (plus 10%), within the cap. ``sampler(seeds) -> uint8 images`` replaces the default
    (``sampling.sample`` with ``guidance``), e.g. to reuse draws already made. Hitting the cap is
    reported in the result (``capped``), not raised. ``progress`` gets a fraction in [0, 1].
    """
    if count < 1:
        raise CensorError(f"the number of images must be positive, got {count}")
    threshold = check_probability(threshold)
    cap = int(cap if cap is not None else math.ceil(cap_factor * count))
    if cap < count:
        raise CensorError(f"the cap on drawn samples ({cap}) is below the requested count ({count})")
    all_seeds = seeds_for(cap, seed)
    if sampler is None:
        def sampler(seeds, prog=None):
            return to_uint8(sample(model, seeds, steps=steps, guidance=guidance, progress=prog))
        takes_progress = True
    else:
        takes_progress = False
    kept_idx, kept_scores, batches = [], [], []
    sampled = drawn = dropped = 0
    sampling_s = scoring_s = 0.0
    images_kept = []
    bar = tqdm(total=count, desc="kept", disable=not show_bar)
    report = reporter(progress)
    while len(kept_idx) < count and sampled < cap:
        need = count - len(kept_idx)
        if sampled == 0:
            size = count
        else:
            rate = max(len(kept_idx), 1) / sampled
            size = math.ceil(1.1 * need / rate)
        size = int(min(max(size, need) if batch_size is None else batch_size, cap - sampled))
        seeds = all_seeds[sampled:sampled + size]
        expected = min(cap, max(sampled + size, count if not kept_idx else math.ceil(count * sampled / len(kept_idx))))
        base = sampled

        def within(f, desc=None, base=base, size=size, expected=expected, kept=len(kept_idx)):
            if report is not None:
                report(min(1.0, (base + f * size) / expected),
                       desc=SEP.join(t for t in (f"kept {kept} of {count}, drew {base} of at most {cap}", desc) if t))

        t0 = time.perf_counter()
        imgs = sampler(seeds, within) if takes_progress else sampler(seeds)
        sampling_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        s = benign_scores(reward, imgs, model=model)
        scoring_s += time.perf_counter() - t0
        sampled += size
        batches.append(size)
        for i in range(size):  # in seed order, up to the image that fills the gallery
            drawn += 1
            if s[i] > threshold:
                kept_idx.append(base + i)
                kept_scores.append(float(s[i]))
                images_kept.append(imgs[i])
                bar.update(1)
                if len(kept_idx) == count:
                    break
            else:
                dropped += 1
        within(1.0)
        bar.set_postfix(drawn=drawn, dropped=dropped)
    bar.close()
    if report is not None:
        report(1.0)
    shape = tuple(images_kept[0].shape) if images_kept else tuple(model.image_shape[1:])
    images = np.stack(images_kept) if images_kept else np.zeros((0, *shape), dtype=np.uint8)
    return RejectionResult(images=images, seeds=[all_seeds[i] for i in kept_idx], scores=np.array(kept_scores),
                           threshold=threshold, requested=count, drawn=drawn, dropped=dropped, sampled=sampled,
                           cap=cap, capped=len(kept_idx) < count, sampling_s=sampling_s, scoring_s=scoring_s,
                           batches=batches)


# ---- the studio's strict mode -----------------------------------------------------------------
STRICT_FILE = "strict_threshold.json"


def cached_threshold(reward_dir) -> dict | None:
    """The session reward's cross-fitted threshold when it was computed for this very reward file."""
    reward_dir = Path(reward_dir)
    path = reward_dir / STRICT_FILE
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("reward_sha256") == sha256(reward_dir / "reward.safetensors") \
                    and isinstance(cached.get("threshold"), float):
                return cached
        except (ValueError, OSError):
            pass  # a damaged cache is recomputed
    return None


def threshold_cost(reward, labels: np.ndarray) -> float:
    """What ``heldout_threshold`` costs with the reward's recipe, in unguided image-steps (sizes a bar)."""
    labels = np.asarray(labels)
    folds = max(1, int(min(DEFAULT_FOLDS, (labels == 0).sum(), (labels == 1).sum())))
    per_fold = training_cost(len(labels) * (folds - 1) // folds, len(reward.members), int(reward.info.get(
        "iterations", ITERATIONS)), reward.kind, score_table=False)
    return HEAD_ITERATION_STEPS * folds * per_fold


def session_threshold(reward_dir, reward, images: np.ndarray, labels: np.ndarray, diffusion,
                      progress: Progress | None = None) -> dict:
    """The cross-fitted threshold of a saved session reward, computed once and kept beside it.

    The cache is keyed by the reward file's hash, so retraining the reward recomputes it. The folds
    use the reward's own recipe (kind, members, α, iterations) on the current labels.
    """
    reward_dir = Path(reward_dir)
    cached = cached_threshold(reward_dir)
    if cached is not None:
        return cached
    digest, path = sha256(reward_dir / "reward.safetensors"), reward_dir / STRICT_FILE
    info = reward.info
    th = heldout_threshold(images, labels, kind=reward.kind, diffusion=diffusion, members=len(reward.members),
                           alpha=float(info.get("alpha", 0.1)), iterations=int(info.get("iterations", 300)),
                           seed=int(info.get("seed", 0)), progress=progress)
    th["reward_sha256"] = digest
    path.write_text(json.dumps(th, indent=1))
    return th
