"""The benchmark: how far censoring takes the malign fraction, and at what cost, judged by the oracle.

``python -m censor bench --feature watermark --budget 100 --method ensemble --guidance time --seeds 3``

Per labelling seed: the simulated labeller views ``budget`` pool images (about three minutes of a
person's time at budget 100), a reward is trained on its labels (imitation: further rounds label
galleries censored by the previous round), and n / seeds images are sampled with guidance from that
seed's own slice of the baseline's fixed seeds, so every censored image has its unguided twin and the
pooled figures rest on n independent images. Every malign % is reported next to what shows whether
the rest of the distribution survived (``evaluate.GalleryJudge``): tv of the class histogram against
the baseline's benign images with its floor, k-NN recall against the real benign test images
(overall and per class), the oracle-confident fraction, the oracle-free drift figure, and a grid.
Results go to JSON + markdown.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.core.settings import ALPHA, DEFAULT_GUIDANCE, ITERATIONS, MEMBERS, GuidanceSettings
from censor.eval.features import feature_spec, is_malign
from censor.eval.judge import GalleryJudge
from censor.gallery.grid import grid
from censor.labels.labeller import SimulatedLabeller
from censor.rewards.ensemble import model_fingerprint
from censor.rewards.training import train_reward
from censor.sampling.guidance import GUIDANCE_KINDS, Guidance, guidance_for
from censor.sampling.loop import sample, seeds_for

METHODS = ("single", "union", "ensemble", "imitation")
GUIDANCES = GUIDANCE_KINDS
GALLERY_SEED = 10_000  # the benchmark's fixed gallery seeds; the pool uses seed 1, so they never overlap
FLOOR_SEED = 40_000  # a second unguided gallery from disjoint seeds: the sampling floor of tv
D = DEFAULT_GUIDANCE


@dataclass
class BenchConfig:
    feature: str = "watermark"
    budget: int = 100
    method: str = "ensemble"
    guidance: str = D.kind
    reward: str | None = None  # default: ddpm-encoder for time guidance, resnet18 for universal
    members: int = MEMBERS
    weight: float = D.weight  # ω on the members' combination (combine)
    alpha: float = ALPHA
    iterations: int = ITERATIONS
    batch_size: int = 64
    backward_steps: int = D.backward_steps
    backward_lr: float = D.backward_lr
    recurrence: int = D.recurrence
    window: tuple[int, int] = D.window
    every: int = D.every  # reward gradient every k-th step, reused in between (time guidance)
    combine: str = D.combine
    threshold: float | None = D.threshold
    spread: float = D.spread
    max_ratio: float | None = D.max_ratio
    particles: int = D.particles
    calibrate: bool = D.calibrate
    hinge_quantile: float | None = D.hinge_quantile
    auto: bool = False  # pick ω per reward with strength.auto_strength (the studio's default), from weight up
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
            self.reward = "resnet18" if self.guidance == "universal" else "ddpm-encoder"
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
        extra += "" if self.combine == "sum" else f"_{self.combine}" + (f"{self.spread:g}" if self.combine == "mean-std" else "")
        extra += "" if self.threshold is None else f"_tau{self.threshold:g}"
        extra += "" if self.hinge_quantile is None or self.threshold is not None else f"_q{self.hinge_quantile:g}"
        extra += "" if self.calibrate else "_raw"
        extra += "" if self.max_ratio is None else f"_cap{self.max_ratio:g}"
        extra += f"_p{self.particles}" if self.guidance == "particles" else ""
        extra += "_auto" if self.auto else ""
        return f"{self.feature}_{self.method}_{self.guidance}_{self.reward}_b{self.budget}_w{self.weight:g}{extra}"


# BenchConfig holds every GuidanceSettings field under the same name, except kind (its "guidance")
GUIDANCE_FIELDS = tuple(f.name for f in fields(GuidanceSettings) if f.name != "kind")


def guidance_kwargs(settings: GuidanceSettings) -> dict:
    """BenchConfig keyword arguments for ``settings``."""
    return dict({k: getattr(settings, k) for k in GUIDANCE_FIELDS}, guidance=settings.kind)


def guidance_settings(cfg: BenchConfig) -> GuidanceSettings:
    return GuidanceSettings(kind=cfg.guidance, **{k: getattr(cfg, k) for k in GUIDANCE_FIELDS})


def make_guidance(cfg: BenchConfig, reward, drift=None) -> Guidance:
    """The configured guidance; with ``cfg.auto``, ω picked for this reward by the studio's
    automatic strength (``drift`` = (DriftMeter on the pool, the reward's weights on it))."""
    settings = guidance_settings(cfg)
    if cfg.auto:
        from censor.sampling.strength import auto_strength

        if drift is None:
            raise CensorError("automatic strength needs the drift meter of the pool")
        choice = auto_strength(drift[0].model, reward, drift[0], drift[1], settings)
        g = guidance_for(reward, settings.with_(weight=choice.weight))
        g.stats["auto"] = choice.as_dict()
        return g
    return guidance_for(reward, settings)


def pool_drift(meter, reward, model, pool) -> tuple:
    """(meter, the reward's P(benign) on the pool images): what ``make_guidance`` and the drift figure need."""
    from censor.sampling.strength import reward_benign

    return meter, reward_benign(reward, model, pool.images)


def _train(cfg: BenchConfig, model, images, labels, seed, resume=None):
    members = 1 if cfg.method in ("single", "union") else cfg.members
    return train_reward(images, labels, kind=cfg.reward, diffusion=model, members=members, alpha=cfg.alpha,
                        iterations=cfg.iterations, batch_size=cfg.batch_size, init=cfg.init, seed=seed,
                        resume=resume, bootstrap=True if cfg.method == "single" else None)


def _reward_cache(cfg: BenchConfig, model, seed: int, cache_dir) -> Path | None:
    """Where a first-round reward is kept: it depends on the labels and training settings only, so
    guidance variants on the same feature reuse it instead of retraining (imitation rounds depend on
    the guidance, so they are never cached)."""
    if cache_dir is None or cfg.method == "imitation":
        return None
    key = (f"{cfg.feature}_{cfg.method}_{cfg.reward}_b{cfg.budget}_k{cfg.members}_a{cfg.alpha:g}_i{cfg.iterations}"
           f"_bs{cfg.batch_size}_{cfg.init}_f{cfg.flip_rate:g}_s{seed}")
    return Path(cache_dir) / "rewards" / model_fingerprint(model.unet) / key


def collect_labels_and_train(cfg: BenchConfig, model, oracle, pool, seed: int, log=print, cache_dir=None,
                             meter=None):
    """What a person does in a session: view, label, train (and for imitation, repeat on censored galleries)."""
    from censor.rewards.ensemble import load_reward

    labeller = SimulatedLabeller(oracle, cfg.feature, cfg.flip_rate, seed=seed)
    view = np.random.default_rng(seed).choice(len(pool), size=min(cfg.budget, len(pool)), replace=False)
    images, labels = pool.images[view], labeller.label(pool.images[view])
    if (labels == 0).sum() == 0 or (labels == 1).sum() == 0:
        return None, labels, labeller.viewed  # nothing to learn from: a real outcome of small budgets
    cached = _reward_cache(cfg, model, seed, cache_dir)
    if cached is not None and (cached / "reward.json").is_file():
        reward = load_reward(cached, model)
        reward.info["_labelled"] = (images, labels)
        return reward, labels, labeller.viewed
    reward = _train(cfg, model, images, labels, seed)
    if cached is not None:
        reward.save(cached)
    rounds = cfg.rounds if cfg.method == "imitation" else 1
    for r in range(2, rounds + 1):
        log(f"  imitation round {r}: labelling {cfg.budget} censored images")
        drift = pool_drift(meter, reward, model, pool) if cfg.auto else None
        gallery = to_uint8(sample(model, seeds_for(cfg.budget, 20_000 + 100 * seed + r), steps=cfg.steps,
                                  guidance=make_guidance(cfg, reward, drift)))
        images = np.concatenate([images, gallery])
        labels = np.concatenate([labels, labeller.label(gallery)])
        reward = _train(cfg, model, images, labels, seed, resume=reward)
    reward.info["_labelled"] = (images, labels)  # in memory only: bench_reject cross-fits its threshold on them
    return reward, labels, labeller.viewed


def cached_baseline(model, n: int, steps: int, cache_dir: str | Path | None, seed: int = GALLERY_SEED) -> np.ndarray:
    """The unguided gallery for the benchmark's fixed seeds, kept on disk per model, n and steps.

    Every configuration compares against the same baseline, so it is sampled once per model.
    """
    from safetensors.torch import load_file, save_file

    path = None
    if cache_dir is not None:
        tag = "" if seed == GALLERY_SEED else f"_seed{seed}"
        path = Path(cache_dir) / f"baseline_{model_fingerprint(model.unet)}_n{n}_s{steps}{tag}.safetensors"
        if path.is_file():
            return load_file(str(path))["images"].numpy()
    images = to_uint8(sample(model, seeds_for(n, seed), steps=steps, show_bar=True))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": torch.from_numpy(np.ascontiguousarray(images))}, str(path))
    return images


def run_bench(cfg: BenchConfig, model, oracle, pool, reference: dict, out_dir: str | Path | None = None,
              log=print, cache_dir: str | Path | None = None) -> dict:
    """``cfg.n`` is the total over labelling seeds: each seed censors its own ceil(n / seeds) noises
    (disjoint slices of the baseline's seeds), so the pooled figures rest on n independent images and
    every censored image has its unguided twin in the baseline."""
    per_seed = -(-cfg.n // cfg.seeds)
    total = per_seed * cfg.seeds
    all_seeds = seeds_for(total, GALLERY_SEED)
    baseline_all = cached_baseline(model, total, cfg.steps, cache_dir)
    second = cached_baseline(model, total, cfg.steps, cache_dir, seed=FLOOR_SEED)
    slices = [slice(s * per_seed, (s + 1) * per_seed) for s in range(cfg.seeds)]
    # wall-time reference measured in this run, on the same images and batch as the guided galleries
    timing_n = min(per_seed, 100)
    t0 = time.time()
    sample(model, all_seeds[:timing_n], steps=cfg.steps)
    unguided_s = (time.time() - t0) * per_seed / timing_n
    judge_all = GalleryJudge(oracle, cfg.feature, reference, baseline_all, second, n_real=per_seed)
    judges = [GalleryJudge(oracle, cfg.feature, reference, baseline_all[sl], n_real=per_seed) for sl in slices]
    base = judge_all.baseline_row()  # recall on the same n as each censored gallery: the mean over slices
    base.update(precision=float(np.mean([j.base_precision for j in judges])),
                recall=float(np.mean([j.base_recall for j in judges])), unguided_s=round(unguided_s, 1))
    from censor.eval.drift import DriftMeter

    meter = DriftMeter(model, pool.images)  # the oracle-free drift figure, as the studio shows it
    log(f"baseline: {judge_all.base_rate}  recall {base['recall']:.3f} on {per_seed}  tv floor {judge_all.floor:.3f}  "
        f"({unguided_s:.0f}s unguided for {per_seed})")
    runs = []
    for seed in range(cfg.seeds):
        judge, baseline, gallery_seeds = judges[seed], baseline_all[slices[seed]], all_seeds[slices[seed]]
        reward, labels, viewed = collect_labels_and_train(cfg, model, oracle, pool, seed, log, cache_dir, meter)
        drift, auto_s = None, 0.0
        if reward is None:
            log(f"  seed {seed}: the {viewed} viewed images held only one class; no reward, gallery unchanged")
            guidance, censored, guided_s = None, baseline, unguided_s
        else:
            drift = pool_drift(meter, reward, model, pool)
            t1 = time.time()
            guidance = make_guidance(cfg, reward, drift)
            auto_s = time.time() - t1  # the automatic strength's probe ladder (0 without --auto)
            censored = to_uint8(sample(model, gallery_seeds, steps=cfg.steps, guidance=guidance, show_bar=True))
            guided_s = time.time() - t1
        jc = oracle.judge(censored)
        row = judge(censored, jc)
        row["tv"] = judge_all.tv(jc)
        row["drift"] = meter.measure(censored, drift[1] if drift else None).as_dict()
        row["auto"] = guidance.stats.get("auto") if guidance else None
        runs.append(dict(
            seed=seed, viewed=viewed, labels=int(len(labels)), malign_labels=int((labels == 0).sum()), **row,
            reward_train_s=reward.info["train_seconds"] if reward else 0.0,
            guided_s=round(guided_s, 1), auto_s=round(auto_s, 1), nonfinite_fallbacks=guidance.stats["nonfinite_fallbacks"] if guidance else 0,
            no_reward=reward is None,
        ))
        log(f"  seed {seed}: {row['malign_pct']:.2f}% malign  tv {row['tv']:.3f}  drift {row['drift']['tv']:.3f}"
            + (f" (auto ω {row['auto']['weight']:g})" if row["auto"] else "") + f"  recall {row['recall']:.3f} "
            f"({_ratio(row['recall_ratio'])})  confident {row['confident']:.2f}  "
            f"reward {runs[-1]['reward_train_s']:.0f}s  sampling {guided_s:.0f}s")
        if seed == 0 and out_dir is not None:
            _save_grids(out_dir, cfg, baseline, censored, judge.base, jc)
    censored_block = judge_all.pool(runs)
    censored_block.update(reward_train_s=float(np.median([r["reward_train_s"] for r in runs])),
                          guided_s=float(np.median([r["guided_s"] for r in runs])),
                          time_ratio=float(np.median([r["guided_s"] for r in runs])) / unguided_s)
    result = dict(
        config=asdict(cfg), name=cfg.name, feature=cfg.feature, dominance=feature_spec(cfg.feature)["dominance"],
        machine=machine(), model_fingerprint=model_fingerprint(model.unet),
        baseline=base, censored=censored_block, runs=runs,
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


HEADER = ("| run | baseline malign % [95% CI] | censored malign % [95% CI] | tv (floor) | recall vs baseline | "
          "confident (base → censored) | reward train s | sampling s (unguided → guided) |\n"
          "|---|---|---|---|---|---|---|---|\n")


def _tv(c: dict, b: dict) -> str:
    if c.get("tv") is None:
        return "n/a"
    floor = b.get("tv_floor")
    return f"{c['tv']:.3f}" + ("" if floor is None else f" ({floor:.3f})")


def markdown_rows(results: list[dict], link: str | None = None) -> str:
    """One table row per result; with ``link`` (a folder), the run's name links to its grid."""
    rows = []
    for r in results:
        b, c = r["baseline"], r["censored"]
        name = f"[{r['name']}]({link}/{r['name']}.png)" if link else r["name"]
        rows.append(
            f"| {name} | {b['malign_pct']:.2f} [{b['ci_pct'][0]:.2f}, {b['ci_pct'][1]:.2f}] | "
            f"{c['malign_pct']:.2f} [{c['ci_pct'][0]:.2f}, {c['ci_pct'][1]:.2f}] (n={c['n']}) | {_tv(c, b)} | "
            f"{_ratio(c['recall_ratio'])} | {b['confident']:.2f} → {c['confident']:.2f} | {c['reward_train_s']:.1f} | "
            f"{b['unguided_s']:.0f} → {c['guided_s']:.0f} ({c['time_ratio']:.2f}×) |")
    return HEADER + "\n".join(rows) + "\n"


def time_guidance(model, reward, n: int = 64, steps: int = 25, reps: int = 5,
                  settings: GuidanceSettings = DEFAULT_GUIDANCE, everies=(1, 2, 4), log=print) -> dict:
    """Wall time of guided (``settings``, the default unless given) vs unguided sampling, same
    seeds, batch and steps, interleaved; time guidance also with its gradient reused (``everies``).

    The settings take turns inside every repetition, so a neighbour's load on a shared machine
    hits them alike; the ratios are medians over repetitions. Returns seconds and ratios.
    """
    if min(n, steps, reps) < 1:
        raise CensorError("n, steps and reps must be positive")
    seeds = seeds_for(n, GALLERY_SEED)
    runs = {"unguided": None}
    if settings.kind == "time":
        runs.update({f"time every {k}": guidance_for(reward, settings.with_(every=k)) for k in everies})
    else:
        runs[settings.kind] = guidance_for(reward, settings)
    seconds = {name: [] for name in runs}
    sample(model, seeds[: min(n, 4)], steps=2)  # warm-up: first-call allocations are not the method's cost
    for rep in range(reps):
        for name, guidance in runs.items():
            t0 = time.perf_counter()
            sample(model, seeds, steps=steps, guidance=guidance)
            seconds[name].append(time.perf_counter() - t0)
        log(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in seconds.items()))
    base = np.array(seconds["unguided"])
    ratios = {name: float(np.median(np.array(s) / base)) for name, s in seconds.items() if name != "unguided"}
    return dict(machine=machine(), model_fingerprint=model_fingerprint(model.unet), n=n, steps=steps, reps=reps,
                settings=settings.as_dict(), seconds={k: [round(x, 2) for x in v] for k, v in seconds.items()},
                median_s={k: float(np.median(v)) for k, v in seconds.items()}, ratio_median=ratios)
