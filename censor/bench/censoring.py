"""The benchmark: how far censoring takes the malign fraction, and at what cost, judged by the oracle.

``python -m censor bench --feature watermark --budget 100 --method ensemble --guidance time --seeds 3``

Per labelling seed: the simulated labeller views ``budget`` pool images (about three minutes of a
person's time at budget 100), a reward is trained on its labels (imitation: further rounds label
galleries censored by the previous round), and n / seeds images are sampled with guidance from that
seed's own slice of the baseline's fixed seeds, so every censored image has its unguided twin and the
pooled figures rest on n independent images. Every malign % is reported next to what shows whether
the rest of the distribution survived (``bench.harness``, the one harness of every benchmark): tv of the class histogram against
the baseline's benign images with its floor, k-NN recall against the real benign test images
(overall and per class), the oracle-confident fraction, the oracle-free drift figure, and a grid.
Results go to JSON + markdown.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np

from censor.bench.harness import Arm, Harness, comparison_grid, fmt, median, save, seed_share, tv_cell
from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.core.settings import (
    ALPHA,
    DEFAULT_GUIDANCE,
    DEFAULT_REWARD,
    GUIDANCE_KINDS,
    ITERATIONS,
    MEMBERS,
    METHODS,
    GuidanceSettings,
)
from censor.eval.drift import DriftMeter
from censor.eval.features import feature_spec
from censor.labels.imitation import imitation_round, pool_view
from censor.labels.labeller import SimulatedLabeller, can_box
from censor.rewards.architectures import scores_positions
from censor.rewards.ensemble import load_reward, model_fingerprint
from censor.rewards.training import train_reward
from censor.sampling.guidance import Guidance, guidance_for
from censor.sampling.loop import sample
from censor.sampling.strength import auto_strength, reward_benign

D = DEFAULT_GUIDANCE


@dataclass
class BenchConfig:
    feature: str = "watermark"
    budget: int = 100
    method: str = DEFAULT_REWARD.method
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
    boxes: bool = False  # region feedback: the labeller also boxes the stamp on each malign image

    def __post_init__(self):
        feature_spec(self.feature)
        if self.method not in METHODS:
            raise CensorError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.guidance not in GUIDANCE_KINDS:
            raise CensorError(f"unknown guidance {self.guidance!r}; use one of {', '.join(GUIDANCE_KINDS)}")
        if self.reward is None:
            self.reward = "resnet18" if self.guidance == "universal" else "ddpm-encoder"
        if self.boxes and not (scores_positions(self.reward) and can_box(self.feature)):  # the labeller boxes stamps
            raise CensorError("--boxes needs the watermark feature and a reward that scores positions (local-patch)")
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
        extra += "_boxes" if self.boxes else ""
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
        if drift is None:
            raise CensorError("automatic strength needs the drift meter of the pool")
        choice = auto_strength(drift[0].model, reward, drift[0], drift[1], settings)
        g = guidance_for(reward, settings.with_(weight=choice.weight))
        g.stats["auto"] = choice.as_dict()
        return g
    return guidance_for(reward, settings)


def pool_drift(meter, reward, model, pool) -> tuple:
    """(meter, the reward's P(benign) on the pool images): what ``make_guidance`` and the drift figure need."""
    return meter, reward_benign(reward, model, pool.images)


def train_for_method(cfg: BenchConfig, model, images, labels, seed, resume=None, progress=None, labeller=None):
    """The reward of ``cfg.method`` on these labels: what each method means *in the benchmark*.

    - ``single``: ONE bootstrap member (trained on a resample of the labels, as one member of an
      ensemble is), so single vs ensemble measures what the other K-1 members add. The studio's
      "single" is one model on all labels: that is the bench's ``union``.
    - ``union``: one member on all labels;
    - ``ensemble`` and ``imitation``: ``cfg.members`` bootstrap members (imitation adds rounds).
    With ``cfg.boxes`` the ``labeller`` also boxes what it labelled malign (region feedback)."""
    members, boxes = 1 if cfg.method in ("single", "union") else cfg.members, (labeller.boxes(images, labels) if cfg.boxes else None)
    return train_reward(images, labels, kind=cfg.reward, diffusion=model, members=members, alpha=cfg.alpha,
                        iterations=cfg.iterations, batch_size=cfg.batch_size, init=cfg.init, seed=seed,
                        resume=resume, bootstrap=True if cfg.method == "single" else None, progress=progress,
                        boxes=boxes)


def _reward_cache(cfg: BenchConfig, model, seed: int, cache_dir) -> Path | None:
    """Where a first-round reward is kept: it depends on the labels and training settings only, so
    guidance variants on the same feature reuse it instead of retraining (imitation rounds depend on
    the guidance, so they are never cached)."""
    if cache_dir is None or cfg.method == "imitation":
        return None
    key = (f"{cfg.feature}_{cfg.method}_{cfg.reward}_b{cfg.budget}_k{cfg.members}_a{cfg.alpha:g}_i{cfg.iterations}"
           f"_bs{cfg.batch_size}_{cfg.init}_f{cfg.flip_rate:g}_s{seed}" + ("_boxes" if cfg.boxes else ""))
    return Path(cache_dir) / "rewards" / model_fingerprint(model.unet) / key


class Labelled(NamedTuple):
    """One simulated session: its reward (None when the views held one class only) and everything labelled."""

    reward: object
    images: np.ndarray
    labels: np.ndarray
    viewed: int
    boxes: list | None = None  # region feedback (cfg.boxes): a box per label, None where unboxed


def collect_labels_and_train(cfg: BenchConfig, model, oracle, pool, seed: int, log=print, cache_dir=None,
                             meter=None, progress=None) -> Labelled:
    """What a person does in a session: view, label, train (and for imitation, repeat on censored galleries).
    ``progress`` follows the first training (the studio's comparison trains once)."""
    labeller = SimulatedLabeller(oracle, cfg.feature, cfg.flip_rate, seed=seed)
    view = pool_view(len(pool), cfg.budget, seed)
    images, labels = pool.images[view], labeller.label(pool.images[view])
    if (labels == 0).sum() == 0 or (labels == 1).sum() == 0:
        return Labelled(None, images, labels, labeller.viewed)  # nothing to learn from: a real outcome of small budgets
    def done(reward):  # the session as it ends (images and labels grow in imitation rounds), boxed with cfg.boxes
        return Labelled(reward, images, labels, labeller.viewed, labeller.boxes(images, labels) if cfg.boxes else None)
    cached = _reward_cache(cfg, model, seed, cache_dir)
    if cached is not None and (cached / "reward.json").is_file():
        return done(load_reward(cached, model))
    reward = train_for_method(cfg, model, images, labels, seed, progress=progress, labeller=labeller)
    if cached is not None:
        reward.save(cached)
    for r in range(2, (cfg.rounds if cfg.method == "imitation" else 1) + 1):
        log(f"  imitation round {r}: labelling {cfg.budget} censored images")
        drift = pool_drift(meter, reward, model, pool) if cfg.auto else None
        images, labels, reward = imitation_round(
            model, labeller, reward, make_guidance(cfg, reward, drift), images, labels, count=cfg.budget,
            session_seed=seed, round_=r, steps=cfg.steps,
            train=lambda i, lab, resume: train_for_method(cfg, model, i, lab, seed, resume=resume, labeller=labeller))
    return done(reward)


def run_bench(cfg: BenchConfig, model, oracle, pool, reference: dict, out_dir: str | Path | None = None,
              log=print, cache_dir: str | Path | None = None) -> dict:
    """``cfg.n`` is the total over labelling seeds: each seed censors its own ceil(n / seeds) noises
    (disjoint slices of the baseline's seeds), so the pooled figures rest on n independent images and
    every censored image has its unguided twin in the baseline."""
    per_seed = seed_share(cfg.n, cfg.seeds)
    h = Harness(model, oracle, reference, cfg.feature, cfg.steps, per_seed, slices=cfg.seeds, cache_dir=cache_dir)
    unguided_s = h.unguided_rate * per_seed  # wall time of one seed's gallery, on the same images and batch
    base = h.baseline_row(unguided_s=round(unguided_s, 1))
    meter = DriftMeter(model, pool.images)  # the oracle-free drift figure, as the studio shows it
    log(f"baseline: {h.judge_all.base_rate}  recall {base['recall']:.3f} on {per_seed}  tv floor {h.floor:.3f}  "
        f"({unguided_s:.0f}s unguided for {per_seed})")

    def arms(seed):
        gallery_seeds, baseline = h.gallery(seed)
        s = collect_labels_and_train(cfg, model, oracle, pool, seed, log, cache_dir, meter)
        if s.reward is None:
            log(f"  seed {seed}: the {s.viewed} viewed images held only one class; no reward, gallery unchanged")
            yield "censored", Arm(baseline, _record(s, None, None, unguided_s, 0.0, meter, baseline))
            return
        drift = pool_drift(meter, s.reward, model, pool)
        t1 = time.time()
        guidance = make_guidance(cfg, s.reward, drift)
        auto_s = time.time() - t1  # the automatic strength's probe ladder (0 without --auto)
        censored = to_uint8(sample(model, gallery_seeds, steps=cfg.steps, guidance=guidance, show_bar=True))
        yield "censored", Arm(censored, _record(s, guidance, drift, time.time() - t1, auto_s, meter, censored))

    def logged(_, row):
        log(f"  seed {row['seed']}: {row['malign_pct']:.2f}% malign  tv {row['tv']:.3f}  drift {row['drift']['tv']:.3f}"
            + (f" (auto ω {row['auto']['weight']:g})" if row["auto"] else "") + f"  recall {row['recall']:.3f} "
            f"({_ratio(row['recall_ratio'])})  confident {row['confident']:.2f}  "
            f"reward {row['reward_train_s']:.0f}s  sampling {row['guided_s']:.0f}s")

    runs, first = h.run(cfg.seeds, arms, on_row=logged)
    runs = runs["censored"]
    censored_block = h.pool(runs)
    censored_block.update(reward_train_s=median(runs, "reward_train_s"), guided_s=median(runs, "guided_s"),
                          time_ratio=median(runs, "guided_s") / unguided_s)
    result = dict(config=asdict(cfg), name=cfg.name, **h.header(), baseline=base, censored=censored_block, runs=runs)
    if out_dir is not None:
        save(out_dir, cfg.name, result, markdown_rows([result]))
        images, jc = first["censored"]
        comparison_grid(cfg.feature, h.gallery(0)[1], images, h.judges[0].base, jc).save(Path(out_dir) / f"{cfg.name}.png")
    return result


def _record(s: Labelled, guidance, drift, guided_s: float, auto_s: float, meter, images) -> dict:
    """What a bench row holds beside the judgement: labels, drift, times, the automatic strength's choice."""
    return dict(viewed=s.viewed, labels=int(len(s.labels)), malign_labels=int((s.labels == 0).sum()),
                drift=meter.measure(images, drift[1] if drift else None).as_dict(),
                auto=guidance.stats.get("auto") if guidance else None,
                reward_train_s=s.reward.info["train_seconds"] if s.reward else 0.0,
                guided_s=round(guided_s, 1), auto_s=round(auto_s, 1),
                nonfinite_fallbacks=guidance.stats["nonfinite_fallbacks"] if guidance else 0,
                no_reward=s.reward is None)


def collect(out_dir: str | Path) -> list[dict]:
    """Every saved bench result in a folder, sorted by feature and name (other JSON there, such as
    the fine-tuning comparison or timing runs, is skipped)."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*.json"))]
    rows = [r for r in rows if isinstance(r, dict) and {"name", "baseline", "censored", "config"} <= set(r)]
    return sorted(rows, key=lambda r: (r["config"]["feature"], r["name"]))


def _ratio(x) -> str:
    return fmt(x, "{:.2f}×")


HEADER = ("| run | baseline malign % [95% CI] | censored malign % [95% CI] | tv (floor) | recall vs baseline | "
          "confident (base → censored) | reward train s | sampling s (unguided → guided) |\n"
          "|---|---|---|---|---|---|---|---|\n")


def markdown_rows(results: list[dict], link: str | None = None) -> str:
    """One table row per result; with ``link`` (a folder), the run's name links to its grid."""
    rows = []
    for r in results:
        b, c = r["baseline"], r["censored"]
        name = f"[{r['name']}]({link}/{r['name']}.png)" if link else r["name"]
        rows.append(
            f"| {name} | {b['malign_pct']:.2f} [{b['ci_pct'][0]:.2f}, {b['ci_pct'][1]:.2f}] | "
            f"{c['malign_pct']:.2f} [{c['ci_pct'][0]:.2f}, {c['ci_pct'][1]:.2f}] (n={c['n']}) | {tv_cell(c, b)} | "
            f"{_ratio(c['recall_ratio'])} | {b['confident']:.2f} → {c['confident']:.2f} | {c['reward_train_s']:.1f} | "
            f"{b['unguided_s']:.0f} → {c['guided_s']:.0f} ({c['time_ratio']:.2f}×) |")
    return HEADER + "\n".join(rows) + "\n"
