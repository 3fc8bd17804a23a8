"""Active vs random labelling: how many viewed images reach ≤ 1% oracle malign (issue 8).

``python -m censor bench-active --features bags watermark not-footwear --seeds 3``

Per (feature, strategy, labelling seed) "cell" the simulated labeller's label set grows in batches
of ``batch`` (20) up to the largest budget; at each budget in ``budgets`` (20, 40, 60, 100) a reward
is trained on the labels so far and a censored gallery (``n`` images, the same fixed seeds for every
cell, ``steps`` DDIM steps) is judged by the oracle. The strategies differ only in *which* images the
labeller is shown next:

- ``random``: the next images of a seeded permutation of the pool (what bench.py does);
- ``active``: ``censor.active.rank`` on the diffusion encoder's features with the reward trained on
  the labels so far (coverage only before the first reward), which the ranking retrains after every
  batch.

Benign-dominant features (the ``ensemble`` setup of the best bench rows: K = 5, ω 4, time guidance)
draw every batch from the 1,000-image pool. Malign-dominant ones (``imitation``) draw the first batch
from the pool, and every later batch from a censored gallery of ``candidates`` images guided by the
current reward (an imitation round of ``batch`` labels, training resumed): ``random`` labels the
first ``batch`` of that gallery, ``active`` the ``batch`` it ranks highest. Only the labelled images
count as viewed. ``--censor repaint`` judges, instead of a guided gallery, the unguided one with every image
the reward doubts repainted (sampling.repaint) at the threshold cross-fitted on the labels so far, as the
studio's strict mode does for a local mark. The oracle judges galleries (through the benchmarks' one harness, ``bench.harness``:
malign %, tv against the baseline's benign class histogram with its floor, recall, confident) and
drives the simulated labeller, nothing else.

Each cell's JSON goes to ``out/`` after every budget, and a finished cell is skipped on a rerun with
the same settings, so the run is resumable; ``--summary`` rebuilds the table (``summary.md``) and the plot
(``active_labelling.png``) in ``out/`` from the JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from censor.bench.active_config import ActiveBenchConfig, method_for
from censor.bench.active_report import TARGET_PCT, labels_to_target, summarize
from censor.bench.harness import Harness, comparison_grid
from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.core.settings import DEFAULT_GUIDANCE
from censor.eval.features import is_malign
from censor.labels.imitation import imitation_round
from censor.labels.labeller import SimulatedLabeller
from censor.labels.ranking import ActiveWeights, EncoderFeatures, member_probs, rank
from censor.rewards.training import train_reward
from censor.sampling.guidance import guidance_for
from censor.sampling.loop import sample
from censor.sampling.thresholds import heldout_threshold, reference_images
from censor.sampling.repaint import repaint_flagged


class Context:
    """What every cell shares: the model, oracle, pool, cached encoder features and the harness
    (baseline of the same n fixed seeds for every cell, its floor, unguided timing), judged per feature."""

    def __init__(self, cfg: ActiveBenchConfig, model, oracle, pool, reference, cache_dir=None, log=print):
        self.cfg, self.model, self.oracle, self.pool, self.log = cfg, model, oracle, pool, log
        t0 = time.time()
        self.pool_features = EncoderFeatures(model, pool.images)
        log(f"pool encoder features: {len(pool)} images in {time.time() - t0:.1f}s")
        self.harness = Harness(model, oracle, reference, cfg.features[0], cfg.steps, cfg.n, cache_dir=cache_dir)
        self.gallery_seeds, self.baseline = self.harness.gallery(0)
        self.judged_baseline = self.harness.judge_all.base
        self.unguided_s = self.harness.unguided_rate * cfg.n  # wall time of one gallery, for time_ratio
        self._harnesses = {cfg.features[0]: self.harness}

    def judge(self, feature: str) -> Harness:
        """The harness judging ``feature``'s galleries (recall against its first n real benign test images)."""
        if feature not in self._harnesses:
            self._harnesses[feature] = self.harness.for_feature(feature)
        return self._harnesses[feature]

    def baseline_row(self, feature: str) -> dict:
        return dict(self.judge(feature).baseline_row(), unguided_s=round(self.unguided_s, 2))


def _train(cfg, ctx, images, labels, seed, resume=None, boxes=None):
    if (labels == 0).sum() == 0 or (labels == 1).sum() == 0:
        return None  # one class only: nothing to learn yet (a real outcome of small budgets)
    return train_reward(images, labels, kind=cfg.reward, diffusion=ctx.model, members=cfg.members,
                        alpha=cfg.alpha, iterations=cfg.iterations, seed=seed, resume=resume, boxes=boxes, paste=cfg.paste)


def _guidance(cfg: ActiveBenchConfig, reward):
    return guidance_for(reward, DEFAULT_GUIDANCE.with_(weight=cfg.weight))


