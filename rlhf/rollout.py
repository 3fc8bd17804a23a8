"""Stochastic DDIM rollouts that remember every step, so a policy-gradient loss can replay them.

Denoising is treated as an MDP (DDPO, D3PO): the state is (x_t, t), the action is x_{t-1}, and with
eta > 0 each DDIM step is a Gaussian policy N(x_{t-1} | mu_theta(x_t, t), sigma_t^2 I). Training needs
log pi(x_{t-1} | x_t) under the current, the sampling-time and the reference UNet, on the *same*
recorded (x_t, x_{t-1}) pairs, hence ``ddim_step_with_logprob`` with an optional ``prev_sample``.

The log-probability is averaged over pixels (not summed), as in the DDPO and D3PO reference code:
a sum over 784 dimensions makes ratios explode and β / clip ranges stop meaning anything.
Everything runs in fp32: log-ratios are differences of nearly equal numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor

from censor.core.errors import CensorError
from censor.diffusion.steps import ddim_step, initial_noise, make_scheduler

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def make_rollout_scheduler(scheduler_config, steps: int) -> DDIMScheduler:
    """The rollouts' DDIM scheduler: ``make_scheduler`` with ``set_alpha_to_one=False``.

    The last step then lands on t = 0 (ᾱ_0 ≈ 0.9999) rather than on ᾱ = 1, where σ would be 0 and
    the last step's log-probability undefined. DDPO gets the same effect by clamping the previous
    timestep to 0; with this setting diffusers' own ``step`` and ``ddim_step_with_logprob`` produce
    the same samples.
    """
    return make_scheduler(scheduler_config, "ddim", steps, set_alpha_to_one=False)


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    eps: torch.Tensor,
    t: int | torch.Tensor,
    x_t: torch.Tensor,
    eta: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    use_clipped_model_output: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step (x_t -> x_{t-1}, ``censor.diffusion.steps.ddim_step``) and
    log N(x_{t-1} | μ, σ_t² I) averaged over non-batch dims, as DDPO's ``ddim_step_with_logprob``.

    ``t`` may be one timestep or one per sample. With ``prev_sample`` given, nothing is drawn: the
    log-probability of that recorded action is returned (its gradient flows through μ only).
    """
    if eta <= 0:
        raise CensorError(f"a stochastic policy needs eta > 0, got {eta}")
    _, std, mean = ddim_step(scheduler, eps, t, x_t, eta, use_clipped_model_output)
    if prev_sample is None:
        noise = randn_tensor(x_t.shape, generator=generator, device=x_t.device, dtype=torch.float32)
        prev_sample = mean + std * noise
    prev_sample = prev_sample.float()
    return prev_sample, gaussian_log_prob(prev_sample, mean, std)


