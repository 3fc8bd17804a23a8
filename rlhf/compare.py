"""Guidance against fine-tuning on the same human labels, judged by the oracle.

``python -m rlhf compare --feature bags --budget 100 --seeds 3``

Per labelling seed, every method gets the same simulated labeller (the censoring engine's):

- ``baseline``: the unguided sampler;
- ``censored``: the labeller views ``budget`` pool images, a reward ensemble is trained on them,
  and sampling is guided by it (the engine's best benchmark setting by default);
- ``rlhf``: the same reward ensemble, DDPO-IS policy gradients on LoRA adapters;
- ``d3po``: no reward model; the labeller marks ``budget`` images drawn in groups that share x_T,
  and benign ≻ malign pairs inside a group train LoRA adapters with the per-step DPO loss;
- ``d3po+censored``: the D3PO model, sampled with the reward guidance of ``censored``;
- ``distil``: the model fully fine-tuned to take ``censored``'s own steps (or learn its images; ``rlhf.distil``), sampled unguided.

Each fine-tuned model is then sampled with the same deterministic sampler and gallery seeds as
the baseline, so every difference in the table comes from the method. Every gallery is judged by the
benchmarks' one harness (``censor.bench.harness``): malign % (Wilson-pooled over seeds), tv of its
class histogram against the baseline's benign one (floor: a second unguided gallery from
``FLOOR_SEED``), recall against the real benign test images and the oracle-confident fraction.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from censor.bench.censoring import BenchConfig, collect_labels_and_train
from censor.bench.harness import TIMING_N, Arm, Harness, arms_grid, fmt, median, save, tv_cell
from censor.core.data import to_model_range, to_uint8
from censor.core.errors import CensorError
from censor.core.progress import part
from censor.core.settings import DEFAULT_GUIDANCE, ITERATIONS, MIN_BASELINE_MALIGN, REWARD_KIND
from censor.eval.judge import legend
from censor.labels.labeller import SimulatedLabeller
from censor.rewards.training import training_cost
from censor.sampling.guidance import guidance_for
from censor.sampling.loop import sample, seeds_for
from rlhf.adapters import save_adapter
from rlhf.configs import METHODS, REWARDED, CompareConfig  # noqa: F401 (CompareConfig: re-exported)
from rlhf.distil import DISTIL_SEED, keep_most_benign, most_benign, record_steps, train_distil
from rlhf.train import labels_from, reward_from, train_d3po, train_ddpo, value_for
from rlhf.verdict import verdict_markdown

def run_compare(cfg: CompareConfig, model, oracle, pool, reference: dict, out_dir: str | Path | None = None,
                cache_dir: str | Path | None = None, log=print, progress=None, adapter_dir: str | Path | None = None
                ) -> dict:
    """All methods on the same labels per seed; rows pool the seeds. Returns the JSON-ready result.

    Every method is an arm of the benchmark harness: one gallery (the same n seeds for every
    labelling seed), judged and timed against the same unguided baseline. ``adapter_dir``: where the
    first seed's fine-tuned models are saved (``<dir>/rlhf``, ``<dir>/d3po``, ``<dir>/distil``), so the studio
    can sample from them afterwards.
    """
    bar = _Bar(progress, cfg)
    h = Harness(model, oracle, reference, cfg.feature, cfg.steps, cfg.n, cache_dir=cache_dir,
                progress=bar.next("reference galleries"))
    labelling = BenchConfig(feature=cfg.feature, budget=cfg.budget, method="ensemble", members=cfg.members,
                            steps=cfg.steps)
    tuned_models = {}  # the first seed's fine-tuned models: their adapters are saved once the run is through

    def sampled(tuned, labels, train_s, reward=None, name="") -> Arm:
        t = time.time()
        images = sample_gallery(tuned, h.seeds, cfg, reward, bar.next(f"seed {seed_now[0] + 1}: {name} gallery"))
        return Arm(images, dict(labels=int(labels), train_s=round(train_s, 1),
                                sample_s_per_image=(time.time() - t) / len(images)))

    seed_now = [0]

    def arms(seed):
        seed_now[0] = seed
        methods = set(cfg.methods)
        if "baseline" in methods and seed == 0:  # one baseline gallery: the same images for every seed
            yield "baseline", Arm(h.baseline, dict(labels=0, train_s=0.0, sample_s_per_image=h.unguided_rate))
        reward = None
        if set(REWARDED) & methods:  # the bench's session: view, label, train the ensemble
            session = collect_labels_and_train(labelling, model, oracle, pool, seed, log,
                                               progress=bar.next(f"seed {seed + 1}: reward"))
            if session.reward is None:
                raise CensorError(f"seed {seed}: the {session.viewed} viewed images hold one class only; "
                                  "raise --budget")
            reward, reward_s = session.reward, session.reward.info["train_seconds"]
        if "censored" in methods:
            yield "censored", sampled(model, cfg.budget, reward_s, reward, "censored")
        if "rlhf" in methods:
            tuned = copy.deepcopy(model)
            t = time.time()
            ddpo = cfg.ddpo(seed)
            train_ddpo(tuned, reward_from(reward), ddpo, progress=bar.next(f"seed {seed + 1}: RLHF fine-tuning"),
                       value_fn=value_for(reward, ddpo))
            train_s = time.time() - t + reward_s
            if seed == 0:
                tuned_models["rlhf"] = tuned
            yield "rlhf", sampled(tuned, cfg.budget, train_s, name="rlhf")
        if {"d3po", "d3po+censored"} & methods:
            tuned = copy.deepcopy(model)
            d3po_labeller = SimulatedLabeller(oracle, cfg.feature, seed=1000 + seed)
            t = time.time()
            info = train_d3po(tuned, labels_from(d3po_labeller), cfg.d3po(seed),
                              progress=bar.next(f"seed {seed + 1}: D3PO fine-tuning"))
            d3po_s, d3po_labels = time.time() - t, d3po_labeller.viewed
            log(f"  seed {seed} d3po: {d3po_labels} labels, {sum(info['pairs'])} preference pairs")
            if seed == 0:
                tuned_models["d3po"] = tuned
            if "d3po" in methods:
                yield "d3po", sampled(tuned, d3po_labels, d3po_s, name="d3po")
            if "d3po+censored" in methods:
                yield "d3po+censored", sampled(tuned, d3po_labels + cfg.budget, d3po_s + reward_s, reward,
                                               "d3po+censored")
        if "distil" in methods:  # the censored sampler on seeds apart from the gallery's, then its steps or images are learnt
            tuned, t = copy.deepcopy(model), time.time()
            data = distil_data(model, seeds_for(cfg.distil.images, DISTIL_SEED + seed), cfg, reward,
                               bar.next(f"seed {seed + 1}: distil data"))
            info = train_distil(tuned, data, replace(cfg.distil, seed=seed),
                                progress=bar.next(f"seed {seed + 1}: distil fine-tuning"))
            log(f"  seed {seed} distil: {info['images']} censored images, loss {np.mean(info['losses'][:20]):.4f} "
                f"-> {np.mean(info['losses'][-20:]):.4f}")
            if seed == 0:
                tuned_models["distil"] = tuned
            yield "distil", sampled(tuned, cfg.budget, time.time() - t + reward_s, name="distil")

    def logged(method, row):
        log(f"  seed {row['seed']} {method:>14}: {row['malign_pct']:.2f}% malign [{row['ci_pct'][0]:.2f}, "
            f"{row['ci_pct'][1]:.2f}] (n={row['n']})  tv {row['tv']:.3f}  recall {fmt(row['recall_ratio'], '{:.2f}×')}  "
            f"labels {row['labels']}  train {row['train_s']:.0f}s")

    runs, first = h.run(cfg.seeds, arms, on_row=logged)
    for name, tuned in tuned_models.items() if adapter_dir is not None else ():  # only a finished run's
        # steps: what it was judged at (and a distil of the sampler's steps learned exactly those timesteps)
        save_adapter(tuned.unet, Path(adapter_dir) / name, dict(method=name, feature=cfg.feature, steps=cfg.steps,
                                                                 distil_target=cfg.distil.target))
    runs = {m: runs.get(m, []) for m in cfg.methods}
    rows = {m: pool_seeds(h, r) for m, r in runs.items() if r}
    result = dict(config=asdict(cfg), **h.header(), baseline_recall=h.judge_all.base_recall,
                  baseline=h.baseline_row(sample_s_per_image=h.unguided_rate), methods=rows, runs=runs)
    if out_dir is not None:
        stem = f"compare_{cfg.feature}_b{cfg.budget}"
        folder = save(out_dir, stem, result, markdown_table(result, grid=f"{stem}_grid.png"))
        plot(result, folder / f"{stem}.png")
        arms_grid(cfg.feature, first).save(folder / f"{stem}_grid.png")
    return result


def censoring(reward, cfg: CompareConfig):
    """The ``censored`` arm's guidance (None without a reward)."""
    return guidance_for(reward, DEFAULT_GUIDANCE.with_(weight=cfg.guidance_weight)) if reward is not None else None


