"""The one benchmark harness: a fixed baseline gallery, its judge, unguided timing, arms, pooling, saving.

Every benchmark (``bench``, ``bench-reject``, ``bench-active``, ``rlhf compare``, the sweep) is a
small configuration of this: which arms make a censored gallery for one labelling seed (guided
sampling, rejection, guide+reject, a fine-tuned model, ...) and which table it prints. What they
share is here, once:

- the baseline: unguided images for the fixed seeds ``seeds_for(·, GALLERY_SEED)``, cached per
  model, and a second unguided gallery from ``FLOOR_SEED`` whose tv is the sampling floor;
- disjoint slices of the baseline's seeds, one per labelling seed (``slices``), so the pooled
  figures rest on independent images and every censored image has its unguided twin;
- one judge (``eval.judge.GalleryJudge``) for every gallery, also for what a rejection arm keeps
  (nothing, or too few images for k-NN recall);
- unguided seconds per image, measured in the run on the gallery seeds, the denominator of every
  ``time_ratio``;
- pooling over labelling seeds (Wilson counts, tv of the pooled histogram and its floor) and the
  JSON + markdown written next to the grids.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from censor.core.data import to_uint8
from censor.core.progress import stages
from censor.eval.features import feature_spec, is_malign
from censor.eval.judge import KNN_K, GalleryJudge
from censor.eval.metrics import class_histogram, pooled_rate
from censor.gallery.grid import grid
from censor.rewards.ensemble import model_fingerprint
from censor.sampling.loop import sample, seeds_for

GALLERY_SEED = 10_000  # the benchmark's fixed gallery seeds; the pool uses seed 1, so they never overlap
FLOOR_SEED = 40_000  # a second unguided gallery from disjoint seeds: the sampling floor of tv
TIMING_N = 100  # images of the unguided timing (at most the per-seed gallery)


def machine() -> str:
    """Where a row was measured, in words: every timing is only comparable within one machine."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (GPU)"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def cached_baseline(model, n: int, steps: int, cache_dir: str | Path | None, seed: int = GALLERY_SEED,
                    progress=None) -> np.ndarray:
    """The unguided gallery for the benchmark's fixed seeds, kept on disk per model, n and steps.

    Every configuration compares against the same baseline, so it is sampled once per model.
    """
    path = None
    if cache_dir is not None:
        tag = "" if seed == GALLERY_SEED else f"_seed{seed}"
        path = Path(cache_dir) / f"baseline_{model_fingerprint(model.unet)}_n{n}_s{steps}{tag}.safetensors"
        if path.is_file():
            return load_file(str(path))["images"].numpy()
    images = to_uint8(sample(model, seeds_for(n, seed), steps=steps, show_bar=True, progress=progress))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": torch.from_numpy(np.ascontiguousarray(images))}, str(path))
    return images


