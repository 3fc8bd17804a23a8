"""The benchmark commands of ``python -m censor``: each parses its options and calls one harness run."""

from __future__ import annotations

import json
from pathlib import Path

from censor.bench.censoring import BenchConfig
from censor.bench.reject import markdown_table as reject_table
from censor.bench.reject import run_reject_bench
from censor.bench.sweep import run_sweep, summary_table, write_summary
from censor.cli.args import add_guidance_args, add_model_args, guidance_from_args, positive_int
from censor.core.data import DEFAULT_DATA_DIR
from censor.core.errors import CensorError
from censor.core.settings import ALPHA, DEFAULT_GUIDANCE, ITERATIONS, MEMBERS
from censor.diffusion.models import EMBEDDED_MODEL_DIR
from censor.eval.features import load_features
from censor.sampling.rejection import DEFAULT_CAP_FACTOR, DEFAULT_FOLDS, DEFAULT_RECALL


def cmd_bench(a) -> None:
    from censor.bench.censoring import BenchConfig, guidance_kwargs, run_bench
    from censor.diffusion.models import load_diffusion
    from censor.eval.oracle import load_oracle, load_reference
    from censor.labels.pool import load_pool

    cfg = BenchConfig(feature=a.feature, budget=a.budget, method=a.method, reward=a.reward, members=a.members,
                      alpha=a.alpha, iterations=a.iterations, rounds=a.rounds, n=a.n, steps=a.steps, seeds=a.seeds,
                      flip_rate=a.flip_rate, init=a.init, auto=a.auto, **guidance_kwargs(guidance_from_args(a)))
    model = load_diffusion(a.model)
    result = run_bench(cfg, model, load_oracle(), load_pool(model_dir=a.model), load_reference(), out_dir=a.out,
                       cache_dir=a.cache)
    from censor.bench.censoring import markdown_rows

    print(markdown_rows([result]))


def cmd_bench_timing(a) -> None:
    from censor.bench.censoring import BenchConfig, collect_labels_and_train
    from censor.bench.timing import time_guidance
    from censor.diffusion.models import load_diffusion
    from censor.eval.oracle import load_oracle
    from censor.labels.pool import load_pool

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
    from censor.bench.censoring import collect, markdown_rows

    rows = collect(a.out)
    if not rows:
        raise CensorError(f"no bench results (*.json) in {a.out}")
    print(markdown_rows(rows, link=a.link), end="")


def cmd_fewshot(a) -> None:
    from censor.bench.fewshot import VARIANTS, run_fewshot, save
    from censor.core.data import load_watermarked
    from censor.diffusion.models import load_diffusion
    from censor.eval.oracle import load_oracle
    from censor.labels.pool import load_pool

    test = load_watermarked("test", a.data)  # real images with known truth; the oracle only labels the pool
    variants = [v for v in VARIANTS if f"{v[0]}/{v[1]}" in a.variants] if a.variants else VARIANTS
    model = load_diffusion(a.model)
    rows = run_fewshot(a.feature, a.budget, model, load_oracle(), load_pool(model_dir=a.model),
                       test.images[: a.test], test.labels[: a.test], test.watermark[: a.test], variants=variants,
                       iterations=a.iterations, seed=a.seed)
    print(save(rows, a.feature, a.out).read_text(), end="")


def cmd_bench_active(a) -> None:
    from censor.bench.active import ActiveBenchConfig, run_active_bench, summarize

    if a.summary:
        summarize(a.out)
        return
    from censor.diffusion.models import load_diffusion
    from censor.eval.oracle import load_oracle, load_reference
    from censor.labels.pool import load_pool

    cfg = ActiveBenchConfig(features=tuple(a.features), strategies=tuple(a.strategies), seeds=a.seeds,
                            budgets=tuple(a.budgets), batch=a.batch, n=a.n, steps=a.steps, weight=a.weight,
                            candidates=a.candidates, iterations=a.iterations,
                            weights=dict(ActiveBenchConfig().weights, malign=a.malign_weight))
    model = load_diffusion(a.model)
    run_active_bench(cfg, model, load_oracle(), load_pool(model_dir=a.model), load_reference(), out_dir=a.out,
                     cache_dir=a.cache)