def sample_gallery(model, seeds, cfg: CompareConfig, reward=None, progress=None) -> np.ndarray:
    return to_uint8(sample(model, seeds, steps=cfg.steps, guidance=censoring(reward, cfg), progress=progress))


def distil_data(model, seeds, cfg: CompareConfig, reward, progress=None):
    """What ``distil`` learns from: the censored sampler's images, or its recorded steps, less the ``drop``
    fraction the reward scores most malign."""
    if cfg.distil.target == "steps":
        steps = record_steps(model, seeds, cfg.steps, censoring(reward, cfg), progress)
        return steps.subset(most_benign(steps.images, reward, cfg.distil.drop))
    return keep_most_benign(to_model_range(sample_gallery(model, seeds, cfg, reward, progress)), reward, cfg.distil.drop)


# What each stage of a comparison costs, in unguided image-steps of the UNet (2 ms each on the 2-core CPU):
# a guided step about 3, a reward head iteration about 3 (``training_cost``'s unit), a fine-tuning step
# (a forward and a backward) about 3 on top of its rollout's, a distil step the same per image. They size the
# stages of the bar.
GUIDED_STEP, HEAD_ITERATION, TRAINING_STEP = 3.0, 3.0, 3.0


class _Bar:
    """One bar over the whole comparison: a stretch per stage, handed out in the order the run makes them."""

    def __init__(self, progress, cfg: CompareConfig):
        self.progress, self.start = progress, 0.0
        methods, n, steps = set(cfg.methods), cfg.n, cfg.steps
        unguided, guided = n * steps, GUIDED_STEP * n * steps
        groups = cfg.budget // cfg.d3po_group_size
        self.costs = {"reference galleries": 2 * unguided + min(n, TIMING_N) * steps,
                      "reward": HEAD_ITERATION * training_cost(cfg.budget, cfg.members, ITERATIONS, REWARD_KIND),
                      "RLHF fine-tuning": cfg.epochs * cfg.ddpo_images * cfg.train_steps * (1 + TRAINING_STEP),
                      "D3PO fine-tuning": groups * cfg.d3po_group_size * cfg.train_steps * (2 + TRAINING_STEP),
                      "censored gallery": guided, "rlhf gallery": unguided, "d3po gallery": unguided,
                      "d3po+censored gallery": guided, "distil gallery": unguided,
                      "distil data": GUIDED_STEP * cfg.distil.images * steps,
                      "distil fine-tuning": cfg.distil.steps * cfg.distil.batch_size * TRAINING_STEP}
        per_seed = [f"{m} gallery" for m in METHODS if m != "baseline" and m in methods]
        if set(REWARDED) & methods:
            per_seed.append("reward")
        if "distil" in methods:
            per_seed += ["distil data", "distil fine-tuning"]
        if "rlhf" in methods:
            per_seed.append("RLHF fine-tuning")
        if {"d3po", "d3po+censored"} & methods:
            per_seed.append("D3PO fine-tuning")
        self.total = self.costs["reference galleries"] + cfg.seeds * sum(self.costs[k] for k in per_seed)

    def next(self, stage: str):
        """The next stage's stretch, labelled (``stage`` after the seed: its cost's name)."""
        size = self.costs[stage.split(": ", 1)[-1]] / self.total
        out = part(self.progress, self.start, size, stage)
        self.start = min(1.0, self.start + size)
        return out