def seed_share(n: int, seeds: int) -> int:
    """Images each labelling seed censors when ``n`` is the total over ``seeds``: ceil(n / seeds)."""
    return -(-n // seeds)


def unguided_rate(model, seeds, steps: int, progress=None) -> float:
    """Seconds per image of unguided sampling of ``seeds``: what every guided arm is divided by."""
    t0 = time.perf_counter()
    sample(model, seeds, steps=steps, progress=progress)
    return (time.perf_counter() - t0) / len(seeds)


@dataclass
class Arm:
    """What one arm made for one labelling seed: its images and what the bench reports beside the judgement."""

    images: np.ndarray
    record: dict = field(default_factory=dict)


class Harness:
    """The baseline, its floor, the judges and the unguided timing of one feature, built once per run.

    ``per_seed`` images per labelling seed, ``slices`` disjoint slices of the gallery seeds (one per
    labelling seed; 1 where every seed censors the same gallery), ``total`` baseline images
    (default ``per_seed × slices``; more for a baseline row over a larger gallery).
    """

    def __init__(self, model, oracle, reference: dict, feature: str, steps: int, per_seed: int, slices: int = 1,
                 total: int | None = None, cache_dir=None, progress=None):
        self.model, self.oracle, self.reference, self.steps, self.per_seed = model, oracle, reference, steps, per_seed
        self.slices, total = slices, total or per_seed * slices
        self.seeds = seeds_for(total, GALLERY_SEED)
        timed = min(per_seed, TIMING_N)  # the bar: both baselines (when not cached), then the timing run
        bar = stages(progress, dict(baseline=total, floor=total, timing=timed))
        self.baseline = cached_baseline(model, total, steps, cache_dir, progress=bar["baseline"])
        self.second = cached_baseline(model, total, steps, cache_dir, seed=FLOOR_SEED, progress=bar["floor"])
        self.unguided_rate = unguided_rate(model, self.seeds[:timed], steps, progress=bar["timing"])
        self.fingerprint = model_fingerprint(model.unet)
        self._judge(feature)

    def _judge(self, feature: str) -> None:
        self.feature = feature
        self.judge_all = GalleryJudge(self.oracle, feature, self.reference, self.baseline, self.second,
                                      n_real=self.per_seed)
        if self.slices == 1 and len(self.baseline) == self.per_seed:
            self.judges = [self.judge_all]
        else:  # recall on the same n as each censored gallery
            self.judges = [GalleryJudge(self.oracle, feature, self.reference, self.baseline[self.slice(s)],
                                        n_real=self.per_seed) for s in range(self.slices)]

    def for_feature(self, feature: str) -> "Harness":
        """The same baseline, floor and timing, judged for another feature (no sampling again)."""
        other = copy.copy(self)
        other._judge(feature)
        return other

    @property
    def floor(self) -> float | None:
        return self.judge_all.floor

    def slice(self, s: int) -> slice:
        return slice(s * self.per_seed, (s + 1) * self.per_seed)

    def gallery(self, s: int = 0) -> tuple[list[int], np.ndarray]:
        """The seeds and unguided images of slice ``s``: what labelling seed ``s`` censors."""
        sl = self.slice(s)
        return self.seeds[sl], self.baseline[sl]

    def baseline_row(self, **extra) -> dict:
        """The baseline block of a bench JSON (precision and recall: the mean over slices, on per_seed images)."""
        row = self.judge_all.baseline_row()
        row.update(precision=float(np.mean([j.base_precision for j in self.judges])),
                   recall=float(np.mean([j.base_recall for j in self.judges])), **extra)
        return row

    def time_ratio(self, seconds_per_image: float | None) -> float | None:
        if seconds_per_image is None or self.unguided_rate <= 0:
            return None
        return seconds_per_image / self.unguided_rate

    def judge(self, images: np.ndarray, s: int = 0, judgement=None) -> tuple[dict, object]:
        """One gallery judged against slice ``s`` (recall) and the whole baseline (tv), and the oracle's
        judgement. What a rejection arm keeps may be nothing, or too few for k-NN recall: then only
        counts, tv and confidence."""
        if len(images) == 0:
            return dict(malign=0, n=0, recall=None, recall_ratio=None, confident=None, tv=None,
                        class_shares=None), None
        j = judgement if judgement is not None else self.oracle.judge(images)
        judge = self.judges[min(s, len(self.judges) - 1)]
        if len(images) > KNN_K:
            row = judge(images, j)
        else:
            bad = is_malign(j, self.feature)
            row = dict(pooled_rate(int(bad.sum()), len(bad)), precision=None, recall=None, recall_ratio=None,
                       class_recall_ratio={}, confident=float(j.confident.mean()),
                       class_shares=[round(float(x), 4) for x in class_histogram(j)],
                       watermark_share=float(j.watermarked.mean()))
        row["tv"] = self.judge_all.tv(j)
        row["class_recall_ratio"] = {str(c): v for c, v in row["class_recall_ratio"].items()}  # as JSON keeps them
        return row, j

    def pool(self, rows: list[dict]) -> dict:
        """Rows of one arm over labelling seeds: the judge's pooling over the rows that hold images."""
        judged = [r for r in rows if r["n"]]
        if judged:
            return self.judge_all.pool(judged)
        # nothing kept at all: nothing to judge (the Wilson interval of 0/0 is all of [0, 100])
        return dict(malign=0, n=0, malign_pct=None, ci_pct=[0.0, 100.0], tv=None, tv_floor=self.floor,
                    recall_ratio=None, confident=None)

    def run(self, seeds: int, arms: Callable[[int], Iterable[tuple[str, Arm]]],
            on_row: Callable | None = None) -> tuple[dict[str, list[dict]], dict]:
        """For every labelling seed, judge what each arm (``arms(seed)`` yields (name, Arm)) made.

        Returns every arm's rows (seed, judgement, the arm's record) and, for the first seed, each
        arm's (images, judgement), for the grids. ``on_row(name, row)`` sees every row as it is made."""
        runs: dict[str, list[dict]] = {}
        first = {}
        for seed in range(seeds):
            for name, arm in arms(seed):
                judged, j = self.judge(arm.images, seed)
                row = dict(seed=seed, **judged, **arm.record)
                runs.setdefault(name, []).append(row)
                if seed == 0:
                    first[name] = (arm.images, j)
                if on_row is not None:
                    on_row(name, row)
        return runs, first

    def header(self, **extra) -> dict:
        """Fields every bench JSON opens with: the feature, its dominance, where and on what it ran."""
        return dict(feature=self.feature, dominance=feature_spec(self.feature)["dominance"], machine=machine(),
                    model_fingerprint=self.fingerprint, **extra)


def median(rows: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in rows]))


