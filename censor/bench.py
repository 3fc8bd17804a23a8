"""The benchmark: how far censoring takes the malign fraction, and at what cost, judged by the oracle.

``python -m censor bench --feature watermark --budget 100 --method ensemble --guidance time --seeds 3``

Per labelling seed: the simulated labeller views ``budget`` pool images (about three minutes of a
person's time at budget 100), a reward is trained on its labels (imitation: further rounds label
galleries censored by the previous round), and n / seeds images are sampled with guidance from the
same fixed seeds as the unguided baseline (n images, cached per model). The censored malign % pools
the seeds, so both figures rest on n samples. Every malign % is reported next to what shows whether the
samples are still good: k-NN precision/recall against the real benign test images (censored vs
baseline, same n), the oracle-confident fraction, and a grid. Results go to JSON + markdown.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import to_uint8
from .errors import CensorError
from .evaluate import feature_spec, is_malign, knn_precision_recall, malign_fraction, wilson_interval
from .gallery import grid
from .guidance import Guidance, build_guidance
from .labeller import SimulatedLabeller
from .reward_training import train_reward
from .rewards import model_fingerprint
from .sampling import sample, seeds_for

METHODS = ("single", "union", "ensemble", "imitation")
GUIDANCES = ("time", "universal")
GALLERY_SEED = 10_000  # the benchmark's fixed gallery seeds; the pool uses seed 1, so they never overlap


@dataclass
class BenchConfig:
    feature: str = "watermark"
    budget: int = 100
    method: str = "ensemble"
    guidance: str = "time"
    reward: str | None = None  # default: ddpm-encoder for time guidance, resnet18 for universal
    members: int = 5
    weight: float = 1.0  # multiplies the sum over members, so one model needs ~members x this
    alpha: float = 0.1
    iterations: int = 300
    batch_size: int = 64
    backward_steps: int = 0
    backward_lr: float = 0.01
    recurrence: int = 0
    window: tuple[int, int] = (0, 999)
    every: int = 1  # reward gradient every k-th step, reused in between (time guidance)
    rounds: int = 3
    n: int = 1000
    steps: int = 50
    seeds: int = 3
    flip_rate: float = 0.0
    init: str = "random"

    def __post_init__(self):
        feature_spec(self.feature)
        if self.method not in METHODS:
            raise CensorError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.guidance not in GUIDANCES:
            raise CensorError(f"unknown guidance {self.guidance!r}; use one of {', '.join(GUIDANCES)}")
        if self.reward is None:
            self.reward = "ddpm-encoder" if self.guidance == "time" else "resnet18"
        if min(self.budget, self.n, self.steps, self.seeds, self.members, self.rounds) < 1:
            raise CensorError("budget, n, steps, seeds, members and rounds must be positive")
        self.window = tuple(self.window)

    @property
    def name(self) -> str:
        extra = (f"_bw{self.backward_steps}" if self.backward_steps else "") + (f"_rec{self.recurrence}" if self.recurrence else "")
        extra += "" if tuple(self.window) == (0, 999) else f"_win{self.window[0]}-{self.window[1]}"
        extra += "" if self.steps == 50 else f"_s{self.steps}"
        extra += "" if self.every == 1 else f"_every{self.every}"
        extra += "" if self.flip_rate == 0 else f"_flip{self.flip_rate:g}"
        extra += "" if self.init == "random" else f"_{self.init}"
        return f"{self.feature}_{self.method}_{self.guidance}_{self.reward}_b{self.budget}_w{self.weight:g}{extra}"


def make_guidance(cfg: BenchConfig, reward) -> Guidance:
    return build_guidance(reward, cfg.guidance, cfg.weight, cfg.backward_steps, cfg.backward_lr,
                          cfg.recurrence, cfg.window, cfg.every)


def _train(cfg: BenchConfig, model, images, labels, seed, resume=None):
    members = 1 if cfg.method in ("single", "union") else cfg.members
    return train_reward(images, labels, kind=cfg.reward, diffusion=model, members=members, alpha=cfg.alpha,
                        iterations=cfg.iterations, batch_size=cfg.batch_size, init=cfg.init, seed=seed,
                        resume=resume, bootstrap=True if cfg.method == "single" else None)


def collect_labels_and_train(cfg: BenchConfig, model, oracle, pool, seed: int, log=print):
    """What a person does in a session: view, label, train (and for imitation, repeat on censored galleries)."""
    labeller = SimulatedLabeller(oracle, cfg.feature, cfg.flip_rate, seed=seed)
    view = np.random.default_rng(seed).choice(len(pool), size=min(cfg.budget, len(pool)), replace=False)
    images, labels = pool.images[view], labeller.label(pool.images[view])
    if (labels == 0).sum() == 0 or (labels == 1).sum() == 0:
        return None, labels, labeller.viewed  # nothing to learn from: a real outcome of small budgets
    reward = _train(cfg, model, images, labels, seed)
    rounds = cfg.rounds if cfg.method == "imitation" else 1
    for r in range(2, rounds + 1):
        log(f"  imitation round {r}: labelling {cfg.budget} censored images")
        gallery = to_uint8(sample(model, seeds_for(cfg.budget, 20_000 + 100 * seed + r), steps=cfg.steps,
                                  guidance=make_guidance(cfg, reward)))
        images = np.concatenate([images, gallery])
        labels = np.concatenate([labels, labeller.label(gallery)])
        reward = _train(cfg, model, images, labels, seed, resume=reward)
    reward.info["_labelled"] = (images, labels)  # in memory only: bench_reject cross-fits its threshold on them
    return reward, labels, labeller.viewed


def cached_baseline(model, n: int, steps: int, cache_dir: str | Path | None) -> np.ndarray:
    """The unguided gallery for the benchmark's fixed seeds, kept on disk per model, n and steps.

    Every configuration compares against the same baseline, so it is sampled once per model.
    """
    from safetensors.torch import load_file, save_file

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"baseline_{model_fingerprint(model.unet)}_n{n}_s{steps}.safetensors"
        if path.is_file():
            return load_file(str(path))["images"].numpy()
    images = to_uint8(sample(model, seeds_for(n, GALLERY_SEED), steps=steps, show_bar=True))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": torch.from_numpy(np.ascontiguousarray(images))}, str(path))
    return images


def run_bench(cfg: BenchConfig, model, oracle, pool, reference: dict, out_dir: str | Path | None = None,
              log=print, cache_dir: str | Path | None = None) -> dict:
    """``cfg.n`` is the total over labelling seeds: each seed censors ceil(n / seeds) images."""
    per_seed = -(-cfg.n // cfg.seeds)
    gallery_seeds = seeds_for(cfg.n, GALLERY_SEED)[:per_seed]
    baseline_all = cached_baseline(model, cfg.n, cfg.steps, cache_dir)
    baseline = baseline_all[:per_seed]
    # wall-time reference measured in this run, on the same images and batch as the guided galleries
    timing_n = min(per_seed, 100)
    t0 = time.time()
    sample(model, gallery_seeds[:timing_n], steps=cfg.steps)
    unguided_s = (time.time() - t0) * per_seed / timing_n
    jb_all = oracle.judge(baseline_all)
    jb = oracle.judge(baseline)
    base_rate = malign_fraction(jb_all, cfg.feature)
    # the real benign test images (true labels, not the oracle's): the diversity censoring must keep
    spec = feature_spec(cfg.feature)
    benign_real = ~reference["test_watermark"].astype(bool) if spec["rule"] == "watermark" else \
        ~np.isin(reference["test_labels"], spec["malign_classes"])
    real = reference["test_features"][benign_real][:per_seed]
    base_p, base_r = knn_precision_recall(real, jb.features)
    log(f"baseline: {base_rate}  recall {base_r:.3f} on {per_seed}  ({unguided_s:.0f}s unguided for {per_seed})")
    runs = []
    for seed in range(cfg.seeds):
        reward, labels, viewed = collect_labels_and_train(cfg, model, oracle, pool, seed, log)
        if reward is None:
            log(f"  seed {seed}: the {viewed} viewed images held only one class; no reward, gallery unchanged")
            guidance, censored, guided_s = None, baseline, unguided_s
        else:
            guidance = make_guidance(cfg, reward)
            t1 = time.time()
            censored = to_uint8(sample(model, gallery_seeds, steps=cfg.steps, guidance=guidance, show_bar=True))
            guided_s = time.time() - t1
        jc = oracle.judge(censored)
        rate = malign_fraction(jc, cfg.feature)
        p, r = knn_precision_recall(real, jc.features)
        runs.append(dict(
            seed=seed, viewed=viewed, labels=int(len(labels)), malign_labels=int((labels == 0).sum()),
            malign=rate.malign, n=rate.n, malign_pct=100 * rate.fraction, ci_pct=[100 * rate.low, 100 * rate.high],
            precision=p, recall=r, recall_ratio=r / base_r if base_r > 0 else None,
            confident=float(jc.confident.mean()), reward_train_s=reward.info["train_seconds"] if reward else 0.0,
            guided_s=round(guided_s, 1), nonfinite_fallbacks=guidance.stats["nonfinite_fallbacks"] if guidance else 0,
            no_reward=reward is None,
        ))
        log(f"  seed {seed}: {rate}  recall {r:.3f} ({_ratio(runs[-1]['recall_ratio'])})  confident {jc.confident.mean():.2f}  "
            f"reward {runs[-1]['reward_train_s']:.0f}s  sampling {guided_s:.0f}s")
        if seed == 0 and out_dir is not None:
            _save_grids(out_dir, cfg, baseline, censored, jb, jc)
    k = sum(r["malign"] for r in runs)
    n = sum(r["n"] for r in runs)
    lo, hi = wilson_interval(k, n)
    result = dict(
        config=asdict(cfg), name=cfg.name, machine=machine(), model_fingerprint=model_fingerprint(model.unet),
        baseline=dict(malign_pct=100 * base_rate.fraction, ci_pct=[100 * base_rate.low, 100 * base_rate.high],
                      n=base_rate.n, precision=base_p, recall=base_r, confident=float(jb_all.confident.mean()),
                      unguided_s=round(unguided_s, 1)),
        censored=dict(malign_pct=100 * k / n, ci_pct=[100 * lo, 100 * hi], n=n,
                      recall_ratio=_mean_or_none([r["recall_ratio"] for r in runs]),
                      confident=float(np.mean([r["confident"] for r in runs])),
                      reward_train_s=float(np.median([r["reward_train_s"] for r in runs])),
                      guided_s=float(np.median([r["guided_s"] for r in runs])),
                      time_ratio=float(np.median([r["guided_s"] for r in runs])) / unguided_s),
        runs=runs,
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{cfg.name}.json").write_text(json.dumps(result, indent=1))
        (out / f"{cfg.name}.md").write_text(markdown_rows([result]))
    return result


def machine() -> str:
    """Where a row was measured, in words: every timing is only comparable within one machine."""
    import os
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (GPU)"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def collect(out_dir: str | Path) -> list[dict]:
    """Every saved bench result in a folder, sorted by feature and name (other JSON there, such as
    the fine-tuning comparison or timing runs, is skipped)."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*.json"))]
    rows = [r for r in rows if isinstance(r, dict) and {"name", "baseline", "censored", "config"} <= set(r)]
    return sorted(rows, key=lambda r: (r["config"]["feature"], r["name"]))


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _ratio(x) -> str:
    return "n/a" if x is None else f"{x:.2f}×"