def _repainted(cfg, ctx, reward, images, labels, boxes=None) -> tuple[np.ndarray | None, dict]:
    """The unguided gallery with what the reward doubts repainted (sampling.repaint), at the threshold
    cross-fitted on the labels so far, as the studio's strict mode does; None before the labels hold two
    of each class (no threshold can be fitted: the gallery stays unguided)."""
    try:
        th = heldout_threshold(images, labels, kind=cfg.reward, diffusion=ctx.model, members=cfg.members,
                               alpha=cfg.alpha, iterations=cfg.iterations, folds=cfg.folds, boxes=boxes, paste=cfg.paste,
                               scale=cfg.threshold_scale, reward=reward, reference=reference_images(ctx.pool.images, images))
    except CensorError:
        return None, dict(threshold=None)
    t0 = time.time()
    rp = repaint_flagged(ctx.model, reward, ctx.baseline, ctx.gallery_seeds, th["threshold"])
    return rp.images, dict(threshold=round(th["threshold"], 4), threshold_s=th["seconds"], repaint_s=round(time.time() - t0, 1),
                           fold_threshold=round(th.get("fold_threshold", th["threshold"]), 4),
                           reference_share=th.get("reference_share"), pooled_line_share=th.get("pooled_line_share"),
                           malign_quantiles=th.get("malign_quantiles"), doubted=rp.doubted, passed=rp.passed, which=rp.which)


def _evaluate(cfg, ctx, feature, reward, images, labels, boxes=None) -> dict:
    t0 = time.time()
    censored, extra = None, {}
    if reward is not None and cfg.censor == "repaint":
        censored, extra = _repainted(cfg, ctx, reward, images, labels, boxes)
        # the gallery is sampled unguided (cached) and then repainted: charged both
        seconds = ctx.unguided_s + extra.get("repaint_s", 0.0)
    elif reward is not None:
        censored = to_uint8(sample(ctx.model, ctx.gallery_seeds, steps=cfg.steps, guidance=_guidance(cfg, reward)))
        seconds = time.time() - t0
    untouched = censored is None
    censored = ctx.baseline if untouched else censored
    h = ctx.judge(feature)
    ev, j = h.judge(censored)
    if "which" in extra:  # where the baseline's malign images went (judged after the fact): doubted, or passed as drawn
        bad, doubted = is_malign(h.judge_all.base, feature), np.zeros(len(censored), bool)
        doubted[extra.pop("which")] = True
        extra.update(malign_doubted=int((bad & doubted).sum()), malign_passed=int((bad & ~doubted).sum()),
                     malign_left_doubted=int((is_malign(j, feature) & doubted).sum()))
    # no reward (or no threshold): the gallery *is* the unguided baseline, so it costs what unguided sampling costs
    ratio = 1.0 if untouched else h.time_ratio(seconds / cfg.n)
    ev.update(tv_floor=h.floor, sample_s=round(ctx.unguided_s if untouched else seconds, 1), time_ratio=ratio,
              no_reward=reward is None, **extra)
    return ev, censored, j


def _boxes(cfg, labeller, images, labels):
    return labeller.boxes(images, labels) if cfg.boxes else None