def pool_seeds(h: Harness, runs: list[dict]) -> dict:
    """One method's row: the harness's pooling over seeds (Wilson malign %, tv of the pooled class
    histogram and its floor, mean recall ratio and confident), plus labels, training and sampling times.
    ``time_ratio``: the method's sampling seconds per image over unguided sampling's (the baseline's)."""
    row = h.pool(runs)
    per_image = median(runs, "sample_s_per_image")
    row.update(labels=float(np.mean([r["labels"] for r in runs])),
               recall=float(np.mean([r["recall"] for r in runs])),
               train_s=median(runs, "train_s"), sample_s_per_image=per_image, time_ratio=h.time_ratio(per_image))
    return row


def markdown_table(result: dict, grid: str | None = None) -> str:
    """The comparison table, its verdicts and notes; ``grid``: the file name of its image grid, linked."""
    lines = [f"Measured on {result['machine']}, model {result.get('model_fingerprint', '?')}.\n",
             "| method | malign % [95% CI] | tv (floor) | recall vs baseline | confident | human labels | training s | "
             "sampling s / image |", "|---|---|---|---|---|---|---|---|"]
    for name, r in result["methods"].items():
        lines.append(f"| {name} | {r['malign_pct']:.2f} [{r['ci_pct'][0]:.2f}, {r['ci_pct'][1]:.2f}] (n={r['n']}) | "
                     f"{tv_cell(r)} | {fmt(r['recall_ratio'], '{:.2f}×')} | {r['confident']:.2f} | {r['labels']:.0f} | {r['train_s']:.0f} | "
                     f"{r['sample_s_per_image']:.3f} |")
    notes = table_notes(result) + ([grid_note(result, grid)] if grid else [])
    # the table in words: one line per method
    return "\n".join(lines) + "\n\n" + verdict_markdown(result) + "\n" + "\n\n".join(notes) + "\n"