def cmd_bench_throughput(a) -> None:
    from censor.bench.throughput import markdown, measure_throughput, random_arch
    from censor.cli.args import model_from_args, runtime_from_args
    from censor.diffusion.runtime import apply_runtime

    if a.arch:
        model = apply_runtime(random_arch(a.arch), runtime_from_args(a))
    else:
        model = model_from_args(a)
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
    b.add_argument("--feature", default="watermark")
    b.add_argument("--budget", type=positive_int, default=100, help="images the labeller views per round")
    b.add_argument("--method", default="ensemble", choices=["single", "union", "ensemble", "imitation"])
    b.add_argument("--reward", default=None, choices=["ddpm-encoder", "half-unet", "resnet18"])
    b.add_argument("--members", type=positive_int, default=MEMBERS)
    b.add_argument("--alpha", type=float, default=ALPHA)
    b.add_argument("--iterations", type=positive_int, default=ITERATIONS)
    add_guidance_args(b)
    b.add_argument("--auto", action="store_true", help="automatic strength per reward (the studio's default), from --weight up")
    b.add_argument("--rounds", type=positive_int, default=3, help="imitation rounds")
    b.add_argument("--n", type=positive_int, default=1000,
                   help="censored images in total, split evenly over the labelling seeds; the baseline has n")
    b.add_argument("--steps", type=positive_int, default=50)
    b.add_argument("--seeds", type=positive_int, default=3)
    b.add_argument("--flip-rate", type=float, default=0.0, help="share of labels the labeller gets wrong")
    b.add_argument("--init", default="random", choices=["random", "backbone", "imagenet"])
    b.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    b.add_argument("--out", default="docs/bench", help="folder for the JSON, markdown and grid")
    b.add_argument("--cache", default="runs/bench_cache", help="where the shared unguided baseline is kept")
    b.set_defaults(fn=cmd_bench)

    f = sub.add_parser("fewshot", help="few-shot accuracy of each reward kind and initialisation")
    f.add_argument("--feature", default="bags")
    f.add_argument("--budget", type=positive_int, default=100)
    f.add_argument("--iterations", type=positive_int, default=300)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--test", type=positive_int, default=2000, help="real test images to score on")
    f.add_argument("--variants", nargs="*", default=None, help="e.g. ddpm-encoder/random resnet18/backbone")
    f.add_argument("--data", default=str(DEFAULT_DATA_DIR))
    f.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    f.add_argument("--out", default="docs/bench")
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
    tp.add_argument("--arch", default=None, choices=["ddpm-256", "dit-xl-2-256", "sd15-unet"],
                    help="a random model with this hub architecture instead of --model (cost does not depend on weights)")
    tp.add_argument("--n", type=positive_int, default=8)
    tp.add_argument("--steps", type=positive_int, default=25)
    tp.add_argument("--reps", type=positive_int, default=3)
    tp.add_argument("--modes", default="unguided,time,universal,universal+backward,universal+recurrence")
    tp.add_argument("--out", default=None, help="JSON path (a .md beside it)")
    tp.set_defaults(fn=cmd_bench_throughput)

    t = sub.add_parser("bench-table", help="one markdown table of every saved bench result in a folder")
    t.add_argument("--out", default="docs/bench")
    t.add_argument("--link", default="bench", help="relative folder the grid links point to")
    t.set_defaults(fn=cmd_bench_table)

    add_reject_parser(sub)
    add_sweep_parser(sub)

    ab = sub.add_parser("bench-active", help="active vs random labelling: labels needed to reach <= 1%% malign")
    ab.add_argument("--features", nargs="+", default=["bags", "watermark", "not-footwear"])
    ab.add_argument("--strategies", nargs="+", default=["random", "active"], choices=["random", "active"])
    ab.add_argument("--seeds", type=positive_int, default=3)
    ab.add_argument("--budgets", type=positive_int, nargs="+", default=[20, 40, 60, 100])
    ab.add_argument("--batch", type=positive_int, default=20, help="labels added between rankings")
    ab.add_argument("--n", type=positive_int, default=300, help="censored images judged per budget")
    ab.add_argument("--steps", type=positive_int, default=25)
    ab.add_argument("--weight", type=float, default=DEFAULT_GUIDANCE.weight, help="ω of the default guidance (censor/defaults.py)")
    ab.add_argument("--candidates", type=positive_int, default=60, help="imitation: censored images per round")
    ab.add_argument("--iterations", type=positive_int, default=300, help="reward training iterations per member")
    ab.add_argument("--malign-weight", type=float, default=1.0,
                    help="weight of the ranking's likely-malign term (0: uncertainty, disagreement and coverage "
                         "only, as in the first issue-8 runs)")
    ab.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    ab.add_argument("--out", default="docs/bench/active")
    ab.add_argument("--cache", default="runs/bench_cache")
    ab.add_argument("--summary", action="store_true", help="only rebuild the table and plot from saved cells")
    ab.set_defaults(fn=cmd_bench_active)


