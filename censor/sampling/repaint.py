"""Repaint: resample only the part of an image the reward calls malign, keep the rest (issue 21).

Why: a small local mark (a corner stamp, a watermark) is independent of what the image shows.
Guidance cannot steer it away (the reward sees it only at small t, when the model has committed) and
rejection throws away whole images, unevenly across classes, wherever the reward has false alarms
(watermark: 0.28% malign but tv 0.12, recall 0.85×). For a reward r that reads only a region M, a
Gibbs step on the target p_data·r is: keep x outside M, draw x_M ~ p_data(x_M | x_rest), accept with
probability r(x), and draw again on rejection. When the mark is independent of the rest, E[r | x_rest]
is constant and one such step takes p_data to p_data·r exactly, so every class keeps its share.

``repaint`` draws x_M given x_rest the RePaint way (Lugmayr et al. 2022): re-noise x_0 to a level
``start`` where the mark is gone, then denoise with the model while, after every step, the pixels
outside the mask are replaced by the original forward-noised to the new level; after the last step
the outside is the original exactly. ``repaint_flagged`` applies it to the images the reward doubts
(the rejection threshold), inside a mask read off the reward (``malign_masks``), and accepts an
attempt when the reward passes it, up to ``attempts`` tries (the rejection part of the Gibbs step);
an attempt the reward still doubts widens the mask by where each ensemble member looks on it. Measured
on the watermark: every stamp two attempts left behind had been only partly inside the first mask, most
of them images on which the members' mean map peaked on the shoe, not the stamp; widening by the mean
map's region mended none of them, widening by each member's region most (seed 1: 5 → 1 left, seed 2: 10 → 5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from censor.core.data import to_model_range, to_uint8
from censor.core.errors import CensorError
from censor.core.progress import Progress, part, reporter
from censor.core.settings import STRICT_MODES
from censor.diffusion.steps import make_scheduler, renoise, step_alphas, step_stride
from censor.rewards.architectures import scores_positions
from censor.rewards.ensemble import clean_input
from censor.sampling.loop import sample, seeds_for
from censor.sampling.rejection import reject_sample
from censor.sampling.thresholds import benign_scores

REPAINT_START = 0.6  # re-noise to t = 0.6 T: the local reward is at chance there (few-shot AUC), so the mark is gone
REPAINT_HARMONIZE = 0  # RePaint resampling passes per step; watermark, 3 x 334: 0 -> 1.60% malign, tv 0.040, 1.64x
#                        unguided; 1 -> 1.50%, tv 0.054, 2.27x (mean-map widening; docs/benchmarks.md, "Local marks, fourth part")
REPAINT_ATTEMPTS = 2  # draws of x_M per doubted image; then the one the reward scores best, the original included
REPAINT_STEPS = 10  # repaint's own DDIM respacing of T, whatever the gallery's steps: 6 steps below 0.6 T. Watermark,
#                     3 x 334, the same rewards and thresholds: 25 (the gallery's) -> 0.40% malign, tv 0.041, 1.52x
#                     unguided; 15 -> 0.40%, 0.039, 1.35x; 10 -> 0.50%, 0.038, 1.22x; in bench-reject 10 -> 0.50%,
#                     tv 0.050, recall 0.96x, 1.31x (docs/benchmarks.md, "Local marks, fifth part")
REPAINT_DEFAULTS = dict(start=REPAINT_START, attempts=REPAINT_ATTEMPTS, harmonize=REPAINT_HARMONIZE,
                        steps=REPAINT_STEPS)  # the knobs, by name: the CLI's flags, a bundle's strict.repaint
MAP_MASS = 0.5  # a position map's region: where half of its smooth max's weight lies ...
MAP_MAX_SHARE = 0.02  # ... at most 2% of the positions (16 of 784: a stamp takes ~12) ...
MAP_GROW = 5  # ... grown by 5 px: 91% of the stamp's pixels, all of it in 63% of 41 stamped images (6 px: 88%)
SALIENCY_SHARE = 0.1  # without a position map: the top 10% of |∇ log r| ...
SALIENCY_GROW = 2  # ... grown by 2 px
SEED_TAG = 0x5245  # repaint noise streams, apart from the sampler's x_T and step seeds


def resolve_strict_mode(choice: str, reward) -> str:
    """"reject" or "repaint" for a strict gallery: "auto" repaints with a reward that says where (a position
    map: the local-mark kind) and rejects otherwise (a garment is not a region to redraw)."""
    if choice not in STRICT_MODES:
        raise CensorError(f"unknown strict mode; use one of {', '.join(STRICT_MODES)}")  # the value is not echoed
    if choice != "auto":
        return choice
    return "repaint" if all(hasattr(m, "malign_map") for m in reward.members) else "reject"


def strict_by_default(kind: str) -> bool:
    """Whether a freshly trained reward of ``kind`` renders strict (auto: repaint) unless a person unticks it: a
    reward that scores positions is for a local mark, which guidance does not steer away (watermark, 100 labels,
    local-patch: guided 7.9%, on x̂0 4.6%, repainted 0.70% at tv 0.047, 1.46x unguided with the carried threshold;
    docs/benchmarks.md, "Local marks, eighth part"), so its
    default render is the repaint."""
    return scores_positions(kind)


def repaint_seed(seed: int, attempt: int) -> int:
    """A 32-bit seed for attempt ``attempt`` of the image seeded ``seed`` (torch keeps 32 bits: derived,
    not offset, so it never replays an x_T stream)."""
    return int(np.random.SeedSequence([int(seed) & (2**63 - 1), int(attempt), SEED_TAG]).generate_state(1)[0])


def grow(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Dilate a [N, 1, H, W] 0/1 mask by ``px`` in every direction."""
    return mask if px <= 0 else F.max_pool2d(mask.float(), 2 * px + 1, stride=1, padding=px)


