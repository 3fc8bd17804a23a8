"""The benchmark commands of ``python -m censor``: each parses its options and calls one harness run.

A benchmark's options come from its config dataclass (``add_config_args``: the default, type and
choices of each field) and the guidance knobs from ``core.settings`` (``add_settings_args``), so
no default is restated here.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, fields, replace
from pathlib import Path

from censor.bench.active import ActiveBenchConfig, run_active_bench
from censor.bench.active_config import CENSOR_ROUTES
from censor.bench.active_report import STRATEGIES, summarize
from censor.bench.censoring import BenchConfig, collect, collect_labels_and_train, guidance_kwargs, markdown_rows, run_bench
from censor.bench.fewshot import VARIANTS, run_fewshot, save
from censor.bench.reject import MODES as REJECT_MODES
from censor.bench.reject import run_reject_bench
from censor.bench.reject_report import markdown_table as reject_table
from censor.bench.sweep import run_sweep, summary_table, write_summary
from censor.bench.throughput import ARCHS, MODES, markdown, measure_throughput, random_arch
from censor.bench.timing import time_guidance
from censor.cli.args import (add_guidance_args, add_model_args, add_settings_args, guidance_from_args, model_from_args,
                             positive_int, runtime_from_args)
from censor.core.data import DEFAULT_DATA_DIR, load_watermarked
from censor.core.errors import CensorError
from censor.core.settings import DEFAULT_GUIDANCE, ITERATIONS, METHODS, GuidanceSettings, RewardSettings
from censor.diffusion.models import EMBEDDED_MODEL_DIR, load_diffusion
from censor.diffusion.runtime import apply_runtime
from censor.eval.features import load_features
from censor.eval.oracle import load_oracle, load_reference
from censor.labels.pool import load_pool
from censor.sampling.rejection import DEFAULT_CAP_FACTOR
from censor.sampling.thresholds import DEFAULT_FOLDS, DEFAULT_RECALL, THRESHOLD_SCALE, THRESHOLD_SCALES
from censor.sampling.repaint import REPAINT_ATTEMPTS, REPAINT_DEFAULTS, REPAINT_HARMONIZE, REPAINT_START, REPAINT_STEPS

CACHE = "runs/bench_cache"  # the shared unguided baselines, draws and first-round rewards
CHOICES = dict(method=METHODS, reward=RewardSettings.knobs()["kind"].choices, init=("random", "backbone", "imagenet"),
               strategies=STRATEGIES, censor=CENSOR_ROUTES, threshold_scale=THRESHOLD_SCALES)
HELP = dict(
    budget="images the labeller views per round", rounds="imitation rounds",
    n="censored images in total, split evenly over the labelling seeds; the baseline has n",
    flip_rate="share of labels the labeller gets wrong",
    auto="automatic strength per reward (the studio's default), from --weight up",
    weight=GuidanceSettings.knobs()["weight"].help, batch="labels added between rankings",
    candidates="imitation: censored images per round",
    censor="bench-active: guide (guided sampling) or repaint (the unguided gallery, doubted images repainted)",
    folds="bench-active --censor repaint: folds of the cross-fitted threshold",
    threshold_scale="the cross-fitted threshold as the fold rewards score, or carried to the final reward (the share "
                    "of the unlabelled pool the folds doubt)",
    paste="--boxes: pasted copies of each boxed mark onto benign labels, as more malign ones (0: none)",
    boxes="region feedback: the labeller also boxes the stamp on every malign image (watermark, --reward local-patch)",
)
BENCH_FIELDS = ("feature", "budget", "method", "reward", "members", "alpha", "iterations", "rounds", "n", "steps",
                "seeds", "flip_rate", "init", "auto", "boxes")


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def add_config_args(p: argparse.ArgumentParser, cls, names, helps: dict | None = None, **defaults) -> None:
    """One ``--field-name`` option per named field of a benchmark's config dataclass: its default
    (or the one given), whole numbers as positive counts, a flag for a bool, choices from ``CHOICES``."""
    by_name = {f.name: f for f in fields(cls)}
    for name in names:
        default = defaults.get(name, _default(by_name[name]))
        flag, help_ = "--" + name.replace("_", "-"), {**HELP, **(helps or {})}.get(name)
        if isinstance(default, bool):
            p.add_argument(flag, dest=name, action="store_true", default=default, help=help_)
        elif isinstance(default, (tuple, list)):
            p.add_argument(flag, dest=name, nargs="+", default=list(default), help=help_,
                           type=positive_int if all(isinstance(x, int) for x in default) else str,
                           choices=CHOICES.get(name))
        else:
            kind = positive_int if isinstance(default, int) else float if isinstance(default, float) else str
            p.add_argument(flag, dest=name, type=kind, default=default, choices=CHOICES.get(name), help=help_)


def config_from_args(cls, a, names, **extra):
    return cls(**{name: getattr(a, name) for name in names}, **extra)


def _inputs(a):
    """The model, oracle, pool and reference every benchmark judges with."""
    model = load_diffusion(a.model)
    return model, load_oracle(), load_pool(model_dir=a.model), load_reference()


def _paths(p: argparse.ArgumentParser, out: str, cache: bool = True) -> None:
    p.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    p.add_argument("--out", default=out, help="folder for the JSON, markdown and grids")
    if cache:
        p.add_argument("--cache", default=CACHE, help="where the shared unguided baseline is kept")


def cmd_bench(a) -> None:
    cfg = config_from_args(BenchConfig, a, BENCH_FIELDS, **guidance_kwargs(guidance_from_args(a)))
    result = run_bench(cfg, *_inputs(a), out_dir=a.out, cache_dir=a.cache)
    print(markdown_rows([result]))


def cmd_bench_timing(a) -> None:
    model = load_diffusion(a.model)
    cfg = BenchConfig(feature=a.feature, budget=a.budget, steps=a.steps, seeds=1)
    reward = collect_labels_and_train(cfg, model, load_oracle(), load_pool(model_dir=a.model), seed=0).reward
    if reward is None:
        raise CensorError(f"the {a.budget} viewed images hold one class only; raise --budget")
    result = time_guidance(model, reward, n=a.n, steps=a.steps, reps=a.reps,
                           settings=guidance_from_args(a).with_(every=1), everies=tuple(a.every_list))
    result["feature"] = a.feature
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))
    print(f"{result['machine']}, {a.n} images x {a.steps} steps, median of {a.reps}:")
    for name, ratio in result["ratio_median"].items():
        print(f"  {name}: {result['median_s'][name]:.1f}s vs {result['median_s']['unguided']:.1f}s unguided = {ratio:.2f}x")


def cmd_bench_table(a) -> None:
    rows = collect(a.out)
    if not rows:
        raise CensorError(f"no bench results (*.json) in {a.out}")
    print(markdown_rows(rows, link=a.link), end="")


def cmd_fewshot(a) -> None:
    test = load_watermarked("test", a.data)  # real images with known truth; the oracle only labels the pool
    variants = [v for v in VARIANTS if f"{v[0]}/{v[1]}" in a.variants] if a.variants else VARIANTS
    model = load_diffusion(a.model)
    rows = run_fewshot(a.feature, a.budget, model, load_oracle(), load_pool(model_dir=a.model),
                       test.images[: a.test], test.labels[: a.test], test.watermark[: a.test], variants=variants,
                       iterations=a.iterations, seed=a.seed)
    print(save(rows, a.feature, a.out).read_text(), end="")


ACTIVE_FIELDS = ("features", "strategies", "seeds", "budgets", "batch", "n", "steps", "weight", "candidates",
                 "iterations", "reward", "censor", "folds", "threshold_scale", "boxes", "paste")


def cmd_bench_active(a) -> None:
    if a.summary:
        summarize(a.out)
        return
    cfg = config_from_args(ActiveBenchConfig, a, ACTIVE_FIELDS,
                           weights=dict(ActiveBenchConfig().weights, malign=a.malign_weight))
    run_active_bench(cfg, *_inputs(a), out_dir=a.out, cache_dir=a.cache, only_seed=a.only_seed)


def cmd_bench_throughput(a) -> None:
    model = apply_runtime(random_arch(a.arch), runtime_from_args(a)) if a.arch else model_from_args(a)
    result = measure_throughput(model, n=a.n, steps=a.steps, reps=a.reps, modes=a.modes.split(","))
    text = markdown(result)
    print(text)
    if a.out:
        out = Path(a.out)
        if not out.parent.exists():
            raise CensorError(f"output folder {out.parent} does not exist")
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(text + "\n")


def register_bench(sub) -> None:
    b = sub.add_parser("bench", help="censoring benchmark with the simulated labeller and the oracle")
    add_config_args(b, BenchConfig, BENCH_FIELDS)
    add_guidance_args(b)
    _paths(b, "docs/bench")
    b.set_defaults(fn=cmd_bench)

    f = sub.add_parser("fewshot", help="few-shot accuracy of each reward kind and initialisation")
    f.add_argument("--feature", default="bags")
    f.add_argument("--budget", type=positive_int, default=100)
    f.add_argument("--iterations", type=positive_int, default=ITERATIONS)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--test", type=positive_int, default=2000, help="real test images to score on")
    f.add_argument("--variants", nargs="*", default=None, help="e.g. ddpm-encoder/random resnet18/backbone")
    f.add_argument("--data", default=str(DEFAULT_DATA_DIR))
    _paths(f, "docs/bench", cache=False)
    f.set_defaults(fn=cmd_fewshot)

    g = sub.add_parser("bench-timing", help="wall time of time guidance vs unguided sampling, interleaved reps")
    g.add_argument("--feature", default="bags")
    g.add_argument("--budget", type=positive_int, default=100)
    g.add_argument("--n", type=positive_int, default=64)
    g.add_argument("--steps", type=positive_int, default=25)
    g.add_argument("--reps", type=positive_int, default=5)
    g.add_argument("--every-list", type=positive_int, nargs="+", default=[1, 2, 4],
                   help="time guidance: also time the gradient reused every k-th step")
    add_guidance_args(g)
    g.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    g.add_argument("--json", default=None)
    g.set_defaults(fn=cmd_bench_timing)

    tp = sub.add_parser("bench-throughput", help="images/s and peak GPU memory, unguided vs each guidance kind")
    add_model_args(tp)
    tp.add_argument("--arch", default=None, choices=ARCHS,
                    help="a random model with this hub architecture instead of --model (cost does not depend on weights)")
    tp.add_argument("--n", type=positive_int, default=8)
    tp.add_argument("--steps", type=positive_int, default=25)
    tp.add_argument("--reps", type=positive_int, default=3)
    tp.add_argument("--modes", default=",".join(MODES))
    tp.add_argument("--out", default=None, help="JSON path (a .md beside it)")
    tp.set_defaults(fn=cmd_bench_throughput)

    t = sub.add_parser("bench-table", help="one markdown table of every saved bench result in a folder")
    t.add_argument("--out", default="docs/bench")
    t.add_argument("--link", default="bench", help="relative folder the grid links point to")
    t.set_defaults(fn=cmd_bench_table)

    add_reject_parser(sub)
    add_sweep_parser(sub)

    ab = sub.add_parser("bench-active", help="active vs random labelling: labels needed to reach <= 1%% malign")
    add_config_args(ab, ActiveBenchConfig, ACTIVE_FIELDS, helps=dict(n="censored images judged per budget"))
    ab.add_argument("--malign-weight", type=float, default=ActiveBenchConfig().weights["malign"],
                    help="weight of the ranking's likely-malign term (0: uncertainty, disagreement and coverage "
                         "only, as in the first issue-8 runs)")
    _paths(ab, "docs/bench/active")
    ab.add_argument("--summary", action="store_true", help="only rebuild the table and plot from saved cells")
    ab.add_argument("--only-seed", type=int, default=None,
                    help="run this labelling seed's cells alone (one process per seed shares the cores and the folder)")
    ab.set_defaults(fn=cmd_bench_active)


REJECT_FIELDS = ("feature", "budget", "method", "reward", "members", "alpha", "iterations", "rounds", "n", "steps", "seeds",
                 "boxes")


def add_reject_parser(sub) -> None:
    r = sub.add_parser("bench-reject", help="rejection vs guidance vs guidance + rejection on the same reward")
    add_config_args(r, BenchConfig, REJECT_FIELDS, helps=dict(n="gallery images in total over the labelling seeds"),
                    feature="bags", steps=25)
    # every guidance knob but the hinge threshold: --threshold is the rejection threshold here
    add_settings_args(r, GuidanceSettings, "guidance", rename={"kind": "--guidance"}, skip=("threshold",),
                      defaults=replace(DEFAULT_GUIDANCE, kind=None))
    r.add_argument("--threshold", dest="reject_threshold", type=float, default=None,
                   help="keep images with P(benign) above this (default: cross-fitted, held-out malign recall >= --recall)")
    r.add_argument("--recall", type=float, default=DEFAULT_RECALL)
    r.add_argument("--folds", type=positive_int, default=DEFAULT_FOLDS)
    r.add_argument("--threshold-scale", choices=THRESHOLD_SCALES, default=THRESHOLD_SCALE, help=HELP["threshold_scale"])
    r.add_argument("--cap-factor", type=float, default=DEFAULT_CAP_FACTOR, help="cap on draws, x the requested count")
    r.add_argument("--modes", default=",".join(REJECT_MODES), help=f"comma-separated, some of {', '.join(REJECT_MODES)}")
    r.add_argument("--repaint-start", type=float, default=REPAINT_START, help="repaint from this fraction of T")
    r.add_argument("--repaint-attempts", type=positive_int, default=REPAINT_ATTEMPTS)
    r.add_argument("--repaint-harmonize", type=int, default=REPAINT_HARMONIZE, help="RePaint resampling passes per step")
    r.add_argument("--repaint-steps", type=positive_int, default=REPAINT_STEPS,
                   help="repaint's own respacing of T (the steps below --repaint-start run)")
    _paths(r, "docs/bench")
    r.set_defaults(fn=cmd_bench_reject)


def cmd_bench_reject(a) -> None:
    if a.cap_factor < 1:
        raise CensorError("--cap-factor must be >= 1")
    cfg = config_from_args(BenchConfig, a, REJECT_FIELDS, **guidance_kwargs(guidance_from_args(a)))
    result = run_reject_bench(cfg, *_inputs(a), out_dir=a.out, cache_dir=a.cache, threshold=a.reject_threshold,
                              recall=a.recall, folds=a.folds, cap_factor=a.cap_factor, modes=a.modes.split(","),
                              scale=a.threshold_scale,
                              repaint={k: v for k, v in dict(start=a.repaint_start, attempts=a.repaint_attempts,
                                                             harmonize=a.repaint_harmonize, steps=a.repaint_steps).items()
                                       if v != REPAINT_DEFAULTS[k]})
    print(reject_table(result, link="bench"), end="")


SWEEP_FIELDS = ("budget", "members", "alpha", "iterations", "rounds", "n", "steps", "seeds")


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="one set of guidance settings on every feature: one summary table")
    p.add_argument("--features", nargs="+", default=None, help="default: every feature in censor/features.json")
    add_config_args(p, BenchConfig, SWEEP_FIELDS, steps=25)
    _paths(p, "docs/bench/sweep")
    p.add_argument("--summary", action="store_true", help="only rebuild summary.md from the saved rows")
    add_guidance_args(p)
    add_config_args(p, BenchConfig, ("auto",))
    p.set_defaults(fn=cmd_sweep)


def cmd_sweep(a) -> None:
    out = Path(a.out)
    if a.summary:
        write_summary(collect(out), out)
        print((out / "summary.md").read_text())
        return
    for f in a.features or []:
        if f not in load_features():
            raise CensorError(f"unknown feature {f!r}; known: {', '.join(load_features())}")
    base = config_from_args(BenchConfig, a, SWEEP_FIELDS + ("auto",))
    results = run_sweep(guidance_from_args(a), *_inputs(a), out, base, a.features, cache_dir=a.cache)
    print(summary_table(results))
