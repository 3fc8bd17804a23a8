"""Diffusion step formulas and schedulers: the one home of the x̂0/ε conversions, respacing, the
DDIM step (x̂0, σ_t, μ) and the forward kernel, shared by the sampler and the RLHF rollouts."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from censor.core.errors import CensorError

SCHEDULERS = ("ddim", "ddpm")


def make_scheduler(config, method: str, steps: int, set_alpha_to_one: bool | None = None):
    """A fresh scheduler from a model's scheduler ``config``, respaced to ``steps``; "trailing"
    spacing so the first step starts at t = T-1. ``set_alpha_to_one`` (None: the config's) picks
    ᾱ after the last step: 1, or ᾱ_0 so that a stochastic last step keeps σ > 0 (the rollouts)."""
    if method not in SCHEDULERS:
        raise CensorError(f"unknown scheduler {method!r}; use one of {', '.join(SCHEDULERS)}")
    T = config["num_train_timesteps"]
    if not 1 <= steps <= T:
        raise CensorError(f"steps must be between 1 and {T}, got {steps}")
    cls = DDIMScheduler if method == "ddim" else DDPMScheduler
    extra = {} if set_alpha_to_one is None else {"set_alpha_to_one": set_alpha_to_one}
    # the denoiser always hands back ε (denoisers.py converts v and x0 predictions)
    sched = cls.from_config(config, timestep_spacing="trailing", prediction_type="epsilon", **extra)
    sched.set_timesteps(steps)
    return sched


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """x̂0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t)."""
    return (x - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """ε = (x_t - sqrt(ᾱ_t) x̂0) / sqrt(1-ᾱ_t), the inverse of ``x0_from_eps``."""
    return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def step_stride(scheduler) -> int:
    """Training timesteps between two respaced steps: diffusers' previous-timestep rule t' = t - T // S."""
    if scheduler.num_inference_steps is None:
        raise CensorError("call set_timesteps on the scheduler before stepping it")
    return scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def step_alphas(alphas_cumprod: torch.Tensor, t, stride: int, final: torch.Tensor):
    """(ᾱ_t, ᾱ_t') for the step t -> t' = t - stride (one t or one per sample); ``final`` where t' < 0."""
    t = torch.as_tensor(t, device=alphas_cumprod.device).long()
    prev = t - stride
    ab_prev = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], final.to(alphas_cumprod))
    return alphas_cumprod[t], ab_prev


def renoise(x_prev: torch.Tensor, ab_t: torch.Tensor, ab_prev: torch.Tensor, gen: torch.Generator | None,
            z: torch.Tensor | None = None) -> torch.Tensor:
    """Forward kernel q(x_t | x_{t'}) of the respaced schedule: the recurrence step (noise ``z``, else from ``gen``)."""
    a = ab_t / ab_prev
    z = torch.randn(x_prev.shape, generator=gen).to(x_prev.device) if z is None else z
    return a.sqrt() * x_prev + (1 - a).sqrt() * z


class DDIMStep(NamedTuple):
    """One DDIM step's Gaussian N(x_{t-1} | mean, std² I) and the x̂0 it came from."""

    x0: torch.Tensor
    std: torch.Tensor
    mean: torch.Tensor


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] or [] -> broadcastable against [N, C, H, W]."""
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.device, like.dtype)


def ddim_step(scheduler: DDIMScheduler, eps: torch.Tensor, t, x_t: torch.Tensor, eta: float,
              use_clipped_model_output: bool = False) -> DDIMStep:
    """DDIM (Song et al., eq. 12), in fp32 and with ``t`` one timestep or one per sample:
    x̂0 from the prediction (clamped to the clip range when the scheduler clips),
    σ_t = eta·sqrt((1-ᾱ_t')/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_t')), μ = sqrt(ᾱ_t')·x̂0 + sqrt(1-ᾱ_t'-σ_t²)·ε.
    The previous timestep follows diffusers' rule, clamped at 0 like DDPO (ᾱ_0 past the end)."""
    cfg = scheduler.config
    eps, x_t = eps.float(), x_t.float()
    t = torch.as_tensor(t, device="cpu").long().reshape(-1)
    ac = scheduler.alphas_cumprod.float()
    ab_t, ab_prev = step_alphas(ac, t, step_stride(scheduler), ac[0])
    ab_t, ab_prev = _per_sample(ab_t, x_t), _per_sample(ab_prev, x_t)
    beta_t = 1 - ab_t

    if cfg.prediction_type == "epsilon":
        x0 = x0_from_eps(x_t, eps, ab_t)
    elif cfg.prediction_type == "v_prediction":
        x0 = ab_t.sqrt() * x_t - beta_t.sqrt() * eps
        eps = ab_t.sqrt() * eps + beta_t.sqrt() * x_t
    elif cfg.prediction_type == "sample":
        x0 = eps
        eps = eps_from_x0(x_t, x0, ab_t)
    else:
        raise CensorError(f"unsupported prediction_type {cfg.prediction_type!r}")
    if cfg.clip_sample:
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        if use_clipped_model_output:
            eps = eps_from_x0(x_t, x0, ab_t)

    variance = (1 - ab_prev) / beta_t * (1 - ab_t / ab_prev)
    std = eta * variance.sqrt()
    mean = ab_prev.sqrt() * x0 + (1 - ab_prev - std**2).clamp(min=0).sqrt() * eps
    return DDIMStep(x0, std, mean)


def ddim_eps_between(scheduler: DDIMScheduler, t, x_t: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
    """The ε with which a deterministic DDIM step (eta 0) of ``scheduler`` goes from ``x_t`` to ``x_prev``.

    x_t' = sqrt(ᾱ_t')·x̂0 + c·(x_t − sqrt(ᾱ_t)·x̂0), c = sqrt((1−ᾱ_t')/(1−ᾱ_t)), is linear in x̂0, so any
    recorded step, guided or recurrent, has one: the target a student regresses to reproduce a sampler's
    trajectories unguided (``rlhf.distil``). Exact while that x̂0 lies inside the clip range.
    """
    ac = scheduler.alphas_cumprod.float().to(x_t.device)
    ab, ab_prev = step_alphas(ac, t, step_stride(scheduler), torch.as_tensor(scheduler.final_alpha_cumprod).float())
    ab, ab_prev = _per_sample(ab, x_t), _per_sample(ab_prev, x_t)
    x_t, x_prev = x_t.float(), x_prev.float()
    c = ((1 - ab_prev) / (1 - ab)).sqrt()
    x0 = (x_prev - c * x_t) / (ab_prev.sqrt() - c * ab.sqrt())
    return eps_from_x0(x_t, x0, ab)
