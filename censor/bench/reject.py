"""Rejection vs guidance vs both, on the same reward, in one run (issue 9).

``python -m censor bench-reject --feature bags --budget 100 --method ensemble --weight 4 --n 1000 --steps 25 --seeds 3``

Per labelling seed the simulated labeller labels, one reward is trained (bench.collect_labels_and_train,
so imitation works as in ``bench``), and its threshold is cross-fitted on the same labels
(rejection.heldout_threshold; or ``--threshold P``). Then, for n / seeds gallery images:

- ``reject``: unguided draws from the gallery seeds on, kept when the reward passes them;
- ``guide``: guided sampling of the gallery seeds (what ``bench`` measures);
- ``guide+reject``: guided draws, the same filter (its first batch *is* the ``guide`` gallery);
- ``repaint``: the unguided gallery, each image the filter drops repainted inside the reward's malign
  mask instead (sampling.repaint: keep the rest, redraw the mark), so nothing is thrown away.

``modes`` picks some of them (a run of ``reject,repaint`` needs no guided sampling at all).

Unguided draws do not depend on the reward, so they are sampled once per model and steps, kept in
the cache folder and shared by seeds and features; every draw is charged the sampling time it took
when it was made (for the cached baseline prefix: this run's measured unguided time per image), so
"seconds per accepted image" counts sampling and scoring of every drawn image. The oracle only judges,
through the benchmarks' shared harness (``bench.harness``): malign % (Wilson), tv of the kept images'
class histogram against the baseline's benign one (its floor from a second unguided gallery, ``FLOOR_SEED``),
recall against the real benign test images and the oracle-confident fraction.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from censor.bench.censoring import BenchConfig, collect_labels_and_train, make_guidance
from censor.bench.harness import GALLERY_SEED, Arm, Harness, arms_grid, fmt, median, save, seed_share
from censor.bench.reject_report import markdown_table
from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.sampling.loop import sample, seeds_for
from censor.sampling.rejection import DEFAULT_CAP_FACTOR, reject_sample
from censor.sampling.thresholds import DEFAULT_FOLDS, DEFAULT_RECALL, THRESHOLD_SCALE, heldout_threshold, reference_images
from censor.sampling.repaint import repaint_flagged

MODES = ("reject", "guide", "guide+reject", "repaint")


class DrawStore:
    """Images already drawn, by their seeds, each with the seconds it cost: a ``reject_sample`` sampler
    that samples only seeds it has not drawn before and charges every image it hands out."""

    def __init__(self, model, steps: int, guidance=None, seeds=(), images=None, cost=None):
        self.model, self.steps, self.guidance = model, steps, guidance
        self.images = np.zeros((0, *model.image_shape[1:]), dtype=np.uint8) if images is None else images
        self.cost = np.zeros(len(self.images)) if cost is None else np.asarray(cost, dtype=float)
        self.seeds = [int(s) for s in seeds]
        self.index = {s: i for i, s in enumerate(self.seeds)}
        self.charged_s = 0.0

    def __call__(self, seeds) -> np.ndarray:
        new = [int(s) for s in seeds if int(s) not in self.index]
        if new:
            t0 = time.perf_counter()
            imgs = to_uint8(sample(self.model, new, steps=self.steps, guidance=self.guidance))
            dt = time.perf_counter() - t0
            self.index.update({s: len(self.seeds) + i for i, s in enumerate(new)})
            self.seeds += new
            self.images = np.concatenate([self.images, imgs])
            self.cost = np.concatenate([self.cost, np.full(len(new), dt / len(new))])
        rows = [self.index[int(s)] for s in seeds]
        self.charged_s += float(self.cost[rows].sum())
        return self.images[rows]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": torch.from_numpy(np.ascontiguousarray(self.images)),
                   "cost": torch.from_numpy(self.cost), "seeds": torch.tensor(self.seeds, dtype=torch.int64)},
                  str(path))


def _unguided_store(h: Harness, cache_dir) -> tuple[DrawStore, Path | None]:
    """The unguided draws of every earlier run (they do not depend on the reward), else the baseline,
    charged this run's unguided seconds per image."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"reject_draws_{h.fingerprint}_s{h.steps}.safetensors"
        if path.is_file():
            t = load_file(str(path))
            if len(t["images"]) >= len(h.baseline):
                # stores written before they kept their seeds hold a prefix of the gallery seeds
                seeds = t["seeds"].tolist() if "seeds" in t else seeds_for(len(t["images"]), GALLERY_SEED)
                return DrawStore(h.model, h.steps, None, seeds, t["images"].numpy(), t["cost"].numpy()), path
    return DrawStore(h.model, h.steps, None, h.seeds, h.baseline.copy(), np.full(len(h.baseline), h.unguided_rate)), path