def run_cell(cfg: ActiveBenchConfig, ctx: Context, feature: str, strategy: str, seed: int,
             save=None) -> dict:
    """One growing label set: select, label, train, and judge a censored gallery at every budget."""
    log = ctx.log
    method = method_for(feature)
    labeller = SimulatedLabeller(ctx.oracle, feature, 0.0, seed=seed)
    pool, feats = ctx.pool, ctx.pool_features
    weights = ActiveWeights(**cfg.weights)
    perm = np.random.default_rng(seed).permutation(len(pool))
    labelled = np.zeros(len(pool), bool)
    images = np.zeros((0, *pool.images.shape[1:]), np.uint8)
    labels = np.zeros(0, np.int64)
    reward, points, select_s, train_s = None, [], 0.0, 0.0
    cell = dict(settings=cfg.cell_settings(feature), **ctx.judge(feature).header(), strategy=strategy, seed=seed,
                baseline=ctx.baseline_row(feature), points=points, complete=False)
    for budget in range(cfg.batch, cfg.budgets[-1] + 1, cfg.batch):
        t0 = time.time()
        # from the pool: every ensemble batch, and an imitation session's first (or any round
        # before the labels hold both classes, when there is no reward to censor a gallery with)
        if method == "ensemble" or budget == cfg.batch or reward is None:
            if strategy == "random":
                pick = perm[~labelled[perm]][: cfg.batch]
            else:
                probs = member_probs(reward, features=feats, images=pool.images) if reward is not None else None
                pick = rank(feats.embedding, labelled, probs, weights, k=cfg.batch, seed=seed)
            labelled[pick] = True
            new = pool.images[pick]
            select_s += time.time() - t0
            images = np.concatenate([images, new])
            labels = np.concatenate([labels, labeller.label(new)])
            if budget in cfg.budgets or strategy == "active" or method == "imitation":
                t1 = time.time()
                reward = _train(cfg, ctx, images, labels, seed, resume=reward if method == "imitation" else None,
                                boxes=_boxes(cfg, labeller, images, labels))
                train_s += time.time() - t1
        else:  # imitation round: a censored gallery of `candidates` from the current reward, `batch` labelled
            clock = {}

            def chosen(gallery, images=images, reward=reward):
                if strategy == "random":
                    out = gallery[: cfg.batch]
                else:
                    shown = np.concatenate([images, gallery])
                    both = EncoderFeatures(ctx.model, shown)
                    seen = np.arange(len(both)) < len(images)
                    pick = rank(both.embedding, seen, member_probs(reward, features=both, images=shown), weights, k=cfg.batch,
                                seed=seed)
                    out = shown[pick]
                clock["select"] = time.time() - t0  # sampling the gallery and ranking it
                return out

            def timed_train(imgs, labs, resume):
                t1 = time.time()
                out = _train(cfg, ctx, imgs, labs, seed, resume=resume)
                clock["train"] = time.time() - t1
                return out

            images, labels, reward = imitation_round(
                ctx.model, labeller, reward, _guidance(cfg, reward), images, labels, count=cfg.candidates,
                session_seed=seed, round_=budget, steps=cfg.steps, train=timed_train, pick=chosen)
            select_s += clock["select"]
            train_s += clock["train"]
        if budget in cfg.budgets:
            ev, censored, judged = _evaluate(cfg, ctx, feature, reward, images, labels,
                                             _boxes(cfg, labeller, images, labels))
            points.append(dict(budget=budget, viewed=labeller.viewed, malign_labels=int((labels == 0).sum()),
                               recall_ratio=ev.pop("recall_ratio"),
                               train_s=round(train_s, 1), select_s=round(select_s, 2), **ev))
            log(f"  {feature} {strategy} seed {seed} budget {budget}: {ev['malign_pct']:.2f}% "
                f"[{ev['ci_pct'][0]:.2f}, {ev['ci_pct'][1]:.2f}] ({ev['malign']}/{ev['n']}), tv {ev['tv']:.3f} "
                f"(floor {ev['tv_floor']:.3f}), "
                f"{int((labels == 0).sum())} malign labels, recall {points[-1]['recall_ratio'] or 0:.2f}x, "
                f"train {train_s:.0f}s, sampling {ev['sample_s']:.0f}s, select {select_s:.1f}s")
            if save:
                save(cell, censored, judged)
    cell["complete"] = True
    cell["labels_to_target"] = labels_to_target(points)
    cell["labels_to_target_kept"] = labels_to_target(points, kept=True)
    if save:
        save(cell)
    return cell


def save_cell(path: Path, ctx: Context, cell: dict, censored=None, judged=None) -> None:
    """The cell's JSON, and with a newly judged gallery its grid: five rows of the unguided baseline
    over five rows of the censored gallery at the latest budget (malign images framed red)."""
    path.write_text(json.dumps(cell, indent=1))
    if censored is not None:
        comparison_grid(cell["settings"]["feature"], ctx.baseline, censored, ctx.judged_baseline,
                        judged).save(path.with_suffix(".png"))


def cell_path(out: Path, feature: str, strategy: str, seed: int) -> Path:
    return out / f"{feature}_{strategy}_s{seed}.json"


def run_active_bench(cfg: ActiveBenchConfig, model, oracle, pool, reference, out_dir="docs/bench/active",
                     cache_dir="runs/bench_cache", only_seed: int | None = None, log=print) -> list[dict]:
    """Every cell, seeds outermost (a partial run has every feature and strategy for the first seeds);
    ``only_seed``: that labelling seed's cells alone."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = None
    cells = []
    for seed in range(cfg.seeds) if only_seed is None else [only_seed]:
        for feature in cfg.features:
            for strategy in cfg.strategies:
                path = cell_path(out, feature, strategy, seed)
                if path.is_file():
                    old = json.loads(path.read_text())
                    if old.get("complete") and old.get("settings") == cfg.cell_settings(feature):
                        log(f"{path.name}: done, skipped")
                        cells.append(old)
                        continue
                ctx = ctx or Context(cfg, model, oracle, pool, reference, cache_dir, log)
                log(f"{feature} / {strategy} / seed {seed}")
                t0 = time.time()
                cell = run_cell(cfg, ctx, feature, strategy, seed,
                                save=lambda c, *gallery, p=path: save_cell(p, ctx, c, *gallery))
                cell["wall_s"] = round(time.time() - t0, 1)
                save_cell(path, ctx, cell)
                log(f"  cell done in {cell['wall_s']:.0f}s; labels to ≤{TARGET_PCT:g}%: {cell['labels_to_target']}")
                cells.append(cell)
    summarize(out, log=log)
    return cells


