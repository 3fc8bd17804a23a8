"""The diffusion model: a diffusers ``UNet2DModel`` plus its ``DDPMScheduler``, stored with save_pretrained.

A model folder holds ``unet/`` (config.json + diffusion_pytorch_model.safetensors) and
``scheduler/`` (scheduler_config.json), the same layout as a diffusers DDPM pipeline on the hub,
so a hub checkpoint of that shape loads through the same function.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from .errors import CensorError

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED_MODEL_DIR = ASSETS_DIR / "ddpm"

# The embedded model: 1.1M parameters, attention only at 7x7 (../shared/MEASURED.md), small enough
# for ~1.4 s per batch of 128 on two CPU cores and a few MB of shipped weights.
EMBEDDED_UNET_CONFIG = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    attention_head_dim=32,
    norm_num_groups=16,
)
EMBEDDED_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
    prediction_type="epsilon", clip_sample=True,
)


def build_unet(**overrides) -> UNet2DModel:
    return UNet2DModel(**{**EMBEDDED_UNET_CONFIG, **overrides})


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**EMBEDDED_SCHEDULER_CONFIG)


@dataclass
class DiffusionModel:
    """A UNet and the noise schedule it was trained with; everything a sampler needs."""

    unet: UNet2DModel
    scheduler: DDPMScheduler

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.unet.config
        size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
        return (c.in_channels, size, size)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")


def load_diffusion(folder: str | Path = EMBEDDED_MODEL_DIR, device: str = "cpu") -> DiffusionModel:
    """Load ``folder/unet`` and ``folder/scheduler``; any problem becomes one clear ``CensorError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CensorError(f"model folder {folder} does not exist")
    unet_dir, sched_dir = folder / "unet", folder / "scheduler"
    for needed in (unet_dir / "config.json", unet_dir / "diffusion_pytorch_model.safetensors",
                   sched_dir / "scheduler_config.json"):
        if not needed.is_file():
            raise CensorError(f"model folder {folder} is incomplete: {needed.relative_to(folder)} is missing")
    try:
        json.loads((unet_dir / "config.json").read_text())
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True)
        scheduler = DDPMScheduler.from_pretrained(sched_dir)
    except Exception as e:  # diffusers raises many types for a damaged file; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CensorError(f"model folder {folder} is corrupt: {first}") from None
    unet.to(device).eval().requires_grad_(False)
    return DiffusionModel(unet, scheduler)
