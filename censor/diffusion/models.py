"""The diffusion model: a denoising network, its noise schedule and, for latent models, a decoder.

The embedded model is a pixel-space diffusers ``UNet2DModel`` plus its ``DDPMScheduler``, stored with
save_pretrained: a folder holds ``unet/`` (config.json + diffusion_pytorch_model.safetensors) and
``scheduler/`` (scheduler_config.json), the layout of a diffusers DDPM pipeline. Other diffusers
pipelines (latent diffusion with a VAE or VQ decoder, class-conditional DiT, text-to-image) are
loaded by ``sources.py`` into the same ``DiffusionModel``: the sampler, guidance and fine-tuning
only ever see ``denoiser`` (ε_θ(x_t, t) with conditioning already applied), ``sample_shape`` and
``decode``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from censor.core.errors import CensorError, hide_paths, shown
from censor.diffusion.denoisers import make_denoiser

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
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


def _square(size) -> int:
    return size if isinstance(size, int) else int(size[0])


@dataclass
class DiffusionModel:
    """A denoising network and the noise schedule it was trained with; everything a sampler needs.

    ``unet`` is the trainable network (a UNet2DModel, UNet2DConditionModel or DiT transformer; the
    name stays for the embedded case). ``vae`` (AutoencoderKL or VQModel) makes it a latent model:
    sampling runs on latents of ``sample_shape`` and ``decode`` turns them into images of
    ``image_shape``. ``conditioning`` (a prompt's embeddings or a class id, with classifier-free
    guidance) is applied inside ``denoiser``, so nothing downstream needs to know about it.
    """

    unet: torch.nn.Module
    scheduler: DDPMScheduler
    vae: torch.nn.Module | None = None
    conditioning: object | None = None  # a denoisers.Conditioning
    text: object | None = None  # (tokenizer, text_encoder) of a text-to-image model
    source: str = "embedded"
    runtime: object | None = None  # a runtime.RuntimeOptions

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """The shape x_t has during sampling (latents for a latent model)."""
        c = self.unet.config
        return (c.in_channels, _square(c.sample_size), _square(c.sample_size))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape of the images the model makes (what rewards, the oracle and galleries see)."""
        if self.vae is None:
            return self.sample_shape
        c = self.vae.config
        factor = 2 ** (len(c.block_out_channels) - 1)
        return (c.out_channels, self.sample_shape[1] * factor, self.sample_shape[2] * factor)

    @property
    def latent_scale(self) -> float:
        """The VAE's scaling factor; VQ models are sampled unscaled, as diffusers' LDMPipeline does."""
        if self.vae is None or type(self.vae).__name__ == "VQModel":
            return 1.0
        return float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)

    @property
    def denoiser(self):
        """ε_θ(x_t, t) with conditioning, CFG and the prediction type handled (see denoisers.py)."""
        return self.denoiser_for(self.unet)

    def denoiser_for(self, net: torch.nn.Module):
        """The same ε wrapper around another copy of the network (a fine-tuned or reference one)."""
        return make_denoiser(net, self.scheduler, self.conditioning, self.runtime)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from samples x_0 (identity for pixel models; differentiable)."""
        if self.vae is None:
            return x
        dtype = next(self.vae.parameters()).dtype
        out = self.vae.decode((x / self.latent_scale).to(dtype))
        return (out.sample if hasattr(out, "sample") else out[0]).float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents for images in [-1, 1] (the mean of the posterior for a VAE): what a latent reward reads."""
        if self.vae is None:
            return images
        dtype = next(self.vae.parameters()).dtype
        out = self.vae.encode(images.to(dtype))
        if hasattr(out, "latent_dist"):
            z = out.latent_dist.mean
        else:
            z = out.latents if hasattr(out, "latents") else out[0]
        return z.float() * self.latent_scale

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")


def load_diffusion(folder: str | Path = EMBEDDED_MODEL_DIR, device: str = "cpu") -> DiffusionModel:
    """Load ``folder/unet`` and ``folder/scheduler``; any problem becomes one clear ``CensorError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CensorError(f"model folder {shown(folder)} does not exist")
    unet_dir, sched_dir = folder / "unet", folder / "scheduler"
    for needed in (unet_dir / "config.json", unet_dir / "diffusion_pytorch_model.safetensors",
                   sched_dir / "scheduler_config.json"):
        if not needed.is_file():
            raise CensorError(f"model folder {shown(folder)} is incomplete: {needed.relative_to(folder)} is missing")
    try:
        json.loads((unet_dir / "config.json").read_text())
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True)
        scheduler = DDPMScheduler.from_pretrained(sched_dir)
    except Exception as e:  # diffusers raises many types for a damaged file; the user needs one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CensorError(f"model folder {shown(folder)} is corrupt: {hide_paths(first)}") from None
    unet.to(device).eval().requires_grad_(False)
    return DiffusionModel(unet, scheduler)