def _accounted(result, store: DrawStore) -> dict:
    """A rejection arm's record: the draws, their charged sampling seconds and the seconds per kept image."""
    return dict(result.as_dict(), charged_sampling_s=round(store.charged_s, 2),
                s_per_accepted=(store.charged_s + result.scoring_s) / max(result.kept, 1))


def run_reject_bench(cfg: BenchConfig, model, oracle, pool, reference: dict, out_dir=None, cache_dir=None,
                     threshold: float | None = None, recall: float = DEFAULT_RECALL, folds: int = DEFAULT_FOLDS,
                     cap_factor: float = DEFAULT_CAP_FACTOR, modes=MODES, repaint: dict | None = None,
                     scale: str = THRESHOLD_SCALE, log=print) -> dict:
    """Every labelling seed censors the same ceil(n / seeds) gallery seeds in each of ``modes``;
    the baseline row is over all n baseline images. ``repaint``: keyword arguments of
    ``repaint_flagged`` (start, attempts, harmonize) other than its defaults; ``scale``: the cross-fitted
    threshold's (thresholds.THRESHOLD_SCALES; carried to the final reward on the pool less the labelled)."""
    repaint = dict(repaint or {})
    unknown = [m for m in modes if m not in MODES]
    modes = tuple(m for m in MODES if m in modes)  # in the table's order
    if unknown or not modes:
        raise CensorError(f"unknown or no modes {unknown}; use some of {', '.join(MODES)}")
    per_seed = seed_share(cfg.n, cfg.seeds)
    h = Harness(model, oracle, reference, cfg.feature, cfg.steps, per_seed, total=cfg.n, cache_dir=cache_dir)
    gallery_seeds, baseline = h.gallery(0)
    unguided, store_path = _unguided_store(h, cache_dir)
    base = h.baseline_row(s_per_image=h.unguided_rate)
    log(f"baseline {h.judge_all.base_rate}, recall {base['recall']:.3f} on {per_seed}, tv floor "
        f"{h.floor:.3f}; unguided {h.unguided_rate:.3f} s/image")
    cap = math.ceil(cap_factor * per_seed)
    seeds_info = []

    def arms(seed):
        s = collect_labels_and_train(cfg, model, oracle, pool, seed, log, cache_dir=cache_dir)
        if s.reward is None:
            raise CensorError(f"labelling seed {seed}: the {s.viewed} viewed images hold one class only; raise --budget")
        if threshold is None:  # cross-fitted on the session's own labels
            th = heldout_threshold(s.images, s.labels, kind=cfg.reward, diffusion=model, members=len(s.reward.members),
                                   alpha=cfg.alpha, iterations=cfg.iterations, folds=folds, recall=recall, seed=seed,
                                   boxes=s.boxes, scale=scale, reward=s.reward,
                                   reference=reference_images(pool.images, s.images))
        else:
            th = dict(threshold=float(threshold), user=True, seconds=0.0)
        log(f"  seed {seed}: threshold p={th['threshold']:.4f} (held-out benign pass "
            f"{th.get('heldout_benign_pass', float('nan')):.2f}, {th['seconds']:.0f}s)")
        seeds_info.append(dict(seed=seed, labels=int(len(s.labels)), malign_labels=int((s.labels == 0).sum()),
                               reward_train_s=s.reward.info["train_seconds"], threshold=dict(th)))
        if "reject" in modes:
            unguided.charged_s = 0.0
            rj = reject_sample(model, s.reward, per_seed, GALLERY_SEED, th["threshold"], steps=cfg.steps, cap=cap,
                               sampler=unguided)
            yield "reject", Arm(rj.images, _accounted(rj, unguided))
        if "repaint" in modes:
            yield "repaint", _repaint_arm(h, s.reward, unguided(gallery_seeds), gallery_seeds, th["threshold"], repaint)
        if "guide" not in modes and "guide+reject" not in modes:
            return
        t1 = time.perf_counter()
        guided_imgs = to_uint8(sample(model, gallery_seeds, steps=cfg.steps, guidance=make_guidance(cfg, s.reward)))
        guide_s = time.perf_counter() - t1
        if "guide" in modes:
            yield "guide", Arm(guided_imgs, _whole(per_seed, guide_s))
        if "guide+reject" not in modes:
            return
        # guide+reject: its first batch *is* the guide gallery, charged what it cost
        guided = DrawStore(model, cfg.steps, make_guidance(cfg, s.reward), gallery_seeds, guided_imgs,
                           np.full(per_seed, guide_s / per_seed))
        gr = reject_sample(model, s.reward, per_seed, GALLERY_SEED, th["threshold"], steps=cfg.steps, cap=cap,
                           sampler=guided)
        yield "guide+reject", Arm(gr.images, _accounted(gr, guided))

    def logged(mode, m):
        m["time_ratio"] = h.time_ratio(m["s_per_accepted"])
        log(f"    {mode:13s} malign {m['malign']}/{m['n']}  tv {fmt(m['tv'], '{:.3f}', '–')}  "
            f"recall {m['recall_ratio'] or float('nan'):.2f}x  drawn {m['drawn']}  {m['s_per_accepted']:.3f} s/accepted")

    rows, first = h.run(cfg.seeds, arms, on_row=logged)
    runs = [dict(info, modes={mode: rows[mode][i] for mode in modes}) for i, info in enumerate(seeds_info)]
    name = _name(cfg, threshold, cap_factor, modes, repaint)
    if out_dir is not None:
        _save_grid(out_dir, name, cfg.feature, baseline, h.judges[0].base, first)
    if store_path is not None:
        unguided.save(store_path)
    result = dict(kind="reject-bench", name=name, config=dict(vars(cfg), window=list(cfg.window)), **h.header(),
                  reject=dict(threshold=threshold, recall=recall, folds=folds, cap_factor=cap_factor, cap_per_seed=cap,
                              repaint=repaint),
                  baseline=base, modes={mode: _pool(runs, mode, h) for mode in modes}, runs=runs)
    if out_dir is not None:
        save(out_dir, name, result, markdown_table(result))
    return result