def comparison_grid(feature: str, baseline, censored, jb, jc, rows: int = 5):
    """``rows`` rows of 10 baseline images over as many of the censored ones from the same seeds,
    malign ones (by the oracle's judgements ``jb``/``jc``) framed red: the bench grids."""
    k = 10 * rows
    both = np.concatenate([baseline[:k], censored[:k]])
    marks = np.concatenate([is_malign(jb, feature)[:k], is_malign(jc, feature)[:k]])
    return grid(both, nrow=10, marks=marks)


def _save_grids(out_dir, cfg, baseline, censored, jb, jc) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    comparison_grid(cfg.feature, baseline, censored, jb, jc).save(out / f"{cfg.name}.png")


HEADER = ("| run | baseline malign % [95% CI] | censored malign % [95% CI] | recall vs baseline | "
          "confident (base → censored) | reward train s | sampling s (unguided → guided) |\n"
          "|---|---|---|---|---|---|---|\n")


def markdown_rows(results: list[dict], link: str | None = None) -> str:
    """One table row per result; with ``link`` (a folder), the run's name links to its grid."""
    rows = []
    for r in results:
        b, c = r["baseline"], r["censored"]
        name = f"[{r['name']}]({link}/{r['name']}.png)" if link else r["name"]
        rows.append(
            f"| {name} | {b['malign_pct']:.2f} [{b['ci_pct'][0]:.2f}, {b['ci_pct'][1]:.2f}] | "
            f"{c['malign_pct']:.2f} [{c['ci_pct'][0]:.2f}, {c['ci_pct'][1]:.2f}] (n={c['n']}) | "
            f"{_ratio(c['recall_ratio'])} | {b['confident']:.2f} → {c['confident']:.2f} | {c['reward_train_s']:.1f} | "
            f"{b['unguided_s']:.0f} → {c['guided_s']:.0f} ({c['time_ratio']:.2f}×) |")
    return HEADER + "\n".join(rows) + "\n"


