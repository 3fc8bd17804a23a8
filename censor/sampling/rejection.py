"""Rejection filtering with the reward: sample (unguided or guided), drop what the reward calls malign,
draw more until the gallery is full or a cap on drawn samples is hit.

Two uses (issue 9):

- **reject only**: unguided sampling + the reward as a filter (best-of-n / discriminator rejection
  sampling). No gradients; the cost is the number of draws per kept image. It is the cost floor
  guided sampling is measured against.
- **strict**: guided sampling, then reject what the reward still doubts.

The verdict is the reward's P(benign) on the final image, kept when strictly above a threshold; both
live in ``sampling.thresholds`` (the default threshold is cross-fitted on the person's own labels).

Seeds continue from the gallery's: the i-th image examined has seed ``seeds_for(cap, seed)[i]``, so
the first ``count`` draws are exactly the baseline gallery's seeds and a run is reproducible; a kept
image is reproduced by sampling its seed alone (DDIM, eta = 0).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.core.progress import SEP, Progress, reporter
from censor.sampling.loop import sample, seeds_for
from censor.sampling.thresholds import benign_scores

DEFAULT_CAP_FACTOR = 10


def check_probability(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating)) or not 0 <= p < 1:
        raise CensorError(f"the rejection threshold is a probability in [0, 1), got {p!r}")
    return float(p)


# ---- the sampling mode ------------------------------------------------------------------------
@dataclass
class RejectionResult:
    images: np.ndarray  # the kept images, uint8 [kept, H, W], in seed order
    seeds: list[int]  # their seeds
    scores: np.ndarray  # their P(benign), all > threshold
    threshold: float
    requested: int
    drawn: int  # images examined in seed order until the gallery was full (or the cap was hit)
    dropped: int  # of those, the ones at or below the threshold
    sampled: int  # images generated (≥ drawn: the last batch may hold unneeded surplus)
    cap: int
    capped: bool  # True when the cap stopped the run before the gallery was full
    sampling_s: float = 0.0
    scoring_s: float = 0.0
    batches: list[int] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return len(self.seeds)

    def summary(self) -> str:
        text = f"drew {self.drawn}, dropped {self.dropped} (threshold p={self.threshold:.3g})"
        if self.capped:
            text += f"; hit the cap of {self.cap} draws with {self.kept} of {self.requested} images kept"
        return text

    def as_dict(self) -> dict:
        return dict(threshold=self.threshold, requested=self.requested, kept=self.kept, drawn=self.drawn,
                    dropped=self.dropped, sampled=self.sampled, cap=self.cap, capped=self.capped,
                    sampling_s=round(self.sampling_s, 2), scoring_s=round(self.scoring_s, 3), batches=self.batches)


def reject_sample(model, reward, count: int, seed: int, threshold: float, *, guidance=None, steps: int = 50,
                  cap: int | None = None, cap_factor: float = DEFAULT_CAP_FACTOR, batch_size: int | None = None,
                  sampler: Callable[[Sequence[int]], np.ndarray] | None = None,
                  progress: Progress | None = None, show_bar: bool = False) -> RejectionResult:
    """Sample in batches (unguided, or with ``guidance``), keep images whose P(benign) > ``threshold``,
    until ``count`` are kept or ``cap`` images were drawn (default ``cap_factor`` × count).

    The first batch is the ``count`` gallery seeds; later batches are sized from the acceptance rate
    so far (plus 10%), within the cap. ``sampler(seeds) -> uint8 images`` replaces the default
    (``sampling.sample`` with ``guidance``), e.g. to reuse draws already made. Hitting the cap is
    reported in the result (``capped``), not raised. ``progress`` gets a fraction in [0, 1].
    """
    if count < 1:
        raise CensorError(f"the number of images must be positive, got {count}")
    threshold = check_probability(threshold)
    cap = int(cap if cap is not None else math.ceil(cap_factor * count))
    if cap < count:
        raise CensorError(f"the cap on drawn samples ({cap}) is below the requested count ({count})")
    all_seeds = seeds_for(cap, seed)
    if sampler is None:
        def sampler(seeds, prog=None):
            return to_uint8(sample(model, seeds, steps=steps, guidance=guidance, progress=prog))
        takes_progress = True
    else:
        takes_progress = False
    kept_idx, kept_scores, batches = [], [], []
    sampled = drawn = dropped = 0
    sampling_s = scoring_s = 0.0
    images_kept = []
    bar = tqdm(total=count, desc="kept", disable=not show_bar)
    report = reporter(progress)
    while len(kept_idx) < count and sampled < cap:
        need = count - len(kept_idx)
        if sampled == 0:
            size = count
        else:
            rate = max(len(kept_idx), 1) / sampled
            size = math.ceil(1.1 * need / rate)
        size = int(min(max(size, need) if batch_size is None else batch_size, cap - sampled))
        seeds = all_seeds[sampled:sampled + size]
        expected = min(cap, max(sampled + size, count if not kept_idx else math.ceil(count * sampled / len(kept_idx))))
        base = sampled

        def within(f, desc=None, base=base, size=size, expected=expected, kept=len(kept_idx)):
            if report is not None:
                report(min(1.0, (base + f * size) / expected),
                       desc=SEP.join(t for t in (f"kept {kept} of {count}, drew {base} of at most {cap}", desc) if t))

        t0 = time.perf_counter()
        imgs = sampler(seeds, within) if takes_progress else sampler(seeds)
        sampling_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        s = benign_scores(reward, imgs, model=model)
        scoring_s += time.perf_counter() - t0
        sampled += size
        batches.append(size)
        for i in range(size):  # in seed order, up to the image that fills the gallery
            drawn += 1
            if s[i] > threshold:
                kept_idx.append(base + i)
                kept_scores.append(float(s[i]))
                images_kept.append(imgs[i])
                bar.update(1)
                if len(kept_idx) == count:
                    break
            else:
                dropped += 1
        within(1.0)
        bar.set_postfix(drawn=drawn, dropped=dropped)
    bar.close()
    if report is not None:
        report(1.0)
    shape = tuple(images_kept[0].shape) if images_kept else tuple(model.image_shape[1:])
    images = np.stack(images_kept) if images_kept else np.zeros((0, *shape), dtype=np.uint8)
    return RejectionResult(images=images, seeds=[all_seeds[i] for i in kept_idx], scores=np.array(kept_scores),
                           threshold=threshold, requested=count, drawn=drawn, dropped=dropped, sampled=sampled,
                           cap=cap, capped=len(kept_idx) < count, sampling_s=sampling_s, scoring_s=scoring_s,
                           batches=batches)
