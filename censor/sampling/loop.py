"""Unguided sampling from a ``DiffusionModel`` with respaced diffusers schedulers.

One loop serves unguided and guided sampling. Every image owns a seed: its initial noise x_T comes from ``torch.Generator().manual_seed(seed)``,
so image i of a gallery is the same whatever the batch size, and a censored gallery can be shown
next to its baseline made from the same seeds. DDIM with eta = 0 is then fully deterministic per
image; stochastic steps (DDPM, DDIM eta > 0) draw their noise from a generator seeded by the
batch's first seed, so a repeated call with the same arguments is identical too."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from censor.core.errors import CensorError
from censor.diffusion.models import DiffusionModel
from censor.diffusion.steps import initial_noise, make_scheduler, renoise
from censor.sampling.guidance import Guidance
from censor.sampling.pieces import StepContext


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
    progress: Callable[[float], None] | None = None,
    show_bar: bool = False,
    guidance: Guidance | None = None,
) -> torch.Tensor:
    """Images [N, C, H, W] in [-1, 1] for the given per-image seeds.

    With ``guidance``, its pieces rewrite ε at every step inside its window (see guidance.py);
    without it (or with weight 0) this is the plain sampler, image for image. A latent model
    samples latents and decodes each batch at the end; ``batch_size`` (default: the model's
    runtime setting) bounds the memory one batch takes.
    """
    check_count(len(seeds))
    if eta < 0:
        raise CensorError(f"eta must be >= 0, got {eta}")
    device = next(model.unet.parameters()).device
    if batch_size is None:
        batch_size = getattr(model.runtime, "batch_size", 250)
    if batch_size < 1:
        raise CensorError(f"batch size must be >= 1, got {batch_size}")
    denoiser = model.denoiser
    out = []
    batches = [list(seeds[i:i + batch_size]) for i in range(0, len(seeds), batch_size)]
    total = len(batches) * steps
    bar = tqdm(total=total, desc="sampling", disable=not show_bar)
    done = 0
    alphas = model.scheduler.alphas_cumprod.to(device)
    one = torch.tensor(1.0, device=device)
    smc = guidance.particles if guidance is not None else None
    P = smc.particles if smc is not None else 1
    for chunk in batches:
        sched = make_scheduler(model, method, steps)
        starts = particle_seeds(chunk, P)
        x = initial_noise(starts, model.sample_shape).to(device)
        origin = torch.arange(len(x))  # SMC: which starting particle each row descends from
        gen = torch.Generator().manual_seed(int(chunk[0]) + 7919)
        # DDIM clamps x̂0 to [-1, 1] (clip_sample); recompute ε from the clamped x̂0 too, or a
        # guided ε whose x̂0 overshoots pushes x_t the opposite way (measured: darker, not brighter)
        kwargs = {"eta": eta, "use_clipped_model_output": True} if method == "ddim" else {}
        stride = model.scheduler.config.num_train_timesteps // steps  # diffusers' own prev-t rule
        log_w = torch.zeros(len(x), dtype=torch.float64)  # SMC: log importance weight of each particle
        last_phi = torch.zeros(len(x), dtype=torch.float64)
        for t in (int(t) for t in sched.timesteps):
            active = guidance is not None and guidance.active(t)
            ab = alphas[t]
            ab_prev = alphas[t - stride] if t - stride >= 0 else one
            for r in range(1 + (guidance.recurrence if active else 0)):
                if r > 0:  # recurrence: back to x_t through the forward kernel, then redo the step
                    x = renoise(x_prev, ab, ab_prev, gen)
                if smc is not None:  # twist by r(x_t, t), resample the groups whose weights degenerated
                    phi, eps = smc.potential_and_eps(StepContext(denoiser, x, t, ab, None))
                    phi = phi.double().cpu()
                    log_w += phi - last_phi
                    last_phi = phi
                    keep = smc.reweight(log_w, gen, guidance.stats)
                    if keep is not None:
                        x, eps, last_phi = x[keep.to(device)], eps[keep.to(device)], last_phi[keep]
                        origin = origin[keep]
                elif active:
                    eps = None if guidance.computes_eps else denoiser(x, t).sample
                    eps = guidance(StepContext(denoiser, x, t, ab, eps, decode=model.decode,
                                               latent=model.is_latent))
                else:
                    eps = denoiser(x, t).sample
                x_prev = sched.step(eps, t, x, generator=gen, **kwargs).prev_sample
            x = x_prev
            done += 1
            bar.update(1)
            if progress is not None:
                progress(done / total)
        if smc is not None:  # the final weight r_0(x_0) / r_1(x_1), then one particle per image
            log_w += smc.final_potential(x).double().cpu() - last_phi
            pick = smc.choose(log_w, gen)
            x = x[pick.to(device)]
            guidance.stats.setdefault("particle_seeds", []).extend(starts[int(i)] for i in origin[pick])
        out.append(model.decode(x).clamp(-1, 1).cpu())
    bar.close()
    return torch.cat(out)


PARTICLE_SEED_STRIDE = 1_000_000_007  # particle j > 0 of an image seeded s starts from s + j·stride


def particle_seeds(seeds: Sequence[int], particles: int) -> list[int]:
    """The starting seeds of ``particles`` particles per image, grouped by image; particle 0 is the
    image's own seed, so one particle is the plain sampler."""
    return [int(s) + j * PARTICLE_SEED_STRIDE for s in seeds for j in range(particles)]


def seeds_for(n: int, seed: int) -> list[int]:
    """The per-image seeds of a gallery started at ``seed``."""
    check_count(n)
    return [seed * 100_003 + i for i in range(n)]

