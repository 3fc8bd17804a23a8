"""Tiny random diffusers pipelines of every supported kind, saved with save_pretrained.

They stand in for hub models (google/ddpm-church-256, CompVis/ldm-celebahq-256, facebook/DiT-XL-2-256,
Stable Diffusion) that these machines cannot download: same classes, same folder formats, a few
thousand parameters each.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    LDMPipeline,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
    VQModel,
)


def _sched(**kw):
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, **kw)


def _vae():
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, norm_num_groups=8, sample_size=32)


def pixel_rgb64(folder: Path) -> Path:
    """An unconditional RGB 64×64 DDPM pipeline (the layout of google/ddpm-church-256)."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    DDPMPipeline(unet=unet, scheduler=_sched(clip_sample=True)).save_pretrained(folder, safe_serialization=True)
    return folder


def latent_vq(folder: Path) -> Path:
    """A latent diffusion pipeline with a VQ decoder (the layout of CompVis/ldm-celebahq-256)."""
    torch.manual_seed(1)
    vq = VQModel(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 latent_channels=3, norm_num_groups=8, num_vq_embeddings=32, sample_size=32)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015,
                          beta_end=0.0195, clip_sample=False)
    LDMPipeline(vqvae=vq, unet=unet, scheduler=sched).save_pretrained(folder, safe_serialization=True)
    return folder


def dit(folder: Path, classes: int = 10) -> Path:
    """A class-conditional DiT with a KL VAE and learned variance (the layout of facebook/DiT-XL-2-256)."""
    torch.manual_seed(2)
    tr = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                               num_layers=1, sample_size=16, patch_size=2, num_embeds_ada_norm=classes,
                               norm_num_groups=8)
    id2label = {i: f"class{i}" for i in range(classes)}
    id2label[0] = "tench, Tinca tinca"
    DiTPipeline(transformer=tr, vae=_vae(), scheduler=_sched(), id2label=id2label).save_pretrained(
        folder, safe_serialization=True)
    # the hub's DiT folders carry ImageNet's names in model_index.json; save_pretrained drops them
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {str(k): v for k, v in id2label.items()}
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [256 + i for i in range(256 - len(keep))]
    return [chr(c) for c in keep + extra]


def _tokenizer():
    """A character-level CLIP tokenizer (no merges), built from scratch: no hub download."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def text_to_image(folder: Path) -> Path:
    """A Stable-Diffusion-type pipeline: tiny CLIP text encoder, KL VAE, cross-attention UNet, PNDM."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(3)
    tok = _tokenizer()
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=16,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    sched = PNDMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=enc, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
