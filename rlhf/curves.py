"""Malign % and fidelity against CPU minutes of fine-tuning: one curve per run, censored sampling beside it.

``python -m rlhf curve --feature bags --budget 100 --at 2 5 10 20 --full --lr 1e-4``

The labels and the reward ensemble are ``rlhf compare``'s (the same simulated session). DDPO trains
once, to the last epoch of ``at``; at each epoch of ``at`` the network is copied, and every copy then
draws the gallery seeds and is judged by the benchmark harness like any arm. A point's x is what it
cost to reach: the reward's training seconds plus the fine-tuning seconds until that epoch (sampling
and judging the galleries excluded). Censored sampling with the same reward is one point at the
reward's seconds; its extra price is paid per image instead (``time_ratio``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from censor.bench.censoring import BenchConfig, collect_labels_and_train
from censor.bench.harness import Arm, Harness, arms_grid, fmt, save, tv_cell
from censor.core.errors import CensorError
from rlhf.compare import TABLE_LEGEND, grid_note, pool_seeds, sample_gallery
from rlhf.configs import CompareConfig
from rlhf.train import reward_from, train_ddpo, value_for
from rlhf.verdict import TV_OK, verdict_markdown


@dataclass
class CurveConfig:
    """A curve's run: the comparison's settings (labels, galleries, DDPO) and the epochs to judge."""

    compare: CompareConfig = field(default_factory=lambda: CompareConfig(seeds=1, methods=("baseline", "censored",
                                                                                           "rlhf")))
    at: tuple[int, ...] = (2, 5, 10, 20)  # DDPO epochs at which the network is judged

    def __post_init__(self):
        self.at = tuple(sorted(set(int(e) for e in self.at)))
        if not self.at or self.at[0] < 1:
            raise CensorError(f"curve epochs must be positive, got {self.at}")


def run_curve(cfg: CurveConfig, model, oracle, pool, reference: dict, out_dir=None, cache_dir=None, log=print) -> dict:
    """The baseline, censored sampling and DDPO after each epoch of ``cfg.at``; rows pool the labelling seeds."""
    c = cfg.compare
    h = Harness(model, oracle, reference, c.feature, c.steps, c.n, cache_dir=cache_dir)
    labelling = BenchConfig(feature=c.feature, budget=c.budget, method="ensemble", members=c.members, steps=c.steps)

    def drawn(m, record, reward=None) -> Arm:
        t = time.time()
        images = sample_gallery(m, h.seeds, c, reward)
        return Arm(images, dict(record, sample_s_per_image=(time.time() - t) / len(images)))

    def arms(seed):
        if seed == 0:
            yield "baseline", Arm(h.baseline, dict(labels=0, train_s=0.0, sample_s_per_image=h.unguided_rate))
        session = collect_labels_and_train(labelling, model, oracle, pool, seed, log)
        if session.reward is None:
            raise CensorError(f"seed {seed}: the {session.viewed} viewed images hold one class only; raise --budget")
        reward, reward_s = session.reward, session.reward.info["train_seconds"]
        yield "censored", drawn(model, dict(labels=c.budget, train_s=reward_s), reward)
        tuned, copies = copy.deepcopy(model), []

        def keep(epoch, net, seconds):
            if epoch in cfg.at:
                copies.append((epoch, copy.deepcopy(net).eval().requires_grad_(False), seconds))

        ddpo = c.ddpo(seed, epochs=cfg.at[-1])
        train_ddpo(tuned, reward_from(reward), ddpo, on_epoch=keep, value_fn=value_for(reward, ddpo))
        for epoch, net, seconds in copies:
            at = copy.copy(tuned)  # the same model, with the network as it was after ``epoch``
            at.unet = net
            yield f"rlhf@{epoch}", drawn(at, dict(labels=c.budget, epoch=epoch, train_s=round(seconds + reward_s, 1)))

    def logged(name, row):
        log(f"  seed {row['seed']} {name:>10}: {row['malign_pct']:.2f}% malign  tv {row['tv']:.3f}  "
            f"recall {fmt(row['recall_ratio'], '{:.2f}×')}  train {row['train_s']:.0f}s")

    runs, first = h.run(c.seeds, arms, on_row=logged)
    rows = {name: pool_seeds(h, r) for name, r in runs.items()}
    result = dict(config=dict(compare=asdict(c), at=list(cfg.at)), **h.header(),
                  baseline=h.baseline_row(sample_s_per_image=h.unguided_rate), methods=rows, runs=runs)
    if out_dir is not None:
        stem = f"curve_{c.feature}_b{c.budget}"
        folder = save(out_dir, stem, result, markdown_curve(result, grid=f"{stem}_grid.png"))
        plot_curve(result, folder / f"{stem}.png")
        arms_grid(c.feature, first).save(folder / f"{stem}_grid.png")
    return result


def markdown_curve(result: dict, grid: str | None = None) -> str:
    lines = [f"Measured on {result['machine']}, model {result.get('model_fingerprint', '?')}.\n",
             "| point | CPU s to reach it | malign % [95% CI] | tv (floor) | recall vs baseline | confident |",
             "|---|---|---|---|---|---|"]
    for name, r in result["methods"].items():
        lines.append(f"| {name} | {r['train_s']:.0f} | {r['malign_pct']:.2f} [{r['ci_pct'][0]:.2f}, {r['ci_pct'][1]:.2f}]"
                     f" (n={r['n']}) | {tv_cell(r)} | {fmt(r['recall_ratio'], '{:.2f}×')} | {r['confident']:.2f} |")
    tail = TABLE_LEGEND + ("\n\n" + grid_note(result, grid) if grid else "")
    return "\n".join(lines) + "\n\n" + verdict_markdown(result) + "\n" + tail + "\n"


def plot_curve(result: dict, path: str | Path) -> None:
    """Two panels over CPU minutes: malign % with its interval, and tv with its floor and target."""
    import matplotlib  # heavy and only needed for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["methods"]
    curve = [r for name, r in rows.items() if name.startswith("rlhf@")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    x = [r["train_s"] / 60 for r in curve]
    a.errorbar(x, [r["malign_pct"] for r in curve], fmt="o-", capsize=3, label="RLHF (DDPO)",
               yerr=[[max(0.0, r["malign_pct"] - r["ci_pct"][0]) for r in curve],
                     [max(0.0, r["ci_pct"][1] - r["malign_pct"]) for r in curve]])
    b.plot(x, [r["tv"] for r in curve], "o-", label="RLHF (DDPO)")
    for name, style in (("baseline", "k--"), ("censored", "g:")):
        if name in rows:
            a.axhline(rows[name]["malign_pct"], color=style[0], ls=style[1:], label=name)
            b.axhline(rows[name]["tv"], color=style[0], ls=style[1:], label=name)
    b.axhline(TV_OK, color="r", lw=0.8, label=f"target {TV_OK}")
    if rows.get("baseline", {}).get("tv_floor") is not None:
        b.axhline(rows["baseline"]["tv_floor"], color="grey", lw=0.8, ls="-.", label="floor")
    feature = result["config"]["compare"]["feature"]
    a.set(xlabel="CPU minutes (reward + fine-tuning)", ylabel="oracle malign %", title=f"{feature}: malign")
    b.set(xlabel="CPU minutes (reward + fine-tuning)", ylabel="tv to baseline's classes", title="fidelity")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