def gaussian_log_prob(x_prev: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[N] log N(x_prev | mean, std² I) averaged over non-batch dims; the gradient flows through ``mean``."""
    log_prob = -((x_prev.detach() - mean) ** 2) / (2 * std**2) - std.log() - LOG_SQRT_2PI
    return log_prob.mean(dim=tuple(range(1, x_prev.ndim)))


def step_sigmas(scheduler: DDIMScheduler, eta: float) -> torch.Tensor:
    """[S] the policy's σ_t of each step of ``scheduler`` (it depends on t only, not on the sample)."""
    z = torch.zeros(1, 1, 1, 1)
    return torch.stack([ddim_step(scheduler, z, t, z, eta).std.reshape(()) for t in scheduler.timesteps])


@dataclass
class Trajectory:
    """Recorded rollouts: xs[:, j] = x_t and xs[:, j+1] = x_{t-1} for t = timesteps[j].

    ``group_ids`` tells which images share an initial noise x_T (D3PO compares within a group).
    """

    xs: torch.Tensor  # [N, S+1, C, H, W]
    timesteps: torch.Tensor  # [S] long
    log_probs: torch.Tensor  # [N, S] under the sampling policy
    images: torch.Tensor  # [N, C, H, W] in [-1, 1]
    group_ids: torch.Tensor  # [N] long
    eta: float

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def __len__(self) -> int:
        return self.xs.shape[0]


def step_policy(unet, scheduler, x_t, t, eta: float, use_clipped_model_output: bool = False):
    """(μ, σ_t) of π(x_{t-1} | x_t) under ``unet``: one forward pass, with gradients if enabled."""
    if eta <= 0:
        raise CensorError(f"a stochastic policy needs eta > 0, got {eta}")
    t_batch = torch.as_tensor(t).reshape(-1).expand(x_t.shape[0]).to(x_t.device)
    eps = unet(x_t, t_batch).sample
    _, std, mean = ddim_step(scheduler, eps, t_batch.cpu(), x_t, eta, use_clipped_model_output)
    return mean, std


def step_log_prob(unet, scheduler, x_t, t, x_prev, eta: float, use_clipped_model_output: bool = False):
    """log pi(x_prev | x_t) under ``unet``: one forward pass, with gradients if enabled."""
    mean, std = step_policy(unet, scheduler, x_t, t, eta, use_clipped_model_output)
    return gaussian_log_prob(x_prev.float(), mean, std)


@torch.no_grad()
def rollout(
    unet,
    scheduler_config,
    seeds: Sequence[int] | None = None,
    noise: torch.Tensor | None = None,
    steps: int = 20,
    eta: float = 1.0,
    group_size: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
    use_clipped_model_output: bool = False,
    shape: tuple[int, int, int] | None = None,
    decode=None,
    progress=None,
    step_seeds: Sequence[int] | None = None,
) -> Trajectory:
    """Sample ``group_size`` images per initial noise (from ``seeds`` or given ``noise``) and record them.

    Images of a group share x_T and differ only through the step noise (eta > 0), which is what
    makes D3PO's "same start, different outcome" comparisons possible. Step noise comes from
    ``generator``, so a seeded generator makes the whole rollout repeatable. ``unet`` may be any
    ε interface (``DiffusionModel.denoiser``); a latent model passes its ``shape`` and ``decode``,
    and the trajectory then records latents while ``images`` holds the decoded pictures.
    ``progress(fraction)`` hears before every step. ``step_seeds`` (one per image, groups expanded)
    give every image its own step-noise generator instead of ``generator``: an image's trajectory then
    does not depend on which batch or process draws it, which is what lets two data-parallel
    processes reproduce one process's doubled batch.
    """
    if (seeds is None) == (noise is None):
        raise CensorError("give either seeds or noise for the rollout")
    if group_size < 1:
        raise CensorError(f"group_size must be at least 1, got {group_size}")
    device = next(unet.parameters()).device
    if noise is None:
        if len(seeds) == 0:
            raise CensorError("the number of images must be positive, got 0")
        if shape is None:
            c = unet.config
            size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
            shape = (c.in_channels, size, size)
        noise = initial_noise(seeds, shape)
    noise = noise.float().repeat_interleave(group_size, dim=0)
    group_ids = torch.arange(len(noise) // group_size).repeat_interleave(group_size)
    if step_seeds is not None and len(step_seeds) != len(noise):
        raise CensorError(f"{len(step_seeds)} step seeds for {len(noise)} images")
    sched = make_rollout_scheduler(scheduler_config, steps)
    xs_all, lps_all = [], []
    chunks = noise.split(batch_size)
    for c, chunk in enumerate(chunks):
        x = chunk.to(device)
        xs, lps = [x.cpu()], []
        gen = generator if step_seeds is None else [
            torch.Generator().manual_seed(int(s)) for s in step_seeds[c * batch_size:c * batch_size + len(chunk)]]
        for s, t in enumerate(sched.timesteps):
            if progress is not None:  # a fraction only: where a Cancel is heard
                progress((c * len(sched.timesteps) + s) / (len(chunks) * len(sched.timesteps)))
            eps = unet(x, t.to(device).expand(x.shape[0])).sample
            x, lp = ddim_step_with_logprob(sched, eps, t, x, eta, generator=gen,
                                           use_clipped_model_output=use_clipped_model_output)
            xs.append(x.cpu())
            lps.append(lp.cpu())
        xs_all.append(torch.stack(xs, dim=1))
        lps_all.append(torch.stack(lps, dim=1))
    xs = torch.cat(xs_all)
    final = xs[:, -1]
    if decode is not None:
        final = torch.cat([decode(c.to(device)).cpu() for c in final.split(batch_size)])
    return Trajectory(xs=xs, timesteps=sched.timesteps.clone().long(), log_probs=torch.cat(lps_all),
                      images=final.clamp(-1, 1), group_ids=group_ids, eta=float(eta))