def time_guidance(model, reward, n: int = 64, steps: int = 25, reps: int = 5, weight: float = 4.0,
                  everies=(1, 2, 4), log=print) -> dict:
    """Wall time of guided vs unguided sampling, same seeds, batch and steps, interleaved.

    The settings take turns inside every repetition, so a neighbour's load on a shared machine
    hits them alike; the ratios are medians over repetitions. Returns seconds and ratios.
    """
    if min(n, steps, reps) < 1:
        raise CensorError("n, steps and reps must be positive")
    seeds = seeds_for(n, GALLERY_SEED)
    settings = {"unguided": None}
    settings.update({f"time every {k}": build_guidance(reward, "time", weight, every=k) for k in everies})
    seconds = {name: [] for name in settings}
    sample(model, seeds[: min(n, 4)], steps=2)  # warm-up: first-call allocations are not the method's cost
    for rep in range(reps):
        for name, guidance in settings.items():
            t0 = time.perf_counter()
            sample(model, seeds, steps=steps, guidance=guidance)
            seconds[name].append(time.perf_counter() - t0)
        log(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in seconds.items()))
    base = np.array(seconds["unguided"])
    ratios = {name: float(np.median(np.array(s) / base)) for name, s in seconds.items() if name != "unguided"}
    return dict(machine=machine(), model_fingerprint=model_fingerprint(model.unet), n=n, steps=steps, reps=reps,
                weight=weight, seconds={k: [round(x, 2) for x in v] for k, v in seconds.items()},
                median_s={k: float(np.median(v)) for k, v in seconds.items()}, ratio_median=ratios)