def malign_masks(reward, x: torch.Tensor, grow_px: int | None = None, each: bool = False) -> torch.Tensor:
    """[N, 1, H, W] float masks of where the reward finds the malign part of clean inputs ``x``.

    A reward with a per-position map (``local-patch``) says it directly: where its smooth max looks,
    the fewest positions holding ``MAP_MASS`` of the softmax weight over positions of the members' mean map,
    grown by ``MAP_GROW``. Any other reward: the top ``SALIENCY_SHARE`` of |∇_x log r(x)| summed over
    channels, grown by ``SALIENCY_GROW``. ``grow_px`` overrides either. ``each``: the union of every
    member's own region instead of the mean map's (wider; where the mean looks elsewhere, a member may not).
    """
    t = torch.zeros(len(x), dtype=torch.long)
    members = reward.members
    mapped = all(hasattr(m, "malign_map") for m in members)
    if mapped:
        with torch.no_grad():
            maps = torch.stack([m.malign_map(x, t if reward.time_dependent else None) for m in members])
            if each:  # every member's own region: where any of them looks
                region = torch.stack([_softmax_support(s, m.temperature) for s, m in zip(maps, members)]).any(0)
            else:
                region = _softmax_support(maps.mean(0), float(np.mean([m.temperature for m in members])))
    else:
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            reward.log_prob(xg, t if reward.time_dependent else None).sum().backward()
            salience = xg.grad.abs().sum(1)
        k = max(1, int(round(SALIENCY_SHARE * salience[0].numel())))
        cut = salience.flatten(1).topk(k, dim=1).values[:, -1]
        region = salience >= cut[:, None, None]
    grow_px = (MAP_GROW if mapped else SALIENCY_GROW) if grow_px is None else grow_px
    return grow(region[:, None].float(), grow_px)


