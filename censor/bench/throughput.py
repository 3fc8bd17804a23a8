"""Throughput of guided sampling: images/s unguided vs each guidance kind, and peak GPU memory.

``python -m censor bench-throughput`` runs on any model source, or on a randomly initialised model
with the architecture of a well-known hub model (``--arch``): speed and memory do not depend on the
weights, so a GPU host that cannot download ``google/ddpm-church-256`` or DiT-XL/2 still measures
what censoring them would cost. Modes run interleaved (A B C A B C ...) and the median is reported,
so a noisy shared machine biases every mode alike. The rewards are freshly initialised ones of the
kinds each guidance uses (a time-dependent half-UNet, a ResNet18): their weights do not change the
cost either.
"""

from __future__ import annotations

import statistics

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiTTransformer2DModel, UNet2DConditionModel, UNet2DModel

from censor.bench.timing import interleaved
from censor.core.errors import CensorError
from censor.diffusion.denoisers import Conditioning
from censor.diffusion.models import DiffusionModel
from censor.rewards.architectures import build_member, reward_shape
from censor.rewards.ensemble import RewardEnsemble
from censor.sampling.guidance import build_guidance
from censor.sampling.loop import sample, seeds_for

MODES = ("unguided", "time", "universal", "universal+backward", "universal+recurrence")


def _sched(**kw):
    return DDPMScheduler(num_train_timesteps=1000, **kw)


def random_arch(name: str) -> DiffusionModel:
    """A model with the published architecture of a hub checkpoint and random weights."""
    if name == "ddpm-256":  # google/ddpm-church-256 / ddpm-bedroom-256 (113.7M parameters)
        unet = UNet2DModel(sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
                           block_out_channels=(128, 128, 256, 256, 512, 512),
                           down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)
        return DiffusionModel(unet, _sched(clip_sample=True), source="random:ddpm-256")
    sd_vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                  layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215)
    if name == "dit-xl-2-256":  # facebook/DiT-XL-2-256 (675M) with the SD VAE, class 0 = tench, CFG 4
        tr = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                   num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
        cond = Conditioning("class", torch.tensor([0]), torch.tensor([1000]), 4.0, label="0")
        return DiffusionModel(tr, _sched(beta_schedule="linear"), vae=AutoencoderKL(**sd_vae), conditioning=cond,
                              source="random:dit-xl-2-256")
    if name == "sd15-unet":  # Stable Diffusion 1.5's UNet and VAE at 512 px; random 77×768 prompt embeddings, CFG 7.5
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        gen = torch.Generator().manual_seed(0)
        cond = Conditioning("text", torch.randn(1, 77, 768, generator=gen), torch.randn(1, 77, 768, generator=gen),
                            7.5, label="random prompt embeddings")
        sched = _sched(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
        return DiffusionModel(unet, sched, vae=AutoencoderKL(**sd_vae), conditioning=cond, source="random:sd15-unet")
    raise CensorError(f"unknown architecture {name!r}; use ddpm-256, dit-xl-2-256 or sd15-unet")


ARCHS = ("ddpm-256", "dit-xl-2-256", "sd15-unet")


def _reward(kind: str, model: DiffusionModel) -> RewardEnsemble:
    torch.manual_seed(0)
    member = build_member(kind, model).to(next(model.unet.parameters()).device)
    return RewardEnsemble(kind, [member], reward_shape(kind, model)).eval()


def _guidance(mode: str, time_reward, clean_reward):
    """The guidance a mode times (ω 1 and the default learning rate: neither changes the cost)."""
    if mode == "unguided":
        return None
    if mode == "time":
        return build_guidance(time_reward, "time", 1.0)
    backward = 3 if mode == "universal+backward" else 0
    return build_guidance(clean_reward, "universal", 1.0, backward_steps=backward,
                          recurrence=1 if mode == "universal+recurrence" else 0)


def measure_throughput(model: DiffusionModel, n: int = 8, steps: int = 25, reps: int = 3,
                       modes=MODES, log=print) -> dict:
    """Images/s of each mode (median over interleaved reps), its ratio to unguided and peak GPU memory."""
    if n < 1 or steps < 1 or reps < 1:
        raise CensorError("n, steps and reps must be >= 1")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise CensorError(f"unknown modes {unknown}; use {', '.join(MODES)}")
    device = next(model.unet.parameters()).device
    cuda = device.type == "cuda"
    time_reward = _reward("half-unet", model) if "time" in modes else None
    clean_reward = _reward("resnet18", model) if any(m.startswith("universal") for m in modes) else None
    seeds = seeds_for(n, 0)
    peak = {}

    def run(m):
        sample(model, seeds, steps=steps, guidance=_guidance(m, time_reward, clean_reward), batch_size=n)
        if cuda:
            torch.cuda.synchronize()
            peak[m] = max(peak.get(m, 0), torch.cuda.max_memory_allocated())

    def before():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    sample(model, seeds[:1], steps=2)  # warm-up: allocator, kernels, lazy imports
    seconds = interleaved({m: (lambda m=m: run(m)) for m in modes}, reps, log, before=before)
    med = {m: statistics.median(v) for m, v in seconds.items()}
    base = med.get("unguided")
    rows = [dict(mode=m, median_seconds=round(med[m], 3), images_per_second=round(n / med[m], 4),
                 ratio_to_unguided=round(med[m] / base, 3) if base else None,
                 peak_gpu_memory_gib=round(peak[m] / 2**30, 2) if m in peak else None) for m in modes]
    return dict(source=model.source, device=str(device), gpu=torch.cuda.get_device_name(device) if cuda else None,
                dtype=getattr(model.runtime, "dtype", "fp32"), n=n, steps=steps, reps=reps,
                parameters=sum(p.numel() for p in model.unet.parameters()), image_shape=list(model.image_shape),
                rows=rows, seconds=seconds)


def markdown(result: dict) -> str:
    where = result["gpu"] or result["device"]
    lines = [f"{result['source']} on {where} ({result['dtype']}, {result['n']} images × {result['steps']} steps, "
             f"median of {result['reps']} interleaved reps)", "",
             "| mode | images/s | × unguided time | peak GPU memory (GiB) |", "|---|---|---|---|"]
    for r in result["rows"]:
        mem = "—" if r["peak_gpu_memory_gib"] is None else r["peak_gpu_memory_gib"]
        lines.append(f"| {r['mode']} | {r['images_per_second']:.3g} | {r['ratio_to_unguided']:.2f}× | {mem} |")
    return "\n".join(lines)
