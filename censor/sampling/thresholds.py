"""Where the strict filter draws its line: the reward's per-image verdict, the cross-fitted threshold
on the person's own labels, and the studio's cache of it (issues 9 and 21).

The verdict is the ensemble's geometric-mean P(benign) on the final uint8 image at t = 0. The threshold
comes from cross-fitting (``heldout_threshold``): k stratified folds, each scored by a reward trained with
the same recipe on the other folds, and the threshold placed so that at least ``recall`` (99%) of the
held-out malign scores fall at or below it. With at most 100 malign labels that is the highest held-out
malign score: a small-sample estimate, not a guarantee.

**Carried to the reward it filters with** (``scale="reference"``, the default): the fold rewards learn
from (k-1)/k of the labels and the reward that filters from all of them, so their scores need not share a
scale. Watermark, region feedback, 50 labels: one seed's folds set p 0.22, at which the final reward
doubted 31 of 334 images (the other seeds' 119 and 165) and 25 of 42 stamps passed. So the threshold is
read off as a share instead: on an unlabelled reference sample of the model (the labelling pool less
the labelled images) the fold rewards doubt a share q at their threshold, and the final reward's line is
its own q-quantile on the same images: it doubts as much of the model's output as the folds would.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from censor.core.data import to_model_range
from censor.core.errors import CensorError
from censor.core.progress import Progress, part
from censor.core.settings import ALPHA, ITERATIONS, MEMBERS
from censor.gallery.bundles import sha256
from censor.rewards.ensemble import clean_input
from censor.rewards.local import PASTE
from censor.rewards.training import HEAD_ITERATION_STEPS, train_reward, training_cost

DEFAULT_RECALL = 0.99
DEFAULT_FOLDS = 5
THRESHOLD_SCALES = ("folds", "reference")  # the fold rewards' own scale, or carried to the final reward's
THRESHOLD_SCALE = "reference"
REFERENCE_N = 500  # unlabelled reference images the share is read on (pool less the labelled; fewer if short)
REFERENCE_MIN = 20  # fewer left unlabelled (a small pool, all of it labelled): the studio keeps the folds' scale


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


def reference_images(pool: np.ndarray, labelled: np.ndarray, n: int = REFERENCE_N) -> np.ndarray:
    """Up to ``n`` pool images that are not among the labelled ones (compared byte for byte), in pool
    order: unlabelled draws of the model, which the final reward has not been trained on."""
    def key(x):
        return hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest()

    pool, seen = np.asarray(pool), {key(x) for x in np.asarray(labelled)}
    return pool[[i for i, x in enumerate(pool) if key(x) not in seen][:n]]


def carried_threshold(reward, share: float, reference: np.ndarray, model=None) -> float:
    """The final reward's line that doubts ``share`` of ``reference``: its ⌈share·n⌉-th lowest score
    (0 when the share rounds to no image: nothing is doubted)."""
    s = np.sort(benign_scores(reward, reference, model=model))
    k = math.ceil(share * len(s) - 1e-9)
    return float(s[k - 1]) if k >= 1 else 0.0


def heldout_threshold(images: np.ndarray, labels: np.ndarray, *, kind: str, diffusion, members: int = MEMBERS,
                      alpha: float = ALPHA, iterations: int = ITERATIONS, folds: int = DEFAULT_FOLDS,
                      recall: float = DEFAULT_RECALL, seed: int = 0,
                      progress: Progress | None = None, boxes: list | None = None,
                      reward=None, reference: np.ndarray | None = None, scale: str = THRESHOLD_SCALE,
                      paste: int = PASTE) -> dict:
    """Cross-fitted threshold: out-of-fold P(benign) of every labelled image, the threshold from the
    malign ones, and the share of held-out benign images it keeps (what the filter will cost).

    Every fold trains a reward with the given recipe on the other folds (the oracle is never used),
    with their ``boxes`` (region feedback, one per label, and its ``paste``) when given. With ``scale="reference"``, the
    final ``reward`` and unlabelled ``reference`` images, ``threshold`` is carried to the final reward
    (``carried_threshold``; the folds' own line is ``fold_threshold``).
    """
    if scale not in THRESHOLD_SCALES:
        raise CensorError(f"the threshold scale is one of {', '.join(THRESHOLD_SCALES)}, got {scale!r}")
    carry = scale == "reference"
    if carry and (reward is None or reference is None or len(reference) == 0):
        raise CensorError("a threshold carried to the final reward needs that reward and unlabelled reference images")
    images, labels = np.asarray(images), np.asarray(labels).astype(int)
    n_malign, n_benign = int((labels == 0).sum()), int((labels == 1).sum())
    if n_malign < 2 or n_benign < 2:
        raise CensorError(f"a held-out threshold needs at least 2 malign and 2 benign labels "
                          f"({n_malign} malign, {n_benign} benign); set a probability threshold instead")
    folds = int(min(folds, n_malign, n_benign))
    parts = stratified_folds(labels, folds, seed)
    scores = np.full(len(labels), np.nan)
    quantiles = np.full(len(labels), np.nan)  # carried: the share of the reference its fold reward scores ≤ it
    ref_scores = []
    t0 = time.time()
    for j, test in enumerate(parts):
        train = np.setdiff1d(np.arange(len(labels)), test)
        sub = part(progress, j / folds, 1 / folds, f"held-out threshold: fold {j + 1} of {folds}")
        r = train_reward(images[train], labels[train], kind=kind, diffusion=diffusion, members=members,
                         alpha=alpha, iterations=iterations, seed=seed + 1000 * (j + 1), progress=sub,
                         score_table=False,  # a fold's reward only scores its held-out labels
                         boxes=None if boxes is None else [boxes[i] for i in train], paste=paste)
        scores[test] = benign_scores(r, images[test], model=diffusion)
        if carry:
            ref_scores.append(np.sort(benign_scores(r, reference, model=diffusion)))
            quantiles[test] = np.searchsorted(ref_scores[-1], scores[test], side="right") / len(reference)
    malign, benign = scores[labels == 0], scores[labels == 1]
    tau = threshold_from_scores(malign, recall)
    out = dict(threshold=tau, scale=scale, recall_target=recall, folds=folds, malign_labels=n_malign,
               benign_labels=n_benign, heldout_malign_recall=float((malign <= tau).mean()),
               heldout_benign_pass=float((benign > tau).mean()), malign_scores=[round(float(s), 6) for s in malign])
    if carry:
        # each held-out score read on its own fold reward's scale (the share of the reference it would doubt)
        # before the folds are pooled: one raw line over rewards of different scales lets the fold whose scores
        # run highest set the line for all (``pooled_line_share``: what that line would have doubted)
        share = threshold_from_scores(quantiles[labels == 0], recall)
        out.update(fold_threshold=tau, reference_share=share, reference_n=int(len(reference)),
                   pooled_line_share=float(np.mean([(s <= tau).mean() for s in ref_scores])),
                   malign_quantiles=[round(float(q), 4) for q in quantiles[labels == 0]],
                   threshold=carried_threshold(reward, share, reference, diffusion))
    out["seconds"] = round(time.time() - t0, 1)
    return out


# ---- the studio's strict mode -----------------------------------------------------------------
STRICT_FILE = "strict_threshold.json"


def cached_threshold(reward_dir) -> dict | None:
    """The session reward's cross-fitted threshold when it was computed for this very reward file (one cached
    before thresholds said their scale, all on the folds', is recomputed)."""
    reward_dir = Path(reward_dir)
    path = reward_dir / STRICT_FILE
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("reward_sha256") == sha256(reward_dir / "reward.safetensors") \
                    and isinstance(cached.get("threshold"), float) and cached.get("scale") in THRESHOLD_SCALES:
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


def session_threshold(reward_dir, reward, images: np.ndarray, labels: np.ndarray, diffusion, pool: np.ndarray,
                      boxes: list | None = None, progress: Progress | None = None) -> dict:
    """The cross-fitted threshold of a saved session reward, computed once and kept beside it.

    The cache is keyed by the reward file's hash, so retraining the reward recomputes it. The folds
    use the reward's own recipe (kind, members, α, iterations, the ``boxes`` it was trained with) on the
    current labels; the threshold is carried to the reward on the labelling ``pool`` less the labelled images
    (on the folds' scale when fewer than ``REFERENCE_MIN`` are left: ``scale`` in the result says which).
    """
    reward_dir = Path(reward_dir)
    cached = cached_threshold(reward_dir)
    if cached is not None:
        return cached
    digest, path = sha256(reward_dir / "reward.safetensors"), reward_dir / STRICT_FILE
    info, reference = reward.info, reference_images(pool, images)
    th = heldout_threshold(images, labels, kind=reward.kind, diffusion=diffusion, members=len(reward.members),
                           alpha=float(info.get("alpha", 0.1)), iterations=int(info.get("iterations", 300)),
                           seed=int(info.get("seed", 0)), progress=progress, boxes=boxes, reward=reward,
                           paste=int(info.get("paste", 0)),  # a reward from before pasting had none
                           reference=reference, scale=THRESHOLD_SCALE if len(reference) >= REFERENCE_MIN else "folds")
    th["reward_sha256"] = digest
    path.write_text(json.dumps(th, indent=1))
    return th
