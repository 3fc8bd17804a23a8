"""The rejection benchmark's tables (``bench-reject``): one run's modes, and several runs side by side
(docs/benchmarks.md), with each mode's seconds per accepted image measured and at the run's own rates."""

from __future__ import annotations

from censor.bench.harness import fmt, seed_share, tv_cell


def _per_kept(m: dict) -> str:
    return f"{m['drawn'] / m['kept']:.2f}×" if m["kept"] else "none kept"


def _floor(b: dict) -> str:
    return "–" if b.get("tv_floor") is None else f"– ({b['tv_floor']:.3f})"


def markdown_table(result: dict, link: str | None = None) -> str:
    b = result["baseline"]
    name = f"[{result['name']}]({link}/{result['name']}.png)" if link else result["name"]
    lines = [f"**{result['config']['feature']}** ({name}; {result['machine']}):", "",
             "| mode | malign % [95% CI] | tv (floor) | recall vs baseline | confident | drawn / kept (draws per kept) | "
             "dropped | capped seeds | s per accepted image | thresholds p |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| baseline (unguided) | {b['malign_pct']:.2f} [{b['ci_pct'][0]:.2f}, {b['ci_pct'][1]:.2f}] (n={b['n']}) | "
             f"{_floor(b)} | 1.00× | {b['confident']:.2f} | – | – | – | {b['s_per_image']:.3f} | – |"]
    for mode, m in result["modes"].items():
        ci = (f"{fmt(m['malign_pct'], missing='–')} [{m['ci_pct'][0]:.2f}, {m['ci_pct'][1]:.2f}] (n={m['n']})"
              if m["n"] else "– (none kept)")
        lines.append(f"| {mode} | {ci} | {tv_cell(m, b)} | {fmt(m['recall_ratio'], '{:.2f}×', '–')} | {fmt(m['confident'], missing='–')} | "
                     f"{m['drawn']} / {m['kept']} ({_per_kept(m)}) | {m['dropped']} | "
                     f"{m['capped_seeds']} | {fmt(m['s_per_accepted'], '{:.3f}', '–')} | "
                     f"{' / '.join(f'{t:.3f}' for t in m['thresholds']) if mode != 'guide' else '–'} |")
    m = next(iter(result["modes"].values()))
    lines += ["", f"Reward training {m['reward_train_s']:.0f} s and threshold cross-fitting {m['threshold_s']:.0f} s "
                  "per labelling seed (median), not included in the per-image times."]
    return "\n".join(lines) + "\n"


def normalised_s_per_accepted(result: dict, mode: str) -> float | None:
    """Seconds per accepted image at the run's own per-image rates (unguided: the timing at the start;
    guided: the ``guide`` galleries), times images sampled per kept, plus scoring: the same cost with
    the load of a shared machine taken out of the individual batches."""
    m = result["modes"][mode]
    if not m["kept"]:
        return None
    guide = result["modes"].get("guide")
    if mode in ("reject", "repaint"):
        rate = result["baseline"]["s_per_image"]
    elif guide is None:
        return None
    else:
        rate = guide["seconds"] / guide["kept"]
    if mode == "guide":
        return rate
    extra = sum(r["modes"][mode].get("scoring_s", 0.0) + r["modes"][mode].get("repaint", {}).get("seconds", 0.0)
                for r in result["runs"])
    return (m["sampled"] * rate + extra) / m["kept"]


def combined_table(results: list[dict], link: str = "bench") -> str:
    """One table over features: the three modes next to the unguided baseline (docs/benchmarks.md)."""
    lines = ["| feature (labelling seeds × images) | mode | malign % [95% CI] | tv (floor) | recall vs baseline | "
             "confident | drawn / kept (per kept) | capped seeds | s per accepted image, measured | "
             "at the run's per-image rates |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        b, c = r["baseline"], r["config"]
        feat = f"[{c['feature']}]({link}/{r['name']}.png) ({c['seeds']} × {seed_share(c['n'], c['seeds'])})"
        lines.append(f"| {feat} | baseline | {b['malign_pct']:.2f} [{b['ci_pct'][0]:.2f}, {b['ci_pct'][1]:.2f}] "
                     f"(n={b['n']}) | {_floor(b)} | 1.00× | {b['confident']:.2f} | – | – | {b['s_per_image']:.3f} | "
                     f"{b['s_per_image']:.3f} |")
        for mode, m in r["modes"].items():
            ci = (f"{m['malign_pct']:.2f} [{m['ci_pct'][0]:.2f}, {m['ci_pct'][1]:.2f}] (n={m['n']})" if m["n"]
                  else "– (none kept)")
            lines.append(f"| | {mode} | {ci} | {tv_cell(m, b)} | {fmt(m['recall_ratio'], '{:.2f}×', '–')} | {fmt(m['confident'], missing='–')} | "
                         f"{m['drawn']} / {m['kept']} ({_per_kept(m)}) | {m['capped_seeds']} | "
                         f"{fmt(m['s_per_accepted'], '{:.3f}', '–')} | {fmt(normalised_s_per_accepted(r, mode), '{:.3f}', '–')} |")
    return "\n".join(lines) + "\n"
