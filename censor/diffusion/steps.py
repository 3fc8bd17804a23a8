"""Diffusion step formulas and schedulers: one home for x̂0/ε conversions, respacing and the forward kernel."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from censor.core.errors import CensorError
from censor.diffusion.models import DiffusionModel

SCHEDULERS = ("ddim", "ddpm")


def make_scheduler(model: DiffusionModel, method: str, steps: int):
    """A fresh scheduler respaced to ``steps``; "trailing" spacing so the first step starts at t = T-1."""
    if method not in SCHEDULERS:
        raise CensorError(f"unknown scheduler {method!r}; use one of {', '.join(SCHEDULERS)}")
    T = model.scheduler.config.num_train_timesteps
    if not 1 <= steps <= T:
        raise CensorError(f"steps must be between 1 and {T}, got {steps}")
    cls = DDIMScheduler if method == "ddim" else DDPMScheduler
    # the denoiser always hands back ε (denoisers.py converts v and x0 predictions)
    sched = cls.from_config(model.scheduler.config, timestep_spacing="trailing", prediction_type="epsilon")
    sched.set_timesteps(steps)
    return sched


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])



def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return (x - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def renoise(x_prev: torch.Tensor, ab_t: torch.Tensor, ab_prev: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Forward kernel q(x_t | x_{t'}) of the respaced schedule: the recurrence step."""
    a = ab_t / ab_prev
    z = torch.randn(x_prev.shape, generator=gen).to(x_prev.device)
    return a.sqrt() * x_prev + (1 - a).sqrt() * z