def _softmax_support(s: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N, H, W] bool: the fewest positions of a malign map holding ``MAP_MASS`` of softmax(s / τ), at most
    ``MAP_MAX_SHARE`` of them."""
    w = torch.softmax(s.flatten(1) / temperature, 1)
    ranked, order = w.sort(1, descending=True)
    keep = (ranked.cumsum(1) - ranked) < MAP_MASS  # every position until the mass is reached, that one included
    keep[:, max(1, int(round(MAP_MAX_SHARE * keep.shape[1]))):] = False  # a diffuse map (a false alarm): its peak only
    return torch.zeros_like(keep).scatter_(1, order, keep).reshape(s.shape)


@torch.no_grad()
def repaint(model, x0: torch.Tensor, mask: torch.Tensor, seeds: Sequence[int], steps: int, start: float = REPAINT_START,
            harmonize: int = REPAINT_HARMONIZE, attempt: int = 0) -> torch.Tensor:
    """Samples x_0 [N, C, H, W] (model space) that keep ``x0`` where ``mask`` is 0 and are redrawn by the
    model from level ``start`` × T where it is 1. DDPM-like steps (DDIM η = 1) with ``harmonize`` extra
    re-noise-and-redo passes per step (RePaint's resampling), so the new part fits what it joins.
    Each image's noise comes from its own stream (``repaint_seed``): the same seed, attempt and
    inputs give the same image whatever the batch."""
    if not 0 < start <= 1:
        raise CensorError(f"the repaint level is a fraction of the schedule in (0, 1], got {start}")
    device = next(model.unet.parameters()).device
    sched = make_scheduler(model.scheduler.config, "ddim", steps)
    T = model.scheduler.config["num_train_timesteps"]
    times = [int(t) for t in sched.timesteps if int(t) <= start * (T - 1)]
    if not times:
        raise CensorError(f"no step of a {steps}-step schedule lies below {start} × T; raise steps or the level")
    gens = [torch.Generator().manual_seed(repaint_seed(s, attempt)) for s in seeds]

    def noise():
        return torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(device)

    alphas, stride, one = model.scheduler.alphas_cumprod.to(device), step_stride(sched), torch.tensor(1.0, device=device)
    x0, mask = x0.to(device), mask.to(device)
    ab0 = alphas[times[0]]
    x = ab0.sqrt() * x0 + (1 - ab0).sqrt() * noise()
    x_prev = x
    for t in times:
        ab, ab_prev = step_alphas(alphas, t, stride, one)
        for r in range(1 + harmonize):
            if r > 0:  # RePaint's resampling: back to level t through the forward kernel, then redo the step
                x = renoise(x_prev, ab, ab_prev, None, z=noise())
            eps = model.denoiser(x, t).sample
            x_prev = sched.step(eps, t, x, eta=1.0, use_clipped_model_output=True, variance_noise=noise()).prev_sample
            known = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * noise()  # the original at the new level
            x_prev = mask * x_prev + (1 - mask) * known
        x = x_prev
    return x


def _model_input(model, images: np.ndarray) -> torch.Tensor:
    """x_0 in model space: the images, or their latents for a latent model (whose kept outside is then the
    VAE round trip of the original, not its very pixels)."""
    x = to_model_range(images)
    return model.encode(x) if model.is_latent else x


def _masks(model, reward, images: np.ndarray, grid, grow_px: int | None, each: bool = False) -> torch.Tensor:
    """The reward's masks of uint8 ``images`` on the sampling ``grid`` (H, W): a mask read off images is
    max-pooled onto a latent grid, so a latent cell is redrawn when any of its pixels is."""
    mask = malign_masks(reward, clean_input(reward, model, to_model_range(images)), grow_px, each)
    return mask if tuple(mask.shape[-2:]) == tuple(grid) else F.adaptive_max_pool2d(mask, tuple(grid))


@dataclass
class RepaintResult:
    images: np.ndarray  # uint8, one per input image, in order
    scores: np.ndarray  # their P(benign) after repainting
    doubted: int  # images the reward doubted before (repainted)
    passed: int  # of those, the ones a repaint made the reward pass
    tries: list[int] = field(default_factory=list)  # attempts each doubted image took (attempts+1: never passed)
    kept_original: int = 0  # doubted images no draw improved on: returned as they were
    mask_share: float = 0.0  # mean share of a doubted image's pixels that were redrawn
    seconds: float = 0.0
    which: list[int] = field(default_factory=list)  # the doubted images' positions in the input

    def summary(self) -> str:
        return (f"repainted {self.doubted} doubted images ({100 * self.mask_share:.0f}% of their pixels), "
                f"{self.passed} now pass, {self.kept_original} kept as drawn (no redraw scored better)")

    def as_dict(self) -> dict:
        return dict(doubted=self.doubted, passed=self.passed, tries=self.tries, kept_original=self.kept_original,
                    mask_share=round(self.mask_share, 4), seconds=round(self.seconds, 2))


def repaint_flagged(model, reward, images: np.ndarray, seeds: Sequence[int], threshold: float, *,
                    steps: int = REPAINT_STEPS, start: float = REPAINT_START, attempts: int = REPAINT_ATTEMPTS,
                    grow_px: int | None = None, harmonize: int = REPAINT_HARMONIZE, batch_size: int = 64,
                    progress: Progress | None = None) -> RepaintResult:
    """Every image whose P(benign) is at or below ``threshold`` is repainted inside its malign mask until
    the reward passes it (at most ``attempts`` draws; then the best-scored of the original and its draws
    stays: a false alarm is never traded for a redrawn corner that grew a new mark). Images the reward
    passes are returned untouched. The mask is read on the image as it was sampled, and widened by the
    mask of each attempt the reward still doubts. ``steps``: the respacing of T an attempt runs on (its
    own, not the gallery's: a small region pinned to its surroundings needs fewer steps than a whole image)."""
    if attempts < 1:
        raise CensorError(f"attempts must be at least 1, got {attempts}")
    t0 = time.perf_counter()
    images = np.array(images, copy=True)
    scores = benign_scores(reward, images, model=model)
    todo = np.where(scores <= threshold)[0]
    first = scores[todo].copy()
    tries = np.full(len(todo), attempts + 1)
    report = reporter(progress)
    share = 0.0
    for b in range(0, len(todo), batch_size):
        idx = todo[b:b + batch_size]
        x0 = _model_input(model, images[idx])
        mask = _masks(model, reward, images[idx], x0.shape[-2:], grow_px)
        pending = np.arange(len(idx))
        for a in range(attempts):
            if report is not None:
                report((b + a / attempts * len(idx)) / max(len(todo), 1), desc=f"repaint: attempt {a + 1} of {attempts}")
            new = repaint(model, x0[pending], mask[pending], [seeds[i] for i in idx[pending]], steps, start, harmonize, a)
            imgs = to_uint8(model.decode(new).clamp(-1, 1).cpu())
            s = benign_scores(reward, imgs, model=model)
            better = s > scores[idx[pending]]  # an attempt is kept only where the reward likes it more than the best so far
            images[idx[pending[better]]], scores[idx[pending[better]]] = imgs[better], s[better]
            ok = s > threshold
            tries[b + pending[ok]] = a + 1
            pending = pending[~ok]
            if not len(pending) or a + 1 == attempts:
                break
            # still doubted: the region grows by where each member now looks (a remnant the mask left out;
            # the members' mean may look elsewhere, one of them seldom does)
            mask[pending] = torch.maximum(mask[pending], _masks(model, reward, imgs[~ok], x0.shape[-2:], grow_px,
                                                                each=True))
        share += float(mask.mean((1, 2, 3)).sum())
    if report is not None:
        report(1.0)
    return RepaintResult(images=images, scores=scores, doubted=len(todo), passed=int((tries <= attempts).sum()),
                         tries=[int(v) for v in tries], kept_original=int((scores[todo] == first).sum()),
                         mask_share=share / max(len(todo), 1),
                         seconds=time.perf_counter() - t0, which=[int(i) for i in todo])


def strict_sample(model, reward, count: int, seed: int, threshold: float, mode: str, *, guidance=None, steps: int = 50,
                  progress: Progress | None = None):
    """A strict gallery of ``count`` images from ``seed``: (images, their seeds, the Rejection- or RepaintResult).
    ``mode`` "reject" draws on from the following seeds until ``count`` pass (or the cap: fewer); "repaint" keeps
    every seed and redraws where the reward points on what it doubts. What the studio and ``censor sample
    --strict`` both run (DDIM, eta 0: a kept image is reproduced by its seed)."""
    if mode == "reject":
        r = reject_sample(model, reward, count, seed, threshold, guidance=guidance, steps=steps, progress=progress)
        if r.kept == 0:
            raise CensorError(f"strict mode kept no image: {r.summary()}; lower the threshold")
        return r.images, r.seeds, r
    if mode != "repaint":
        raise CensorError(f"a strict gallery rejects or repaints; resolve {mode!r} first (resolve_strict_mode)")
    seeds = seeds_for(count, seed)
    images = to_uint8(sample(model, seeds, steps=steps, guidance=guidance, progress=part(progress, 0, 0.75)))
    r = repaint_flagged(model, reward, images, seeds, threshold, progress=part(progress, 0.75, 0.25, "repaint"),
                        **REPAINT_DEFAULTS)
    return r.images, seeds, r
