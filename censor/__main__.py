"""``python -m censor COMMAND``: sample galleries, judge a model, build the sample pool.

Retraining the shipped assets has its own modules: ``python -m censor.train_diffusion`` and
``python -m censor.train_oracle``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .cli import add_guidance_args, add_model_args, dispatch, guidance_from_args, positive_int
from .errors import CensorError
from .data import DEFAULT_DATA_DIR
from .defaults import ALPHA, DEFAULT_GUIDANCE, ITERATIONS, MEMBERS
from .models import EMBEDDED_MODEL_DIR



def cmd_sample(a) -> None:
    from .cli import model_from_args
    from .data import to_uint8
    from .gallery import save_grid
    from .rewards import load_reward
    from .sampling import sample, seeds_for

    out = Path(a.out)
    if not out.parent.exists():
        raise CensorError(f"output folder {out.parent} does not exist")
    model = model_from_args(a)
    guidance = None
    if a.reward:
        reward = load_reward(a.reward, model)
        settings = guidance_from_args(a)
        if not reward.time_dependent and a.guidance is None:  # the default kind needs r(x_t, t)
            settings = settings.with_(kind="universal")
            print(f"note: a {reward.kind} reward scores clean images: universal guidance", file=sys.stderr)
        if not reward.time_dependent and settings.kind in ("time", "particles"):
            raise CensorError(f"a {reward.kind} reward scores clean images: use --guidance universal or manifold")
        guidance = settings.build(reward)
    t0 = time.time()
    images = to_uint8(sample(model, seeds_for(a.n, a.seed), steps=a.steps, method=a.scheduler, eta=a.eta,
                             show_bar=True, guidance=guidance))
    save_grid(images, out, nrow=a.nrow)
    what = f"censored with {a.reward}" if a.reward else "unguided"
    print(f"wrote {a.n} {what} samples ({a.steps} {a.scheduler} steps, {time.time() - t0:.1f}s) to {out}")


def cmd_evaluate_model(a) -> None:
    """Sample n images and report what the foundation quality bar asks, next to the real-image floors."""
    import numpy as np

    from .data import to_uint8
    from .evaluate import quality_report
    from .gallery import save_grid
    from .models import load_diffusion
    from .oracle import load_oracle, load_reference
    from .sampling import sample, seeds_for

    oracle, ref = load_oracle(), load_reference()
    model = load_diffusion(a.model)
    t0 = time.time()
    images = to_uint8(sample(model, seeds_for(a.n, a.seed), steps=a.steps, show_bar=True))
    seconds = time.time() - t0
    rng = np.random.default_rng(0)
    real = ref["test_features"][rng.permutation(len(ref["test_features"]))[: a.n]]
    report = quality_report(oracle, images, real)
    real_report = dict(confident_fraction=oracle.metrics["test"]["confident_fraction"],
                       watermark_rate=float(ref["test_watermark"].mean()), **oracle.metrics.get("reference", {}))
    training = Path(a.model) / "training.json"
    result = dict(model=str(a.model), steps=a.steps, sampling_seconds=round(seconds, 1), generated=report,
                  real=real_report, training=json.loads(training.read_text()) if training.exists() else None)
    result["confident_ratio"] = report["confident_fraction"] / real_report["confident_fraction"]
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    if a.grid:
        save_grid(images[:100], a.grid, nrow=10, marks=oracle.judge(images[:100]).watermarked)


def cmd_make_pool(a) -> None:
    from .cli import model_from_args
    from .pool import make_pool, save_pool

    model = model_from_args(a)
    folder = EMBEDDED_MODEL_DIR if a.model == "embedded" else Path(a.model)
    pool = make_pool(model, folder if folder.is_dir() else None, n=a.n, steps=a.steps, seed=a.seed)
    save_pool(pool, a.out)
    print(f"wrote a pool of {len(pool)} images to {a.out}")


def cmd_bench(a) -> None:
    from .bench import BenchConfig, guidance_kwargs, run_bench
    from .models import load_diffusion
    from .oracle import load_oracle, load_reference
    from .pool import load_pool

    cfg = BenchConfig(feature=a.feature, budget=a.budget, method=a.method, reward=a.reward, members=a.members,
                      alpha=a.alpha, iterations=a.iterations, rounds=a.rounds, n=a.n, steps=a.steps, seeds=a.seeds,
                      flip_rate=a.flip_rate, init=a.init, auto=a.auto, **guidance_kwargs(guidance_from_args(a)))
    model = load_diffusion(a.model)
    result = run_bench(cfg, model, load_oracle(), load_pool(model_dir=a.model), load_reference(), out_dir=a.out,
                       cache_dir=a.cache)
    from .bench import markdown_rows

    print(markdown_rows([result]))


def cmd_bench_timing(a) -> None:
    from .bench import BenchConfig, collect_labels_and_train, time_guidance
    from .models import load_diffusion
    from .oracle import load_oracle
    from .pool import load_pool

    model = load_diffusion(a.model)
    cfg = BenchConfig(feature=a.feature, budget=a.budget, steps=a.steps, seeds=1)
    reward, _, _ = collect_labels_and_train(cfg, model, load_oracle(), load_pool(model_dir=a.model), seed=0)
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
    from .bench import collect, markdown_rows

    rows = collect(a.out)
    if not rows:
        raise CensorError(f"no bench results (*.json) in {a.out}")
    print(markdown_rows(rows, link=a.link), end="")


def cmd_fewshot(a) -> None:
    from .data import load_watermarked
    from .fewshot import VARIANTS, run_fewshot, save
    from .models import load_diffusion
    from .oracle import load_oracle
    from .pool import load_pool

    test = load_watermarked("test", a.data)  # real images with known truth; the oracle only labels the pool
    variants = [v for v in VARIANTS if f"{v[0]}/{v[1]}" in a.variants] if a.variants else VARIANTS
    model = load_diffusion(a.model)
    rows = run_fewshot(a.feature, a.budget, model, load_oracle(), load_pool(model_dir=a.model),
                       test.images[: a.test], test.labels[: a.test], test.watermark[: a.test], variants=variants,
                       iterations=a.iterations, seed=a.seed)
    print(save(rows, a.feature, a.out).read_text(), end="")


def cmd_bench_active(a) -> None:
    from .bench_active import ActiveBenchConfig, run_active_bench, summarize

    if a.summary:
        summarize(a.out)
        return
    from .models import load_diffusion
    from .oracle import load_oracle, load_reference
    from .pool import load_pool

    cfg = ActiveBenchConfig(features=tuple(a.features), strategies=tuple(a.strategies), seeds=a.seeds,
                            budgets=tuple(a.budgets), batch=a.batch, n=a.n, steps=a.steps, weight=a.weight,
                            candidates=a.candidates, iterations=a.iterations,
                            weights=dict(ActiveBenchConfig().weights, malign=a.malign_weight))
    model = load_diffusion(a.model)
    run_active_bench(cfg, model, load_oracle(), load_pool(model_dir=a.model), load_reference(), out_dir=a.out,
                     cache_dir=a.cache)


def cmd_bench_throughput(a) -> None:
    from .cli import model_from_args, runtime_from_args
    from .runtime import apply_runtime
    from .throughput import markdown, measure_throughput, random_arch

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m censor", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="write a grid of unguided samples")
    s.add_argument("--n", type=positive_int, default=64)
    s.add_argument("--steps", type=positive_int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="grid.png")
    add_model_args(s)
    s.add_argument("--scheduler", default="ddim", choices=["ddim", "ddpm"])
    s.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 = deterministic)")
    s.add_argument("--nrow", type=positive_int, default=None)
    s.add_argument("--reward", default=None, help="a saved reward folder: sample censored with it")
    add_guidance_args(s)
    s.set_defaults(fn=cmd_sample)

    e = sub.add_parser("evaluate-model", help="judge a diffusion model with the oracle (quality bar)")
    e.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    e.add_argument("--n", type=positive_int, default=2000)
    e.add_argument("--steps", type=positive_int, default=50)
    e.add_argument("--seed", type=int, default=1000)
    e.add_argument("--json", default=None, help="also write the report here")
    e.add_argument("--grid", default=None, help="also write a 10x10 grid (oracle-watermarked items framed red)")
    e.set_defaults(fn=cmd_evaluate_model)

    m = sub.add_parser("make-pool", help="pre-generate the baseline pool a labelling session starts from")
    add_model_args(m, default=str(EMBEDDED_MODEL_DIR))
    m.add_argument("--n", type=positive_int, default=1000)
    m.add_argument("--steps", type=positive_int, default=50)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--out", default=str(EMBEDDED_MODEL_DIR.parent / "pool"))
    m.set_defaults(fn=cmd_make_pool)

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

    from .bench_reject import add_parser as add_reject_parser  # rejection vs guidance (bench_reject.py)

    add_reject_parser(sub)
    from .sweep import add_parser as add_sweep_parser  # every feature, one set of settings (sweep.py)

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
    return p


def main(argv=None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
