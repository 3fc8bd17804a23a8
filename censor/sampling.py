"""Unguided sampling from a ``DiffusionModel`` with respaced diffusers schedulers.

Every image owns a seed: its initial noise x_T comes from ``torch.Generator().manual_seed(seed)``,
so image i of a gallery is the same whatever the batch size, and a censored gallery can be shown
next to its baseline made from the same seeds. DDIM with eta = 0 is then fully deterministic per
image; stochastic steps (DDPM, DDIM eta > 0) draw their noise from a generator seeded by the
batch's first seed, so a repeated call with the same arguments is identical too.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from tqdm.auto import tqdm

from .errors import CensorError
from .models import DiffusionModel

SCHEDULERS = ("ddim", "ddpm")


def make_scheduler(model: DiffusionModel, method: str, steps: int):
    """A fresh scheduler respaced to ``steps``; "trailing" spacing so the first step starts at t = T-1."""
    if method not in SCHEDULERS:
        raise CensorError(f"unknown scheduler {method!r}; use one of {', '.join(SCHEDULERS)}")
    T = model.scheduler.config.num_train_timesteps
    if not 1 <= steps <= T:
        raise CensorError(f"steps must be between 1 and {T}, got {steps}")
    cls = DDIMScheduler if method == "ddim" else DDPMScheduler
    sched = cls.from_config(model.scheduler.config, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    return sched


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


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
    batch_size: int = 250,
    progress: Callable[[float], None] | None = None,
    show_bar: bool = False,
) -> torch.Tensor:
    """Images [N, C, H, W] in [-1, 1] for the given per-image seeds."""
    check_count(len(seeds))
    if eta < 0:
        raise CensorError(f"eta must be >= 0, got {eta}")
    device = next(model.unet.parameters()).device
    out = []
    batches = [list(seeds[i:i + batch_size]) for i in range(0, len(seeds), batch_size)]
    total = len(batches) * steps
    bar = tqdm(total=total, desc="sampling", disable=not show_bar)
    done = 0
    for chunk in batches:
        sched = make_scheduler(model, method, steps)
        x = initial_noise(chunk, model.image_shape).to(device)
        gen = torch.Generator().manual_seed(int(chunk[0]) + 7919)
        for t in sched.timesteps:
            eps = model.unet(x, t).sample
            kwargs = {"eta": eta} if method == "ddim" else {}
            x = sched.step(eps, t, x, generator=gen, **kwargs).prev_sample
            done += 1
            bar.update(1)
            if progress is not None:
                progress(done / total)
        out.append(x.clamp(-1, 1).cpu())
    bar.close()
    return torch.cat(out)


def seeds_for(n: int, seed: int) -> list[int]:
    """The per-image seeds of a gallery started at ``seed``."""
    check_count(n)
    return [seed * 100_003 + i for i in range(n)]
