"""Train (or keep training) the embedded Fashion-MNIST DDPM: ``python -m censor train-diffusion``.

Resumable: every ``--save-every`` steps the run folder gets a safetensors + JSON checkpoint
(weights, EMA, AdamW state, step) and an ``export/`` folder with the EMA weights in
``save_pretrained`` layout, which ``python -m censor evaluate-model`` judges and
``--ship`` copies into assets/. Rerunning the same command continues where it stopped, so a CPU
run can span sessions (``nohup nice -n 10 python -m censor train-diffusion --steps 20000 &``).

Choices that buy speed on two CPU cores: bf16 autocast (1.8x per step on AVX512-BF16 CPUs,
fp32 master weights), and min-SNR-5 loss weighting (Hang et al. 2023), which converges in fewer
steps than plain epsilon MSE.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm

from censor.core.data import load_watermarked, to_model_range
from censor.diffusion.checkpoint import flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer
from censor.diffusion.models import DiffusionModel, build_scheduler, build_unet, load_diffusion


SNR_GAMMA = 5.0  # min-SNR-γ loss weighting of the embedded model's training (and of any fine-tune of it)


def denoising_loss(unet, noise_sched, x0: torch.Tensor, generator: torch.Generator, snr_gamma: float = SNR_GAMMA,
                   autocast=contextlib.nullcontext) -> torch.Tensor:
    """The DDPM training loss on clean images ``x0`` in [-1, 1]: ε-MSE at a uniform random t, min-SNR-γ
    weighted (γ = 0: plain MSE). One home for the training loop and for distilling into a trained UNet."""
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(x0),), generator=generator).to(x0.device)
    xt = noise_sched.add_noise(x0, noise, t)
    with autocast():
        pred = unet(xt, t).sample
    mse = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma > 0:
        snr = compute_snr(noise_sched, t)
        mse = mse * torch.clamp(snr, max=snr_gamma) / snr
    return mse.mean()


def lr_schedule(opt, args):
    """Warm-up, then constant; with --decay-from, a cosine decay to zero over the last stretch.

    A pure function of the step, so a resumed run lands on the same rate as an uninterrupted one.
    """
    def factor(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        start = getattr(args, "decay_from", None)
        if start is None or step < start or args.steps <= start:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - start) / (args.steps - start))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train(args) -> Path:
    if args.threads:
        torch.set_num_threads(args.threads)
    acc = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
    run = Path(args.run)
    data = load_watermarked("train", args.data)
    images = to_model_range(data.images)  # [60000, 1, 28, 28] in [-1, 1]

    unet = build_unet(**({"block_out_channels": tuple(args.width)} if args.width else {}))
    noise_sched = build_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    lr_sched = lr_schedule(opt, args)
    ema = EMAModel(unet.parameters(), decay=args.ema)
    step, log_rows = 0, []

    ckpt = load_checkpoint(run / "checkpoint")
    if ckpt is not None:
        tensors, meta = ckpt
        if meta["unet_config"] != dict(unet.config):
            unet = build_unet(**{k: v for k, v in meta["unet_config"].items() if not k.startswith("_")})
            opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
            lr_sched = lr_schedule(opt, args)
            ema = EMAModel(unet.parameters(), decay=args.ema)
        unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
        unflatten_optimizer(opt, tensors, meta["optimizer"])
        ema.load_state_dict({**meta["ema"], "shadow_params": [tensors[f"ema.{i}"] for i in range(len(ema.shadow_params))]})
        step = meta["step"]
        with warnings.catch_warnings():  # replaying the schedule before any optimiser step is intended
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                lr_sched.step()
        log_rows = meta.get("log", [])
        acc.print(f"resumed {run} at step {step}")
    elif args.init_from:
        start = load_diffusion(args.init_from).unet
        unet = build_unet(**{k: v for k, v in start.config.items() if not k.startswith("_")})
        unet.load_state_dict(start.state_dict())
        opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
        lr_sched = lr_schedule(opt, args)  # fresh Adam: warm up again
        ema = EMAModel(unet.parameters(), decay=args.ema)
        ema.optimization_step = 10_000  # the shipped weights are already an average: no EMA warm-up
        record = Path(args.init_from) / "training.json"
        if record.is_file():
            prior = json.loads(record.read_text())
            step = int(prior.get("step", 0))
            log_rows = [dict(step=step, loss=None, elapsed_s=float(prior.get("elapsed_s", 0.0)))]
        acc.print(f"started from {args.init_from} at step {step} with a fresh optimizer")

    unet, opt = acc.prepare(unet, opt)
    ema.to(acc.device)
    gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)  # resumed runs draw fresh batches
    n = len(images)
    t_start, losses = time.time(), []
    elapsed_before = log_rows[-1]["elapsed_s"] if log_rows else 0.0

    def save():
        raw = acc.unwrap_model(unet)
        opt_t, opt_meta = flatten_optimizer(opt.optimizer if hasattr(opt, "optimizer") else opt)
        ema_sd = ema.state_dict()
        tensors = {f"unet.{k}": v for k, v in raw.state_dict().items()}
        tensors.update(opt_t)
        tensors.update({f"ema.{i}": p for i, p in enumerate(ema_sd.pop("shadow_params"))})
        meta = dict(step=step, unet_config={k: v for k, v in raw.config.items()}, optimizer=opt_meta,
                    ema=ema_sd, args=vars(args), log=log_rows, device=str(acc.device))
        save_checkpoint(run / "checkpoint", tensors, meta)
        export = build_unet(**{k: v for k, v in raw.config.items() if not k.startswith("_")})
        ema.copy_to(export.parameters())
        DiffusionModel(export, noise_sched).save(run / "export")
        (run / "export" / "training.json").write_text(json.dumps(
            dict(step=step, batch=args.batch, lr=args.lr, snr_gamma=args.snr_gamma, ema=args.ema,
                 images_seen=step * args.batch, elapsed_s=log_rows[-1]["elapsed_s"] if log_rows else 0,
                 device=str(acc.device), mixed_precision=args.mixed_precision,
                 params=sum(p.numel() for p in raw.parameters())), indent=1))

    bar = tqdm(total=args.steps, initial=step, desc="ddpm", disable=not acc.is_main_process,
               mininterval=1 if sys.stderr.isatty() else 60)  # a nohup log stays readable
    unet.train()
    while step < args.steps:
        idx = torch.randint(0, n, (args.batch,), generator=gen)
        x0 = images[idx]
        flip = torch.rand(args.batch, generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0).to(acc.device)
        loss = denoising_loss(unet, noise_sched, x0, gen, args.snr_gamma, acc.autocast)
        acc.backward(loss)
        acc.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % args.save_every == 0 or step == args.steps:
            log_rows.append(dict(step=step, loss=float(np.mean(losses[-args.save_every:])),
                                 elapsed_s=round(elapsed_before + time.time() - t_start, 1)))
            if not math.isfinite(log_rows[-1]["loss"]):
                raise RuntimeError(f"loss became {log_rows[-1]['loss']} at step {step}; not saving")
            save()
    bar.close()
    return run / "export"
