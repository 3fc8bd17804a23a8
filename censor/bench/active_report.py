"""The active-labelling benchmark's report: labels to the target per cell, the summary table and the plot.

Read from the cells' JSON alone (``bench-active --summary``), so a table can be rebuilt without
rerunning anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

STRATEGIES = ("random", "active")
TARGET_PCT = 1.0


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
    import matplotlib  # heavy and only needed for the figure

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
        base = next(g[0]["baseline"]["malign_pct"] for (f, _), g in groups.items() if f == feature)
        for strategy in STRATEGIES:
            group = groups.get((feature, strategy))
            if not group:  # a run of one strategy
                continue
            budgets = sorted({p["budget"] for c in group for p in c["points"]})
            vals = [[p["malign_pct"] for c in group for p in c["points"] if p["budget"] == b] for b in budgets]
            med = [np.median(v) for v in vals]
            ax.plot(budgets, med, "o-", color=colors[strategy], label=f"{strategy} (median of {len(group)})")
            ax.fill_between(budgets, [min(v) for v in vals], [max(v) for v in vals], color=colors[strategy], alpha=0.15)
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
