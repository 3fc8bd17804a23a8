"""Few-shot reward accuracy: which reward kind and initialisation learns a feature from ~100 labels.

``python -m censor fewshot --feature bags --budget 100``

The simulated labeller labels ``budget`` pool images (as in the benchmark); each reward variant is
trained on them and scored on real test-split images whose truth is known from the dataset itself
(class labels and watermark flags), so no oracle verdict enters the score. Time-dependent rewards
are scored on noised copies at a few t as well, since guidance asks them about x_t, not x_0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from censor.core.data import to_model_range
from censor.core.errors import CensorError
from censor.core.settings import ITERATIONS
from censor.eval.features import feature_spec
from censor.labels.imitation import pool_view
from censor.labels.labeller import SimulatedLabeller
from censor.rewards.architectures import TIME_DEPENDENT
from censor.rewards.training import train_reward

VARIANTS = (("ddpm-encoder", "random"), ("half-unet", "random"), ("local-patch", "random"), ("resnet18", "backbone"),
            ("resnet18", "imagenet"), ("resnet18", "random"))


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    positive = positive.astype(bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # mid-ranks for tied scores
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def true_benign(feature: str, labels: np.ndarray, watermark: np.ndarray) -> np.ndarray:
    spec = feature_spec(feature)
    if spec["rule"] == "watermark":
        return ~watermark.astype(bool)
    return ~np.isin(labels, spec["malign_classes"])


def run_fewshot(feature: str, budget: int, model, oracle, pool, test_images: np.ndarray, test_labels: np.ndarray,
                test_watermark: np.ndarray, variants=VARIANTS, iterations: int = ITERATIONS, seed: int = 0,
                ts=(0, 300, 600), log=print) -> list[dict]:
    view = pool_view(len(pool), budget, seed)  # the images a bench session of this seed views first
    labels = SimulatedLabeller(oracle, feature, seed=seed).label(pool.images[view])
    if labels.min() == labels.max():
        raise CensorError(f"the {budget} viewed images hold one class only; raise the budget")
    truth = true_benign(feature, test_labels, test_watermark)
    x = to_model_range(test_images)
    rows = []
    for kind, init in variants:
        row = dict(kind=kind, init=init, labels=int(len(labels)), malign_labels=int((labels == 0).sum()))
        try:
            t0 = time.time()
            reward = train_reward(pool.images[view], labels, kind=kind, diffusion=model, members=1,
                                  iterations=iterations, init=init, seed=seed)
            row["train_s"] = round(time.time() - t0, 1)
        except CensorError as e:
            row["unavailable"] = str(e)
            log(f"{kind}/{init}: unavailable ({e})")
            rows.append(row)
            continue
        gen = torch.Generator().manual_seed(seed)
        for t in (ts if TIME_DEPENDENT[kind] else (0,)):
            tt = torch.full((len(x),), t, dtype=torch.long)
            xt = x if t == 0 else model.scheduler.add_noise(x, torch.randn(x.shape, generator=gen), tt)
            p = reward.benign_prob(xt, tt if TIME_DEPENDENT[kind] else None).numpy()
            row[f"auc_t{t}"] = auc(p, truth)
            if t == 0:
                row["balanced_acc"] = float(((p >= 0.5)[truth].mean() + (p < 0.5)[~truth].mean()) / 2)
        log(f"{kind}/{init}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith(("auc", "bal"))))
        rows.append(row)
    return rows


def markdown(rows: list[dict], feature: str) -> str:
    lines = [f"| reward ({feature}) | init | AUC t=0 | AUC t=300 | AUC t=600 | balanced acc t=0 | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "unavailable" in r:
            lines.append(f"| {r['kind']} | {r['init']} | unavailable: {r['unavailable']} | | | | |")
            continue
        cell = lambda k: f"{r[k]:.3f}" if k in r else "–"  # noqa: E731
        lines.append(f"| {r['kind']} | {r['init']} | {cell('auc_t0')} | {cell('auc_t300')} | {cell('auc_t600')} | "
                     f"{cell('balanced_acc')} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def save(rows: list[dict], feature: str, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"fewshot_{feature}.json").write_text(json.dumps(rows, indent=1))
    (out / f"fewshot_{feature}.md").write_text(markdown(rows, feature))
    return out / f"fewshot_{feature}.md"
