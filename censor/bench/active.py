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
count as viewed. The oracle judges galleries (through the benchmarks' shared ``evaluate.GalleryJudge``:
malign %, tv against the baseline's benign class histogram with its floor, recall, confident) and
drives the simulated labeller, nothing else.

Each cell's JSON goes to ``out/`` after every budget, and a finished cell is skipped on a rerun with
the same settings, so the run is resumable; ``--summary`` rebuilds the table (``summary.md``) and the plot
(``active_labelling.png``) in ``out/`` from the JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from censor.bench.censoring import FLOOR_SEED, GALLERY_SEED, cached_baseline, comparison_grid, machine
from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.core.settings import ALPHA, DEFAULT_GUIDANCE, ITERATIONS, MEMBERS
from censor.eval.features import feature_spec
from censor.eval.judge import GalleryJudge
from censor.labels.active import ActiveWeights, EncoderFeatures, member_probs, rank
from censor.labels.labeller import SimulatedLabeller
from censor.rewards.ensemble import model_fingerprint
from censor.rewards.training import train_reward
from censor.sampling.guidance import guidance_for
from censor.sampling.loop import sample, seeds_for

STRATEGIES = ("random", "active")
TARGET_PCT = 1.0


@dataclass
class ActiveBenchConfig:
    features: tuple[str, ...] = ("bags", "watermark", "not-footwear")
    strategies: tuple[str, ...] = STRATEGIES
    seeds: int = 3
    budgets: tuple[int, ...] = (20, 40, 60, 100)
    batch: int = 20
    n: int = 300
    steps: int = 25
    members: int = MEMBERS
    weight: float = DEFAULT_GUIDANCE.weight
    alpha: float = ALPHA
    iterations: int = ITERATIONS
    candidates: int = 60  # imitation: censored gallery per round, of which `batch` are labelled
    weights: dict = field(default_factory=lambda: asdict(ActiveWeights()))

    def __post_init__(self):
        for f in self.features:
            feature_spec(f)
        if not set(self.strategies) <= set(STRATEGIES):
            raise CensorError(f"strategies are {', '.join(STRATEGIES)}")
        self.features, self.strategies, self.budgets = tuple(self.features), tuple(self.strategies), tuple(sorted(self.budgets))
        if min(self.seeds, self.batch, self.n, self.steps, self.members, self.iterations, *self.budgets) < 1:
            raise CensorError("seeds, batch, n, steps, members, iterations and budgets must be positive")
        if any(b % self.batch for b in self.budgets):
            raise CensorError(f"every budget must be a multiple of the batch ({self.batch})")
        if self.candidates < self.batch and any(method_for(f) == "imitation" for f in self.features):
            raise CensorError("candidates (the censored gallery of an imitation round) must be at least the batch")

    def cell_settings(self, feature: str) -> dict:
        """What a finished cell must have been run with to be reused."""
        return dict(feature=feature, method=method_for(feature), budgets=list(self.budgets), batch=self.batch, n=self.n,
                    steps=self.steps, members=self.members, weight=self.weight, alpha=self.alpha,
                    iterations=self.iterations, candidates=self.candidates,
                    # cells run before the likely-malign term existed (weight 0) stay reusable
                    weights={k: v for k, v in self.weights.items() if not (k == "malign" and v == 0)})


def method_for(feature: str) -> str:
    return "imitation" if feature_spec(feature).get("dominance") == "malign" else "ensemble"


class Context:
    """What every cell shares: the model, oracle, pool, cached encoder features and the baseline."""

    def __init__(self, cfg: ActiveBenchConfig, model, oracle, pool, reference, cache_dir=None, log=print):
        self.cfg, self.model, self.oracle, self.pool, self.reference, self.log = cfg, model, oracle, pool, reference, log
        t0 = time.time()
        self.pool_features = EncoderFeatures(model, pool.images)
        log(f"pool encoder features: {len(pool)} images in {time.time() - t0:.1f}s")
        self.gallery_seeds = seeds_for(cfg.n, GALLERY_SEED)
        self.baseline = cached_baseline(model, cfg.n, cfg.steps, cache_dir)
        self.second = cached_baseline(model, cfg.n, cfg.steps, cache_dir, seed=FLOOR_SEED)  # the tv floor
        self.judged_baseline = oracle.judge(self.baseline)
        # wall-time reference for time_ratio: unguided sampling of the gallery seeds, measured here
        timing_n = min(cfg.n, 100)
        t0 = time.time()
        sample(model, self.gallery_seeds[:timing_n], steps=cfg.steps)
        self.unguided_s = (time.time() - t0) * cfg.n / timing_n
        self._judges = {}

    def judge(self, feature: str) -> GalleryJudge:
        """The shared judge of ``feature``'s galleries (recall against its first n real benign test images)."""
        if feature not in self._judges:
            self._judges[feature] = GalleryJudge(self.oracle, feature, self.reference, self.baseline, self.second,
                                                 n_real=self.cfg.n)
        return self._judges[feature]

    def baseline_row(self, feature: str) -> dict:
        return dict(self.judge(feature).baseline_row(), unguided_s=round(self.unguided_s, 2))


def _train(cfg, ctx, images, labels, seed, resume=None):
    if (labels == 0).sum() == 0 or (labels == 1).sum() == 0:
        return None  # one class only: nothing to learn yet (a real outcome of small budgets)
    return train_reward(images, labels, kind="ddpm-encoder", diffusion=ctx.model, members=cfg.members,
                        alpha=cfg.alpha, iterations=cfg.iterations, seed=seed, resume=resume)


def _evaluate(cfg, ctx, feature, reward) -> dict:
    t0 = time.time()
    if reward is None:
        censored = ctx.baseline
    else:
        guidance = guidance_for(reward, DEFAULT_GUIDANCE.with_(weight=cfg.weight))
        censored = to_uint8(sample(ctx.model, ctx.gallery_seeds, steps=cfg.steps, guidance=guidance))
    seconds = time.time() - t0
    j = ctx.oracle.judge(censored)
    judge = ctx.judge(feature)
    ev = judge(censored, j)
    ev["class_recall_ratio"] = {str(c): v for c, v in ev["class_recall_ratio"].items()}  # as the cell's JSON keeps them
    # no reward: the gallery *is* the unguided baseline, so it costs what unguided sampling costs
    ratio = 1.0 if reward is None else (seconds / ctx.unguided_s if ctx.unguided_s > 0 else None)
    ev.update(tv_floor=judge.floor, sample_s=round(seconds, 1), time_ratio=ratio, no_reward=reward is None)
    return ev, censored, j


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
    cell = dict(settings=cfg.cell_settings(feature), feature=feature, dominance=feature_spec(feature)["dominance"],
                strategy=strategy, seed=seed, machine=machine(),
                model_fingerprint=model_fingerprint(ctx.model.unet), baseline=ctx.baseline_row(feature),
                points=points, complete=False)
    for budget in range(cfg.batch, cfg.budgets[-1] + 1, cfg.batch):
        t0 = time.time()
        # from the pool: every ensemble batch, and an imitation session's first (or any round
        # before the labels hold both classes, when there is no reward to censor a gallery with)
        if method == "ensemble" or budget == cfg.batch or reward is None:
            if strategy == "random":
                pick = perm[~labelled[perm]][: cfg.batch]
            else:
                probs = member_probs(reward, features=feats) if reward is not None else None
                pick = rank(feats.embedding, labelled, probs, weights, k=cfg.batch, seed=seed)
            labelled[pick] = True
            new = pool.images[pick]
        else:  # imitation round: a censored gallery from the current reward, `batch` of it labelled
            gallery = to_uint8(sample(ctx.model, seeds_for(cfg.candidates, 20_000 + 100 * seed + budget),
                                      steps=cfg.steps, guidance=guidance_for(reward, DEFAULT_GUIDANCE.with_(weight=cfg.weight))))
            if strategy == "random":
                new = gallery[: cfg.batch]
            else:
                both = EncoderFeatures(ctx.model, np.concatenate([images, gallery]))
                seen = np.arange(len(both)) < len(images)
                pick = rank(both.embedding, seen, member_probs(reward, features=both), weights, k=cfg.batch, seed=seed)
                new = np.concatenate([images, gallery])[pick]
        select_s += time.time() - t0
        images = np.concatenate([images, new])
        labels = np.concatenate([labels, labeller.label(new)])
        needs_reward = budget in cfg.budgets or strategy == "active" or method == "imitation"
        if needs_reward:
            t1 = time.time()
            reward = _train(cfg, ctx, images, labels, seed, resume=reward if method == "imitation" else None)
            train_s += time.time() - t1
        if budget in cfg.budgets:
            ev, censored, judged = _evaluate(cfg, ctx, feature, reward)
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


def labels_to_target(points: list[dict], target: float = TARGET_PCT, kept: bool = False) -> int | None:
    """The smallest budget whose censored malign % is ≤ target (None: not reached in the grid).

    ``kept``: the smallest budget from which *every* later budget of the grid stays ≤ target. With
    150 judged images one lucky gallery (0 or 1 malign) reaches 1% at a true rate of 2-3%, and a
    grid of several budgets gives several chances, so the first hit alone flatters the noisier curve.
    """
    points = sorted(points, key=lambda p: p["budget"])
    if not kept:
        hits = [p["budget"] for p in points if p["malign_pct"] <= target]
        return min(hits) if hits else None
    first = None
    for p in points:
        first = (first or p["budget"]) if p["malign_pct"] <= target else None
    return first


def cell_path(out: Path, feature: str, strategy: str, seed: int) -> Path:
    return out / f"{feature}_{strategy}_s{seed}.json"


def run_active_bench(cfg: ActiveBenchConfig, model, oracle, pool, reference, out_dir="docs/bench/active",
                     cache_dir="runs/bench_cache", log=print) -> list[dict]:
    """Every cell, seeds outermost (a partial run has every feature and strategy for the first seeds)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = None
    cells = []
    for seed in range(cfg.seeds):
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


# ---- summary: table and plot ------------------------------------------------------------------

def load_cells(out_dir) -> list[dict]:
    cells = [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*_s*.json"))]
    return [c for c in cells if isinstance(c, dict) and "points" in c and "strategy" in c]


def _group(cells):
    by = {}
    for c in cells:
        by.setdefault((c["settings"]["feature"], c["strategy"]), []).append(c)
    return by


def summary_table(cells: list[dict]) -> str:
    """Markdown: per feature and strategy, malign % median [min–max over seeds] per budget, labels to ≤ 1%."""
    if not cells:
        return "(no cells yet)\n"
    budgets = sorted({p["budget"] for c in cells for p in c["points"]})
    head = ("| feature | strategy | seeds | " + " | ".join(f"malign % at {b}" for b in budgets)
            + f" | tv (floor) at {budgets[-1]} (median)"
            + f" | labels to ≤ {TARGET_PCT:g}% per seed (first hit) | median | ≤ {TARGET_PCT:g}% reached and kept per seed "
            f"| median | malign labels at {', '.join(map(str, budgets))} "
            f"(median) | recall vs baseline at {budgets[-1]} (median) | oracle-confident at {budgets[-1]} (median) |\n|"
            + "---|" * (len(budgets) + 11) + "\n")
    rows = []
    for (feature, strategy), group in sorted(_group(cells).items(), key=lambda kv: (kv[0][0], STRATEGIES.index(kv[0][1]))):
        group = sorted(group, key=lambda c: c["seed"])
        cols = []
        for b in budgets:
            vals = [p["malign_pct"] for c in group for p in c["points"] if p["budget"] == b]
            cols.append(f"{np.median(vals):.2f} [{min(vals):.2f}–{max(vals):.2f}]" if vals else "–")
        cols.append(_tv_cell(group, budgets[-1]))
        done = [c for c in group if c.get("complete")]
        reach = []
        for kept in (False, True):
            per_seed = [labels_to_target(c["points"], kept=kept) for c in done]
            reach += [" / ".join("–" if v is None else str(v) for v in per_seed) or "–",
                      _median_labels(per_seed, budgets[-1]) if per_seed else "–"]
        mal = [np.median([p["malign_labels"] for c in group for p in c["points"] if p["budget"] == b] or [np.nan])
               for b in budgets]
        rec = [p["recall_ratio"] for c in group for p in c["points"] if p["budget"] == budgets[-1] and p["recall_ratio"]]
        conf = [p["confident"] for c in group for p in c["points"] if p["budget"] == budgets[-1] and "confident" in p]
        rows.append(f"| {feature} | {strategy} | {len(group)}{'' if len(done) == len(group) else f' ({len(done)} complete)'} | "
                    + " | ".join(cols) + f" | {' | '.join(reach)} | " + " / ".join(f"{m:g}" for m in mal)
                    + f" | {f'{np.median(rec):.2f}×' if rec else '–'} | {f'{np.median(conf):.2f}' if conf else '–'} |")
    return head + "\n".join(rows) + "\n"


def _tv_cell(group: list[dict], budget: int) -> str:
    """Median tv over seeds at ``budget`` with the baseline's floor; "n/a" for cells saved before tv."""
    tvs = [p["tv"] for c in group for p in c["points"] if p["budget"] == budget and p.get("tv") is not None]
    if not tvs:
        return "n/a"
    floors = [c.get("baseline", {}).get("tv_floor") for c in group]
    floors += [p.get("tv_floor") for c in group for p in c["points"]]
    floors = [f for f in floors if f is not None]
    return f"{np.median(tvs):.3f}" + (f" ({floors[0]:.3f})" if floors else "")


def _median_labels(per_seed: list, top: int) -> str:
    """Median with 'not reached' counted as beyond the grid (so it is the largest)."""
    vals = sorted(per_seed, key=lambda v: float("inf") if v is None else v)
    mid = vals[(len(vals) - 1) // 2] if len(vals) % 2 else None
    if len(vals) % 2 == 0:
        a, b = vals[len(vals) // 2 - 1], vals[len(vals) // 2]
        mid = None if a is None or b is None else (a + b) / 2
    return f"not reached within {top}" if mid is None else f"{mid:g}"


def plot(cells: list[dict], path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    groups = _group(cells)
    features = sorted({f for f, _ in groups})
    if not features:
        return None
    fig, axes = plt.subplots(1, len(features), figsize=(4.2 * len(features), 3.6), squeeze=False)
    colors = {"random": "#777777", "active": "#d03030"}
    for ax, feature in zip(axes[0], features):
        for strategy in STRATEGIES:
            group = groups.get((feature, strategy))
            if not group:
                continue
            budgets = sorted({p["budget"] for c in group for p in c["points"]})
            vals = [[p["malign_pct"] for c in group for p in c["points"] if p["budget"] == b] for b in budgets]
            med = [np.median(v) for v in vals]
            ax.plot(budgets, med, "o-", color=colors[strategy], label=f"{strategy} (median of {len(group)})")
            ax.fill_between(budgets, [min(v) for v in vals], [max(v) for v in vals], color=colors[strategy], alpha=0.15)
        base = group[0]["baseline"]["malign_pct"]
        ax.axhline(TARGET_PCT, color="k", ls="--", lw=1, label="1% target")
        ax.set_title(f"{feature} (baseline {base:.1f}%)")
        ax.set_xlabel("labels viewed")
        ax.set_ylabel("oracle malign % (censored)")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0, top=100)
        ax.set_yticks([0, 0.5, 1, 2, 5, 10, 20, 50, 100])
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xticks(budgets)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarize(out_dir="docs/bench/active", plot_path=None, log=print) -> str:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = load_cells(out)
    table = summary_table(cells)
    (out / "summary.md").write_text(table)
    p = plot(cells, plot_path or out / "active_labelling.png")
    log(table + (f"plot: {p}" if p else ""))
    return table