def _pool(runs, mode, h: Harness) -> dict:
    """One mode over the labelling seeds: the harness's pooling (Wilson counts, tv of the pooled
    histogram and its floor) over the seeds that kept images, plus the draw and time accounting."""
    rows = [r["modes"][mode] for r in runs]
    out = h.pool(rows)
    seconds = sum(r["charged_sampling_s"] + r.get("scoring_s", 0.0) for r in rows)
    kept = sum(r["kept"] for r in rows)
    s_per_accepted = seconds / kept if kept else None
    out.update(drawn=sum(r["drawn"] for r in rows), dropped=sum(r["dropped"] for r in rows),
               sampled=sum(r["sampled"] for r in rows), kept=kept, requested=sum(r.get("requested", r["kept"]) for r in rows),
               capped_seeds=sum(bool(r["capped"]) for r in rows),
               s_per_accepted=s_per_accepted, seconds=round(seconds, 1), time_ratio=h.time_ratio(s_per_accepted),
               reward_train_s=median(runs, "reward_train_s"),
               threshold_s=float(np.median([r["threshold"]["seconds"] for r in runs])),
               thresholds=[round(r["threshold"]["threshold"], 4) for r in runs])
    return out


def _whole(n: int, seconds: float, **extra) -> dict:
    """The record of an arm that keeps every one of its ``n`` images (nothing drawn beyond them)."""
    return dict(kept=n, drawn=n, dropped=0, sampled=n, capped=False, charged_sampling_s=round(seconds, 2),
                s_per_accepted=seconds / n, **extra)


def _repaint_arm(h: Harness, reward, images: np.ndarray, seeds, threshold: float,
                 options: dict) -> Arm:
    """The unguided gallery with every dropped image repainted: charged its unguided sampling at the
    run's rate plus the repainting and scoring."""
    rp = repaint_flagged(h.model, reward, images, seeds, threshold, **options)
    sampled_s = h.unguided_rate * len(images)
    return Arm(rp.images, _whole(len(images), sampled_s + rp.seconds, scoring_s=0.0, repaint=rp.as_dict()))


def _name(cfg: BenchConfig, threshold, cap_factor, modes=MODES, repaint=None) -> str:
    extra = "" if threshold is None else f"_p{threshold:g}"
    extra += "".join(f"_rp-{k}{v:g}" for k, v in sorted((repaint or {}).items()))
    extra += "" if cap_factor == DEFAULT_CAP_FACTOR else f"_cap{cap_factor:g}"
    extra += "" if tuple(modes) == MODES else "_" + "-".join(m.replace("+", "") for m in modes)
    return f"reject_{cfg.name}{extra}"


def _save_grid(out_dir, name, feature, baseline, jb, first) -> None:
    """Rows of 10: baseline, then each mode (2 rows each; malign framed red)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arms_grid(feature, dict(baseline=(baseline, jb), **first)).save(out / f"{name}.png")
