"""The feature sweep: one set of guidance settings on every feature in features.json.

``python -m censor sweep --out docs/bench/sweep``: for each feature, the ordinary benchmark
(``bench.run_bench``: 3 labelling seeds, n censored images, baseline from the same seeds, a grid)
with the ensemble for benign-dominant features and imitation rounds for malign-dominant ones; the
settings are the defaults (``defaults.DEFAULT_GUIDANCE``) unless given on the command line, the
same for every feature. Resumable: a feature whose JSON exists is read back, not rerun. Writes
``summary.md`` / ``summary.json``: one row per feature, one column per metric, the targets of the
faithful-censoring issue checked in each row.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from censor.bench.censoring import BenchConfig, guidance_kwargs, run_bench
from censor.bench.harness import machine
from censor.core.settings import GuidanceSettings
from censor.eval.features import load_features

CLASS_NAMES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")

# The targets every row is checked against (the faithful-censoring issue).
TARGETS = {
    "benign": dict(malign_pct=1.0, upper_pct=1.5, tv=0.05, tv_floor_factor=1.5, recall=0.95),
    "malign": dict(malign_pct=1.0, upper_pct=None, tv=0.08, tv_floor_factor=1.5, recall=0.90),
}


def sweep_config(feature: str, spec: dict, settings: GuidanceSettings, base: BenchConfig) -> BenchConfig:
    method = "imitation" if spec.get("dominance") == "malign" else "ensemble"
    return replace(base, feature=feature, method=method, reward=None, **guidance_kwargs(settings))


def verdict(result: dict) -> dict:
    """Which targets a bench row meets (None where a figure is missing)."""
    c, b = result["censored"], result["baseline"]
    t = TARGETS[result.get("dominance", "benign")]
    floor = c.get("tv_floor") if c.get("tv_floor") is not None else b.get("tv_floor")
    tv_bar = max(t["tv"], t["tv_floor_factor"] * floor) if floor is not None else t["tv"]
    met = dict(
        malign=c["malign_pct"] <= t["malign_pct"] and (t["upper_pct"] is None or c["ci_pct"][1] <= t["upper_pct"]),
        tv=None if c.get("tv") is None else c["tv"] <= tv_bar,
        recall=None if c.get("recall_ratio") is None else c["recall_ratio"] >= t["recall"],
        confident=c["confident"] >= b["confident"] if result.get("dominance") == "benign" else None,
    )
    met["all"] = all(v for v in met.values() if v is not None)
    return dict(met, tv_bar=tv_bar)


def run_sweep(settings: GuidanceSettings, model, oracle, pool, reference, out_dir, base: BenchConfig,
              features: list[str] | None = None, cache_dir=None, log=print) -> list[dict]:
    known = load_features()
    features = features or list(known)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(dict(guidance=settings.as_dict(), n=base.n, steps=base.steps,
                                                       seeds=base.seeds, budget=base.budget), indent=1))
    results = []
    for feature in features:
        cfg = sweep_config(feature, known[feature], settings, base)
        path = out / f"{cfg.name}.json"
        if path.is_file():
            log(f"{feature}: done before ({path.name})")
            results.append(json.loads(path.read_text()))
            continue
        log(f"{feature}: {cfg.method}, {cfg.name}")
        results.append(run_bench(cfg, model, oracle, pool, reference, out_dir=out, log=log, cache_dir=cache_dir))
        write_summary(results, out)
    write_summary(results, out)
    return results


HEADER = ("| feature | dominance | baseline malign % | censored malign % [95% CI] | tv (floor) | recall vs baseline | "
          "worst class recall | confident (base → censored) | other feature (base → censored) | "
          "guided ÷ unguided time | targets met |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|\n")


def _worst_class(c: dict) -> str:
    """The benign class whose recall fell most (class id: ratio), from the per-class recall ratios."""
    ratios = {k: v for k, v in (c.get("class_recall_ratio") or {}).items() if v is not None}
    if not ratios:
        return "n/a"
    k = min(ratios, key=ratios.get)
    return f"{CLASS_NAMES[int(k)]} {ratios[k]:.2f}×"


def _other(r: dict) -> str:
    """For a class feature the watermark share; for the watermark the largest class-share change."""
    b, c = r["baseline"], r["censored"]
    if r["config"]["feature"] == "watermark" or "watermark" in r["feature"]:
        if not b.get("class_shares") or not c.get("class_shares"):
            return "n/a"
        d = np.array(c["class_shares"]) - np.array(b["class_shares"])
        k = int(np.abs(d).argmax())
        return f"{CLASS_NAMES[k]} {100 * b['class_shares'][k]:.0f}% → {100 * c['class_shares'][k]:.0f}%"
    if b.get("watermark_share") is None or c.get("watermark_share") is None:
        return "n/a"
    return f"stamp {100 * b['watermark_share']:.1f}% → {100 * c['watermark_share']:.1f}%"


def _met(v: dict) -> str:
    names = [k for k in ("malign", "tv", "recall", "confident") if v[k] is not None]
    return "**all**" if v["all"] else "missed: " + ", ".join(k for k in names if not v[k])


def _f(x, fmt: str) -> str:
    return "n/a" if x is None else fmt.format(x)


def summary_table(results: list[dict], link: str | None = None) -> str:
    rows = []
    for r in results:
        b, c, v = r["baseline"], r["censored"], verdict(r)
        name = f"[{r['feature']}]({link}/{r['name']}.png)" if link else r["feature"]
        rows.append(f"| {name} | {r.get('dominance')} | {b['malign_pct']:.1f} | {c['malign_pct']:.2f} "
                    f"[{c['ci_pct'][0]:.2f}, {c['ci_pct'][1]:.2f}] | {_f(c.get('tv'), '{:.3f}')} "
                    f"({_f(c.get('tv_floor'), '{:.3f}')}) | {_f(c.get('recall_ratio'), '{:.2f}×')} | {_worst_class(c)} | "
                    f"{b['confident']:.2f} → {c['confident']:.2f} | {_other(r)} | "
                    f"{_f(c.get('time_ratio'), '{:.2f}×')} | {_met(v)} |")
    return HEADER + "\n".join(rows) + "\n"


def write_summary(results: list[dict], out: Path) -> None:
    out = Path(out)
    met = sum(verdict(r)["all"] for r in results)
    text = (f"Sweep: {len(results)} features, all targets met on {met}. Machine: {machine()}.\n\n"
            + summary_table(results, link="."))
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(
        [dict(feature=r["feature"], dominance=r.get("dominance"), name=r["name"], baseline=r["baseline"],
              censored={k: v for k, v in r["censored"].items()}, verdict=verdict(r)) for r in results], indent=1))