def save(out_dir, stem: str, result: dict, markdown: str) -> Path:
    """``stem``.json and ``stem``.md in ``out_dir``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float))
    (out / f"{stem}.md").write_text(markdown)
    return out


def comparison_grid(feature: str, baseline, censored, jb, jc, rows: int = 5):
    """``rows`` rows of 10 baseline images over as many of the censored ones from the same seeds,
    malign ones (by the oracle's judgements ``jb``/``jc``) framed red: the bench grids."""
    k = 10 * rows
    both = np.concatenate([baseline[:k], censored[:k]])
    marks = np.concatenate([is_malign(jb, feature)[:k], is_malign(jc, feature)[:k]])
    return grid(both, nrow=10, marks=marks)


def arms_grid(feature: str, blocks: dict, per: int = 20):
    """Rows of 10, ``per`` images of each arm in ``blocks`` (name -> (images, judgement or None)) from the
    same gallery seeds, top to bottom in order, the oracle's malign ones framed red; an arm that kept
    fewer images (a rejection arm) is padded black. What the reporting rule asks to look at beside a table."""
    images, marks = [], []
    for imgs, judged in blocks.values():
        imgs = np.asarray(imgs)[:per]
        m = is_malign(judged, feature)[:per] if judged is not None and len(imgs) else np.zeros(len(imgs), bool)
        pad = per - len(imgs)
        if pad:
            shape = next(np.asarray(b[0]).shape[1:] for b in blocks.values() if len(b[0]))
            imgs = np.concatenate([imgs.reshape(-1, *shape), np.zeros((pad, *shape), np.uint8)])
            m = np.concatenate([m, np.zeros(pad, bool)])
        images.append(imgs)
        marks.append(m)
    return grid(np.concatenate(images), nrow=10, marks=np.concatenate(marks))


def fmt(x, spec: str = "{:.2f}", missing: str = "n/a") -> str:
    """A number of a table cell; ``missing`` where a row has none (nothing kept, saved before it existed)."""
    return missing if x is None else spec.format(x)


def tv_cell(row: dict, baseline: dict | None = None) -> str:
    """``tv (floor)`` of a table row (the floor from the row, else from its baseline); "n/a" for rows
    saved before tv was measured or with nothing kept."""
    if row.get("tv") is None:
        return "n/a"
    floor = row.get("tv_floor", (baseline or {}).get("tv_floor"))
    return f"{row['tv']:.3f}" + ("" if floor is None else f" ({floor:.3f})")