def add_reject_parser(sub) -> None:
    from censor.core.settings import ALPHA, DEFAULT_GUIDANCE, ITERATIONS, MEMBERS
    from censor.diffusion.models import EMBEDDED_MODEL_DIR

    r = sub.add_parser("bench-reject", help="rejection vs guidance vs guidance + rejection on the same reward")
    r.add_argument("--feature", default="bags")
    r.add_argument("--budget", type=positive_int, default=100)
    r.add_argument("--method", default="ensemble", choices=["single", "union", "ensemble", "imitation"])
    r.add_argument("--members", type=positive_int, default=MEMBERS)
    r.add_argument("--weight", type=float, default=DEFAULT_GUIDANCE.weight, help="ω of the default guidance (defaults.py)")
    r.add_argument("--alpha", type=float, default=ALPHA)
    r.add_argument("--iterations", type=positive_int, default=ITERATIONS)
    r.add_argument("--every", type=positive_int, default=1)
    r.add_argument("--rounds", type=positive_int, default=3, help="imitation rounds")
    r.add_argument("--n", type=positive_int, default=1000, help="gallery images in total over the labelling seeds")
    r.add_argument("--steps", type=positive_int, default=25)
    r.add_argument("--seeds", type=positive_int, default=3)
    r.add_argument("--threshold", type=float, default=None,
                   help="keep images with P(benign) above this (default: cross-fitted, held-out malign recall >= --recall)")
    r.add_argument("--recall", type=float, default=DEFAULT_RECALL)
    r.add_argument("--folds", type=positive_int, default=DEFAULT_FOLDS)
    r.add_argument("--cap-factor", type=float, default=DEFAULT_CAP_FACTOR, help="cap on draws, x the requested count")
    r.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    r.add_argument("--out", default="docs/bench")
    r.add_argument("--cache", default="runs/bench_cache")
    r.set_defaults(fn=cmd_bench_reject)


def cmd_bench_reject(a) -> None:
    from censor.diffusion.models import load_diffusion
    from censor.eval.oracle import load_oracle, load_reference
    from censor.labels.pool import load_pool

    if a.cap_factor < 1:
        raise CensorError("--cap-factor must be >= 1")
    cfg = BenchConfig(feature=a.feature, budget=a.budget, method=a.method, members=a.members, weight=a.weight,
                      alpha=a.alpha, iterations=a.iterations, every=a.every, rounds=a.rounds, n=a.n, steps=a.steps,
                      seeds=a.seeds)
    model = load_diffusion(a.model)
    result = run_reject_bench(cfg, model, load_oracle(), load_pool(model_dir=a.model), load_reference(),
                              out_dir=a.out, cache_dir=a.cache, threshold=a.threshold, recall=a.recall,
                              folds=a.folds, cap_factor=a.cap_factor)
    print(reject_table(result, link="bench"), end="")


def add_sweep_parser(sub) -> None:
    from censor.cli.args import add_guidance_args, positive_int
    from censor.core.settings import ALPHA, ITERATIONS, MEMBERS
    from censor.diffusion.models import EMBEDDED_MODEL_DIR

    p = sub.add_parser("sweep", help="one set of guidance settings on every feature: one summary table")
    p.add_argument("--features", nargs="+", default=None, help="default: every feature in censor/features.json")
    p.add_argument("--budget", type=positive_int, default=100)
    p.add_argument("--members", type=positive_int, default=MEMBERS)
    p.add_argument("--alpha", type=float, default=ALPHA)
    p.add_argument("--iterations", type=positive_int, default=ITERATIONS)
    p.add_argument("--rounds", type=positive_int, default=3, help="imitation rounds (malign-dominant features)")
    p.add_argument("--n", type=positive_int, default=1000)
    p.add_argument("--steps", type=positive_int, default=25)
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    p.add_argument("--out", default="docs/bench/sweep")
    p.add_argument("--cache", default="runs/bench_cache")
    p.add_argument("--summary", action="store_true", help="only rebuild summary.md from the saved rows")
    add_guidance_args(p)
    p.add_argument("--auto", action="store_true", help="automatic strength per reward (the studio's default)")
    p.set_defaults(fn=cmd_sweep)


def cmd_sweep(a) -> None:
    from censor.cli.args import guidance_from_args
    from censor.diffusion.models import load_diffusion
    from censor.eval.oracle import load_oracle, load_reference
    from censor.labels.pool import load_pool

    out = Path(a.out)
    if a.summary:
        from censor.bench.censoring import collect

        results = collect(out)
        write_summary(results, out)
        print((out / "summary.md").read_text())
        return
    for f in a.features or []:
        if f not in load_features():
            from censor.core.errors import CensorError

            raise CensorError(f"unknown feature {f!r}; known: {', '.join(load_features())}")
    base = BenchConfig(budget=a.budget, members=a.members, alpha=a.alpha, iterations=a.iterations, rounds=a.rounds,
                       n=a.n, steps=a.steps, seeds=a.seeds, auto=a.auto)
    model = load_diffusion(a.model)
    results = run_sweep(guidance_from_args(a), model, load_oracle(), load_pool(model_dir=a.model), load_reference(),
                        out, base, a.features, cache_dir=a.cache)
    print(summary_table(results))
