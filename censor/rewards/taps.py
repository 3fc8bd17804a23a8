"""Feature taps on a diffusion UNet's encoder, shared by the rewards, active labelling and the drift figure."""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn


def unet_encode(unet, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Run a diffusers UNet2DModel's time embedding, down blocks and mid block (no decoder)."""
    t = t.to(x.device).reshape(-1) * torch.ones(x.shape[0], dtype=torch.long, device=x.device)
    emb = unet.time_embedding(unet.time_proj(t).to(x.dtype))
    h = unet.conv_in(x)
    for block in unet.down_blocks:
        h, _ = block(hidden_states=h, temb=emb)
    return unet.mid_block(h, emb) if unet.mid_block is not None else h


def _tap_blocks(unet) -> list[nn.Module]:
    """Where a ddpm-encoder reward reads the UNet: an early down block (before attention mixes
    positions, so small local marks such as a corner stamp survive) and the mid block (shapes)."""
    return [unet.down_blocks[min(1, len(unet.down_blocks) - 1)], unet.mid_block]


def tap_channels(unet) -> list[int]:
    chans = unet.config.block_out_channels
    return [chans[min(1, len(chans) - 1)], chans[-1]]


def unet_taps(unet, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
    """The tapped feature maps of the UNet encoder for (x_t, t); the decoder is never run."""
    t = t.to(x.device).reshape(-1) * torch.ones(x.shape[0], dtype=torch.long, device=x.device)
    emb = unet.time_embedding(unet.time_proj(t).to(x.dtype))
    h, taps, early = unet.conv_in(x), [], _tap_blocks(unet)[0]
    for block in unet.down_blocks:
        h, _ = block(hidden_states=h, temb=emb)
        if block is early:
            taps.append(h)
    return taps + [unet.mid_block(h, emb)]


def eps_and_taps(unet, x: torch.Tensor, t) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """ε_θ(x_t, t) and the same tapped features, caught by hooks on one ordinary forward pass."""
    caught, me = [], threading.get_ident()

    def grab(module, args, out):
        # the UNet is shared by every session's worker thread: catch only this call's own pass, not
        # another session's forward that runs through the same blocks meanwhile
        if threading.get_ident() == me:
            caught.append(out[0] if isinstance(out, tuple) else out)

    hooks = [b.register_forward_hook(grab) for b in _tap_blocks(unet)]
    try:
        eps = unet(x, t).sample
    finally:
        for hook in hooks:
            hook.remove()
    return eps, caught


def mean_max_pool(maps: list[torch.Tensor]) -> torch.Tensor:
    """[N, 2·ΣC]: each feature map's mean and max over positions, concatenated (max keeps a small
    local mark as visible as a whole-image shape)."""
    return torch.cat([torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], 1) for h in maps], 1)


class TapHead(nn.Module):
    """Per tap: GroupNorm, SiLU, 1x1 conv, then mean and max over positions; an MLP -> one logit.

    Max pooling lets a mark in one corner count as much as a whole-image shape.
    """

    def __init__(self, channels: list[int], hidden: int = 64):
        super().__init__()
        self.norms = nn.ModuleList(nn.GroupNorm(min(16, c), c) for c in channels)
        self.projs = nn.ModuleList(nn.Conv2d(c, hidden, 1) for c in channels)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(2 * hidden * len(channels), hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        maps = [proj(F.silu(norm(h))) for norm, proj, h in zip(self.norms, self.projs, taps)]
        return self.mlp(mean_max_pool(maps)).squeeze(1)


class PooledHead(nn.Module):
    """GroupNorm, SiLU, 1x1 conv, global average pool, MLP -> one logit."""

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        self.norm = nn.GroupNorm(min(16, channels), channels)
        self.proj = nn.Conv2d(channels, hidden, 1)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.proj(F.silu(self.norm(h))).mean(dim=(2, 3))
        return self.mlp(h).squeeze(1)

