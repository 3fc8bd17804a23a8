"""The reward kinds (a registry) and their networks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from censor.core.errors import CensorError
from censor.rewards.backbone import load_backbone_into
from censor.rewards.local import LocalPatchReward, region_masks
from censor.rewards.taps import PooledHead, TapHead, tap_channels, unet_encode, unet_taps


class HalfUNetReward(nn.Module):
    """Time-dependent r(x_t, t) from scratch: the encoder half of a small diffusers UNet."""

    def __init__(self, in_channels: int = 1, sample_size: int = 28, widths=(32, 64, 64)):
        super().__init__()
        n = len(widths)
        unet = UNet2DModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
            block_out_channels=tuple(widths), layers_per_block=1, norm_num_groups=16,
            down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
            up_block_types=("UpBlock2D",) * n, attention_head_dim=32,
        )
        # keep only what the encoder uses; the decoder would be dead weight in every file
        self.time_proj, self.time_embedding = unet.time_proj, unet.time_embedding
        self.conv_in, self.down_blocks, self.mid_block = unet.conv_in, unet.down_blocks, unet.mid_block
        self.head = PooledHead(widths[-1])

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if t is None:
            t = torch.zeros(len(x), dtype=torch.long)
        return self.head(unet_encode(self, x, t))


class DiffusionEncoderReward(nn.Module):
    """Time-dependent head on the frozen encoder + mid block of the diffusion model's own UNet."""

    def __init__(self, unet):
        super().__init__()
        self.unet = [unet]  # a list keeps the frozen UNet out of this module's state_dict
        self.head = TapHead(tap_channels(unet))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if t is None:
            t = torch.zeros(len(x), dtype=torch.long)
        return self.head(unet_taps(self.unet[0], x, t))


RESNET_MAX_SIZE = 224  # larger images are resized to ImageNet's resolution before the ResNet


class ResNet18Reward(nn.Module):
    """Time-independent torchvision ResNet18, one logit, grayscale repeated to 3 channels.

    Small images (≤ 64 px, the embedded 28×28) keep full resolution through a stride-1 stem;
    larger ones use the stock stride-2 stem, and images above 224 px are resized to 224
    (differentiably, so universal guidance still gets a gradient at the model's resolution).
    """

    def __init__(self, weights=None, size: int = 28):
        super().__init__()
        net = resnet18(weights=weights)
        if size <= 64:
            net.conv1.stride = (1, 1)  # small inputs: keep the 7x7 weights, drop the first downsampling
        net.fc = nn.Linear(512, 1)
        self.net = net
        self.size = size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        if x.shape[-1] > RESNET_MAX_SIZE:
            x = F.interpolate(x, size=(RESNET_MAX_SIZE, RESNET_MAX_SIZE), mode="bilinear", antialias=True,
                              align_corners=False)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.net.fc(self.features(x)).squeeze(1)


def reward_shape(kind: str, diffusion=None) -> tuple[int, int, int]:
    """What a reward of this kind reads: the model's sample (latent) shape for a
    time-dependent reward, the decoded image for a clean-image one."""
    if diffusion is None:
        return (1, 28, 28)
    return tuple(diffusion.sample_shape if TIME_DEPENDENT[kind] else diffusion.image_shape)


def _half_unet(diffusion, init: str) -> nn.Module:
    shape = reward_shape("half-unet", diffusion)
    widths = (32, 64, 64) if shape[1] <= 64 else (32, 64, 64, 128)  # one more level for large inputs
    return HalfUNetReward(in_channels=shape[0], sample_size=shape[1], widths=widths)


def _local_patch(diffusion, init: str) -> nn.Module:
    return LocalPatchReward(in_channels=reward_shape("local-patch", diffusion)[0])


def _ddpm_encoder(diffusion, init: str) -> nn.Module:
    if diffusion is None:
        raise CensorError("the ddpm-encoder reward needs the diffusion model it reads features from")
    if type(diffusion.unet).__name__ != "UNet2DModel":
        raise CensorError(f"the ddpm-encoder reward reads a UNet2DModel's encoder; this model's network is a "
                          f"{type(diffusion.unet).__name__}: use half-unet or resnet18")
    return DiffusionEncoderReward(diffusion.unet)


def _resnet18(init: str, size: int = 28) -> ResNet18Reward:
    if init == "random":
        return ResNet18Reward(size=size)
    if init == "imagenet":
        try:
            return ResNet18Reward(weights=ResNet18_Weights.DEFAULT, size=size)
        except Exception as e:
            raise CensorError(f"ImageNet weights for ResNet18 could not be fetched ({type(e).__name__}); "
                              "use init='backbone' (the shipped self-supervised one) or 'random'") from None
    if init == "backbone":
        return load_backbone_into(ResNet18Reward(size=size))
    raise CensorError(f"unknown ResNet18 init {init!r}; use backbone, imagenet or random")


@dataclass(frozen=True)
class RewardKind:
    """One entry of the registry: whether the reward reads noised x_t (guidance needs r(x_t, t)), how
    to build one member for a diffusion model, the AdamW learning rate it trains at (a small net from
    scratch needs a larger step to learn in the same 300 iterations), and the share of those
    iterations spent on clean images before the noised ones (a detector of a small mark learns
    nothing when most of its first views are noise that hides the mark, see ``rewards.local``), and
    whether its members score positions (``malign_map`` and ``pool``), so boxes can supervise them; and whether
    its training views are flipped top to bottom as well as left to right (``vflip``)."""

    time_dependent: bool
    build: Callable[..., nn.Module]  # (diffusion, init) -> member
    lr: float = 3e-4  # the paper's
    clean_warmup: float = 0.0
    patches: bool = False
    # a local mark means the same in any corner, and a person labels only a few: with left-right flips alone a
    # reward that saw stamps in the top corners missed those in the bottom ones (watermark, 50 labels, seed 2:
    # median doubt rank 0.03 top, 0.28 and 0.46 bottom), top-bottom flips show each labelled mark in all four
    vflip: bool = False


REGISTRY = {
    "resnet18": RewardKind(False, lambda diffusion, init: _resnet18(init, reward_shape("resnet18", diffusion)[1])),
    "half-unet": RewardKind(True, _half_unet),
    "ddpm-encoder": RewardKind(True, _ddpm_encoder),
    "local-patch": RewardKind(True, _local_patch, lr=3e-3, clean_warmup=0.5, patches=True, vflip=True),  # small marks: full resolution, max pool
}
REWARD_KINDS = tuple(REGISTRY)
TIME_DEPENDENT = {name: k.time_dependent for name, k in REGISTRY.items()}


def build_member(kind: str, diffusion=None, init: str = "random") -> nn.Module:
    if kind not in REGISTRY:
        raise CensorError(f"unknown reward kind {kind!r}; use one of {', '.join(REWARD_KINDS)}")
    return REGISTRY[kind].build(diffusion, init)


def scores_positions(kind: str) -> bool:
    """Whether a reward of ``kind`` scores positions (a map over the image, max-pooled): the kind that sees a
    local mark, takes region feedback and says where to repaint."""
    return kind in REGISTRY and REGISTRY[kind].patches


def region_input(kind: str, boxes, labels, image_hw: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Region feedback for a reward of ``kind``: the boxes' masks (``local.region_masks``), refused
    unless its members score positions."""
    if not scores_positions(kind):
        raise CensorError(f"region feedback (boxes) trains a reward that scores positions (local-patch), not {kind}")
    return region_masks(boxes, labels, image_hw, size)
