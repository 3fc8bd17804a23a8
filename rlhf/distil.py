"""Censor-then-distil: fine-tune the UNet on the censored sampler's own images, so it samples p_data·r unguided.

Guided sampling pays for the reward's gradient at every step; a model fine-tuned with the ordinary
denoising loss (``censor.diffusion.training.denoising_loss``, the embedded model's own) on images the
censored sampler drew learns that sampler's distribution and then samples at the unguided cost.
The reward may also leave out the samples it scores most malign (``DistilConfig.drop``); the oracle
never touches the data. Full fine-tuning by default: LoRA rank 4 barely moves the embedded model.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from censor.core.errors import CensorError
from censor.core.progress import Progress, reporter
from censor.diffusion.models import DiffusionModel
from censor.diffusion.training import denoising_loss
from rlhf.adapters import make_trainable
from rlhf.configs import DistilConfig

DISTIL_SEED = 70_000  # the censored samples' seeds: apart from the gallery (10 000), floor (40 000) and pool (1)


@torch.no_grad()
def keep_most_benign(images: torch.Tensor, reward, drop: float, batch_size: int = 250) -> torch.Tensor:
    """``images`` without the ``drop`` fraction the reward scores lowest (log P(benign)); all when drop = 0."""
    if drop <= 0:
        return images
    scores = torch.cat([reward.log_prob(c).float().cpu() for c in images.split(batch_size)])
    keep = max(1, round(len(images) * (1 - drop)))
    return images[torch.argsort(scores, descending=True)[:keep].sort().values]


def train_distil(model: DiffusionModel, images: torch.Tensor, config: DistilConfig | None = None,
                 progress: Progress | None = None) -> dict:
    """Fine-tune ``model.unet`` in place on ``images`` ([N, C, H, W] in [-1, 1]) with the denoising loss.

    A full fine-tune changes every weight; with ``full=False`` LoRA adapters are added and stay on the
    UNet (save either with ``rlhf.adapters.save_adapter``). ``anchor`` > 0 adds anchor·‖θ − θ_0‖²; ``ema`` > 0
    leaves the weights' moving average (from θ_0) instead of the last ones.
    Returns the losses, seconds and settings.
    """
    cfg = config or DistilConfig()
    cfg.check()
    if model.conditioning is not None and model.conditioning.uses_cfg:
        raise CensorError("distilling a model sampled with classifier-free guidance is not supported")
    if images.ndim != 4 or len(images) < 1:
        raise CensorError(f"distil needs images [N, C, H, W], got shape {tuple(images.shape)}")
    report = reporter(progress)
    unet = model.unet.float()
    dev = next(unet.parameters()).device
    with torch.no_grad():
        data = model.encode(images.to(dev)) if model.is_latent else images.to(dev)
    params = make_trainable(unet, cfg.full, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target)
    start = [p.detach().clone() for p in params] if cfg.anchor > 0 else None
    # a constant-decay average started at the *original* weights (the measured defaults): diffusers' EMAModel
    # warms its decay up as (1+s)/(10+s) from the trained weights, a different average over a 600-step run
    average = [p.detach().clone() for p in params] if cfg.ema > 0 else None
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    net = model.denoiser_for(unet)  # ε with the model's conditioning and prediction type
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, t0 = [], time.perf_counter()
    unet.train()
    for step in range(cfg.steps):
        x0 = data[torch.randint(0, len(data), (cfg.batch_size,), generator=gen).to(dev)]
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