def grid_note(result: dict, grid: str) -> str:
    """The line that links a comparison's image grid and says what its rows are."""
    names = ", ".join(result["methods"])
    return (f"[Grid]({grid}): two rows of 10 per method from the same gallery seeds (first labelling seed), "
            f"top to bottom {names}; the oracle's malign images framed red.")


TABLE_LEGEND = legend("malign", "tv", "recall", "confident")


def table_notes(result: dict) -> list[str]:
    """The table's legend and, under a baseline too poor in the feature, the warning that no row can
    show a drop (``MIN_BASELINE_MALIGN``), so an all-zero column is not read as success."""
    notes = [TABLE_LEGEND]
    base, feature = result.get("baseline") or {}, result.get("config", {}).get("feature", "malign")
    if "malign" in base and base["malign"] < MIN_BASELINE_MALIGN:
        notes.append(f"⚠ the baseline holds {base['malign']} {feature} images in {base['n']}: no method's figure can "
                     "show a drop; raise the gallery images per method")
    return notes


def plot(result: dict, path: str | Path) -> None:
    """Malign % (with its interval) against the human labels each method spent."""
    import matplotlib  # heavy and only needed for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    rows = result["methods"]
    span = max([r["labels"] for r in rows.values()] + [1])
    for i, (name, r) in enumerate(rows.items()):
        lo, hi = r["ci_pct"]
        # methods that spend the same labels sit side by side instead of hiding each other
        dx = (i - (len(rows) - 1) / 2) * 0.012 * span
        # clamped: at 0% the Wilson bound sits a rounding error above the point, and matplotlib refuses that
        yerr = [[max(0.0, r["malign_pct"] - lo)], [max(0.0, hi - r["malign_pct"])]]
        ax.errorbar([r["labels"] + dx], [r["malign_pct"]], yerr=yerr,
                    fmt="o", capsize=4, label=name)
    ax.set_xlabel("human labels spent")
    ax.set_ylabel("oracle malign %")
    ax.set_title(f"{result['config']['feature']}: guidance vs fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
