"""Censor-then-distil: fine-tune the UNet on what the censored sampler did, so it samples p_data·r unguided.

Guided sampling pays for the reward's gradient at every step. Two targets (``DistilConfig.target``):

- ``images``: the ordinary denoising loss (``censor.diffusion.training.denoising_loss``, the embedded
  model's own) on the images the censored sampler drew. The student learns that sampler's
  *distribution*, as an independent draw: its class mix sits at the sampling floor;
- ``steps``: the student regresses, at every recorded step of the censored sampler's trajectories,
  the ε that takes its x_t to its x_t' (``censor.diffusion.steps.ddim_eps_between``: guidance,
  backward guidance and recurrence folded into one deterministic step). Starting from the teacher,
  it learns only the guidance's correction, and from a gallery's x_T it retraces the censored
  sampler's images, which keeps every benign image where it was (guidance distillation, as
  classifier-free guidance is distilled). It learns the DDIM timesteps of the recorded respacing;
  other step counts at sampling time are unmeasured.

The reward may leave out the samples it scores most malign (``DistilConfig.drop``); the oracle never
touches the data. Full fine-tuning by default: LoRA rank 4 barely moves the embedded model.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import NamedTuple

import torch
import torch.nn.functional as F

from censor.core.errors import CensorError
from censor.core.progress import Progress, reporter
from censor.diffusion.models import DiffusionModel
from censor.diffusion.steps import ddim_eps_between, ddim_step, eps_from_x0, make_scheduler
from censor.diffusion.training import denoising_loss
from censor.sampling.loop import sample
from rlhf.adapters import make_trainable
from rlhf.configs import DistilConfig

DISTIL_SEED = 70_000  # the censored samples' seeds: apart from the gallery (10 000), floor (40 000) and pool (1)


@torch.no_grad()
def most_benign(images: torch.Tensor, reward, drop: float, batch_size: int = 250) -> torch.Tensor:
    """Indices of ``images`` without the ``drop`` fraction the reward scores lowest (log P(benign)); all when drop = 0."""
    if drop <= 0:
        return torch.arange(len(images))
    scores = torch.cat([reward.log_prob(c).float().cpu() for c in images.split(batch_size)])
    keep = max(1, round(len(images) * (1 - drop)))
    return torch.argsort(scores, descending=True)[:keep].sort().values


def keep_most_benign(images: torch.Tensor, reward, drop: float, batch_size: int = 250) -> torch.Tensor:
    """``images`` without the ``drop`` fraction the reward scores lowest (log P(benign)); all when drop = 0."""
    return images if drop <= 0 else images[most_benign(images, reward, drop, batch_size)]


class Steps(NamedTuple):
    """A sampler's recorded trajectories: ``x[i, j]`` is image i's x_t at ``timesteps[j]``, ``eps[i, j]`` the
    ε of its deterministic step from there (both fp16: 25 steps of 1000 images fit in 80 MB)."""

    x: torch.Tensor  # [N, S, C, H, W]
    eps: torch.Tensor  # [N, S, C, H, W]
    timesteps: torch.Tensor  # [S]
    images: torch.Tensor  # [N, C, H, W] in [-1, 1], what the trajectories ended in

    def subset(self, idx) -> "Steps":
        return Steps(self.x[idx], self.eps[idx], self.timesteps, self.images[idx])


@torch.no_grad()
def record_steps(model: DiffusionModel, seeds, steps: int, guidance=None, progress: Progress | None = None) -> Steps:
    """Sample ``seeds`` with the deterministic DDIM sampler (and ``guidance``) and keep every step as a target."""
    sched = make_scheduler(model.scheduler.config, "ddim", steps)
    rec: list[tuple[torch.Tensor, torch.Tensor]] = []
    images = sample(model, seeds, steps=steps, guidance=guidance, progress=progress,
                    on_step=lambda t, x, x_prev: rec.append((x.half().cpu(),
                                                             ddim_eps_between(sched, t, x, x_prev).half().cpu())))
    S = len(sched.timesteps)
    per_batch = [rec[b:b + S] for b in range(0, len(rec), S)]  # batches in order, each its S steps
    x = torch.cat([torch.stack([r[0] for r in b], 1) for b in per_batch])
    eps = torch.cat([torch.stack([r[1] for r in b], 1) for b in per_batch])
    return Steps(x, eps, sched.timesteps.clone().long(), images)


def stepped_eps(scheduler, eps: torch.Tensor, t, x_t: torch.Tensor) -> torch.Tensor:
    """The ε a DDIM step actually takes from ``eps``: recomputed from the clamped x̂0, as the sampler does
    (``use_clipped_model_output``). Where x̂0 leaves the clip range only this ε is pinned by a recorded step."""
    x0 = ddim_step(scheduler, eps, t, x_t, 0.0).x0
    ab = scheduler.alphas_cumprod.to(x_t.device)[torch.as_tensor(t).reshape(-1).to(x_t.device)].float()
    return eps_from_x0(x_t.float(), x0, ab.reshape(-1, *([1] * (x_t.ndim - 1))))


def train_distil(model: DiffusionModel, images: torch.Tensor | Steps, config: DistilConfig | None = None,
                 progress: Progress | None = None) -> dict:
    """Fine-tune ``model.unet`` in place on ``images`` ([N, C, H, W] in [-1, 1]) with the denoising loss, or on
    recorded ``Steps`` by regressing their ε (``config.target`` says which the data must be).

    A full fine-tune changes every weight; with ``full=False`` LoRA adapters are added and stay on the
    UNet (save either with ``rlhf.adapters.save_adapter``). ``anchor`` > 0 adds anchor·‖θ − θ_0‖²; ``ema`` > 0
    leaves the weights' moving average (from θ_0) instead of the last ones.
    Returns the losses, seconds and settings.
    """
    cfg = config or DistilConfig()
    cfg.check()
    if model.conditioning is not None and model.conditioning.uses_cfg:
        raise CensorError("distilling a model sampled with classifier-free guidance is not supported")
    if isinstance(images, Steps) != (cfg.target == "steps"):
        raise CensorError(f"distil target {cfg.target!r} needs {'recorded Steps' if cfg.target == 'steps' else 'images'}")
    data = images.x if isinstance(images, Steps) else images
    if data.ndim != (5 if cfg.target == "steps" else 4) or len(data) < 1:
        raise CensorError(f"distil needs images [N, C, H, W] or steps [N, S, C, H, W], got shape {tuple(data.shape)}")
    report = reporter(progress)
    unet = model.unet.float()
    dev = next(unet.parameters()).device
    if cfg.target == "images":
        with torch.no_grad():
            data = model.encode(images.to(dev)) if model.is_latent else images.to(dev)
    params = make_trainable(unet, cfg.full, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target)
    start = [p.detach().clone() for p in params] if cfg.anchor > 0 else None
    # a constant-decay average started at the *original* weights (the measured defaults): diffusers' EMAModel
    # warms its decay up as (1+s)/(10+s) from the trained weights, a different average over a 600-step run
    average = [p.detach().clone() for p in params] if cfg.ema > 0 else None
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    net = model.denoiser_for(unet)  # ε with the model's conditioning and prediction type
    sched = make_scheduler(model.scheduler.config, "ddim", len(images.timesteps)) if cfg.target == "steps" else None
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, t0 = [], time.perf_counter()
    unet.train()
    for step in range(cfg.steps):
        i = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        if cfg.target == "steps":  # a random recorded step of each picked trajectory
            j = torch.randint(0, data.shape[1], (cfg.batch_size,), generator=gen)
            x_t, t = images.x[i, j].to(dev).float(), images.timesteps[j]
            loss = F.mse_loss(stepped_eps(sched, net(x_t, t.to(dev)).sample, t, x_t), images.eps[i, j].to(dev).float())
        else:
            x0 = data[i.to(dev)]
            if cfg.flip:
                flip = (torch.rand(len(x0), generator=gen) < 0.5).to(dev)
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            loss = denoising_loss(net, model.scheduler, x0, gen)
        losses.append(float(loss.detach()))
        if start is not None:
            loss = loss + cfg.anchor * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if average is not None:
            with torch.no_grad():
                for a, p in zip(average, params):
                    a.lerp_(p, 1 - cfg.ema)
        if report is not None:  # a Cancel is heard here
            report((step + 1) / cfg.steps, desc=f"step {step + 1} of {cfg.steps}")
    if average is not None:
        with torch.no_grad():
            for a, p in zip(average, params):
                p.copy_(a)
    model.unet = unet.eval().requires_grad_(False)
    return dict(losses=losses, seconds=time.perf_counter() - t0, images=len(data), config=asdict(cfg),
                trainable_params=sum(p.numel() for p in params))
