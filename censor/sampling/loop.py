"""The one sampler loop, unguided and guided, over respaced diffusers schedulers.

Every image owns a seed: its initial noise x_T comes from ``torch.Generator().manual_seed(seed)``,
so image i of a gallery is the same whatever the batch size, and a censored gallery can be shown
next to its baseline made from the same seeds. DDIM with eta = 0 is then fully deterministic per
image; stochastic steps (DDPM, DDIM eta > 0) draw their noise from a generator seeded by the
batch's first seed, so a repeated call with the same arguments is identical too. Each batch starts
its own guidance state (the pieces' carries, the particles' weights), so batches never leak into
one another."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from censor.core.errors import CensorError
from censor.core.progress import SEP, Progress, reporter
from censor.diffusion.models import DiffusionModel
from censor.diffusion.steps import initial_noise, make_scheduler, renoise, step_alphas, step_stride
from censor.sampling.guidance import Guidance
from censor.sampling.particles import ParticleState
from censor.sampling.pieces import StepContext


GUIDED_STEP_COST = 3.0  # a guided image-step against an unguided one (the reward's gradient): sizes bars


def check_count(n: int) -> None:
    if n <= 0:
        raise CensorError(f"the number of images must be positive, got {n}")


@torch.no_grad()
def sample(
    model: DiffusionModel,
    seeds: Sequence[int],
    steps: int = 50,
    method: str = "ddim",
    eta: float = 0.0,
    batch_size: int | None = None,
    progress: Progress | None = None,
    show_bar: bool = False,
    guidance: Guidance | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Images [N, C, H, W] in [-1, 1] for the given per-image seeds.

    With ``guidance``, its pieces rewrite ε at every step inside its window (see guidance.py);
    without it (or with weight 0) this is the plain sampler, image for image. A latent model
    samples latents and decodes each batch at the end; ``batch_size`` (default: the model's
    runtime setting) bounds the memory one batch takes. ``on_step(t, x_t, x_t')`` hears every step in
    the model's sample space (latents for a latent model): the state its last pass stepped from (with
    recurrence a renoised x_t) and where it went, a deterministic step a student can learn (``rlhf.distil``).
    """
    check_count(len(seeds))
    if on_step is not None and guidance is not None and guidance.particles is not None:
        raise CensorError("recording steps needs one trajectory per image: not with particles")
    if eta < 0:
        raise CensorError(f"eta must be >= 0, got {eta}")
    if batch_size is None:
        batch_size = getattr(model.runtime, "batch_size", 250)
    if batch_size < 1:
        raise CensorError(f"batch size must be >= 1, got {batch_size}")
    batches = [list(seeds[i:i + batch_size]) for i in range(0, len(seeds), batch_size)]
    total = len(batches) * steps
    bar = tqdm(total=total, desc="sampling", disable=not show_bar)
    done = 0
    report = reporter(progress)

    def tick(within: float = 1.0) -> None:
        """After each pass of a step (``within`` < 1: a recurrence pass of it), so a Cancel lands mid-step."""
        nonlocal done
        if within >= 1.0:
            done += 1
            bar.update(1)
        if report is not None:
            b, s = divmod(done - (within >= 1.0), steps)
            report((done + (within if within < 1.0 else 0.0)) / total,
                   desc=f"step {s + 1} of {steps}" + (f"{SEP}batch {b + 1} of {len(batches)}" if len(batches) > 1 else ""))

    smc = guidance.particles if guidance is not None else None
    out = []
    for chunk in batches:
        starts = particle_seeds(chunk, smc.particles if smc is not None else 1)
        gen = torch.Generator().manual_seed(int(chunk[0]) + 7919)
        x, origin = _denoise(model, starts, method, steps, eta, guidance, gen, tick, on_step)
        if origin is not None:
            guidance.stats.setdefault("particle_seeds", []).extend(starts[int(i)] for i in origin)
        out.append(model.decode(x).clamp(-1, 1).cpu())
    bar.close()
    return torch.cat(out)


def _denoise(model: DiffusionModel, starts: list[int], method: str, steps: int, eta: float,
             guidance: Guidance | None, gen: torch.Generator, tick: Callable[[float], None], on_step=None):
    """One batch from its starting seeds to x_0; with SMC also the starting particle of each image.

    The batch's state starts fresh here: the pieces' carries and the particles' weights."""
    device = next(model.unet.parameters()).device
    denoiser = model.denoiser
    sched = make_scheduler(model.scheduler.config, method, steps)
    x = initial_noise(starts, model.sample_shape).to(device)
    # DDIM clamps x̂0 to [-1, 1] (clip_sample); recompute ε from the clamped x̂0 too, or a
    # guided ε whose x̂0 overshoots pushes x_t the opposite way (measured: darker, not brighter)
    kwargs = {"eta": eta, "use_clipped_model_output": True} if method == "ddim" else {}
    alphas, stride = model.scheduler.alphas_cumprod.to(device), step_stride(sched)
    one = torch.tensor(1.0, device=device)
    smc = guidance.particles if guidance is not None else None
    particles = ParticleState.fresh(len(x)) if smc is not None else None
    carries = guidance.start() if guidance is not None else ()
    for t in (int(t) for t in sched.timesteps):
        active = guidance is not None and guidance.active(t)
        ab, ab_prev = step_alphas(alphas, t, stride, one)
        x_prev = x
        passes = 1 + (guidance.recurrence if active else 0)
        for r in range(passes):
            if r > 0:  # recurrence: back to x_t through the forward kernel, then redo the step
                tick(r / passes)
                x = renoise(x_prev, ab, ab_prev, gen)
            step = StepContext(denoiser, x, t, ab, decode=model.decode, latent=model.is_latent)
            if smc is not None:  # twist by r(x_t, t), resample the groups whose weights degenerated
                phi, eps = smc.potential_and_eps(step)
                keep, particles, resampled = smc.reweight(smc.twist(particles, phi), gen)
                if keep is not None:
                    guidance.stats["resamples"] = guidance.stats.get("resamples", 0) + resampled
                    x, eps = x[keep.to(device)], eps[keep.to(device)]
            elif active:
                if not guidance.computes_eps:
                    step = step.predicted()
                eps, carries = guidance.apply(step, carries)
            else:
                eps = denoiser(x, t).sample
            x_prev = sched.step(eps, t, x, generator=gen, **kwargs).prev_sample
        if on_step is not None:
            on_step(t, x, x_prev)
        x = x_prev
        tick()
    if smc is None:
        return x, None
    pick = smc.choose(particles, x, gen)  # the final weight r_0(x_0) / r_1(x_1), one particle per image
    return x[pick.to(device)], particles.origin[pick]


PARTICLE_SEED_STRIDE = 1_000_000_007  # particle j > 0 of an image seeded s starts from s + j·stride


def particle_seeds(seeds: Sequence[int], particles: int) -> list[int]:
    """The starting seeds of ``particles`` particles per image, grouped by image; particle 0 is the
    image's own seed, so one particle is the plain sampler."""
    return [int(s) + j * PARTICLE_SEED_STRIDE for s in seeds for j in range(particles)]


def seeds_for(n: int, seed: int) -> list[int]:
    """The per-image seeds of a gallery started at ``seed``."""
    check_count(n)
    return [seed * 100_003 + i for i in range(n)]

