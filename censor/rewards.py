"""Reward models r(x) ~ P(benign | x): architectures, the ensemble, and their storage.

Three kinds, one interface (``member(x, t) -> logit [N]``, label 1 = benign):

- ``resnet18``: time-independent torchvision ResNet18 on clean images (universal/backward guidance).
  Stem adapted to 28x28 (stride-1 first conv, keeping its weights) so ImageNet or the embedded
  self-supervised backbone still initialise it.
- ``half-unet``: the paper's time-dependent classifier r(x_t, t), a diffusers UNet encoder (time
  embedding, down blocks, mid block) with a pooled linear head, trained from scratch.
- ``ddpm-encoder``: a head on the *frozen* encoder of the diffusion model itself (the thesis in
  seed 001 builds its reward this way): features that already mean something at every noise level,
  and only a small head to learn from a hundred labels. It taps an early down block and the mid
  block: measured on 100 pool labels (AUC on 900 held-out, t = 0), the mid block alone sees bags
  (0.99) but not the corner stamp (0.58); adding the early tap with max pooling gives 0.80.

An ensemble combines members as sum_k log sigmoid(logit_k), the log of the product of their
probabilities, so one doubting member is enough to push a sample away.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CensorError

REWARD_KINDS = ("resnet18", "half-unet", "ddpm-encoder")
TIME_DEPENDENT = {"half-unet": True, "ddpm-encoder": True, "resnet18": False}


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


class HalfUNetReward(nn.Module):
    """Time-dependent r(x_t, t) from scratch: the encoder half of a small diffusers UNet."""

    def __init__(self, in_channels: int = 1, sample_size: int = 28, widths=(32, 64, 64)):
        super().__init__()
        from diffusers import UNet2DModel

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
        from torchvision.models import resnet18

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
    """What a reward of ``kind`` reads: x_t in the sampler's space (latents for a latent model) for a
    time-dependent reward, the decoded image for a clean-image one."""
    if diffusion is None:
        return (1, 28, 28)
    return tuple(diffusion.sample_shape if TIME_DEPENDENT[kind] else diffusion.image_shape)


def build_member(kind: str, diffusion=None, init: str = "random") -> nn.Module:
    shape = reward_shape(kind, diffusion) if kind in TIME_DEPENDENT else None
    if kind == "half-unet":
        widths = (32, 64, 64) if shape[1] <= 64 else (32, 64, 64, 128)  # one more level for large inputs
        return HalfUNetReward(in_channels=shape[0], sample_size=shape[1], widths=widths)
    if kind == "ddpm-encoder":
        if diffusion is None:
            raise CensorError("the ddpm-encoder reward needs the diffusion model it reads features from")
        if type(diffusion.unet).__name__ != "UNet2DModel":
            raise CensorError(f"the ddpm-encoder reward reads a UNet2DModel's encoder; this model's network is a "
                              f"{type(diffusion.unet).__name__}: use half-unet or resnet18")
        return DiffusionEncoderReward(diffusion.unet)
    if kind == "resnet18":
        return _resnet18(init, shape[1])
    raise CensorError(f"unknown reward kind {kind!r}; use one of {', '.join(REWARD_KINDS)}")


def _resnet18(init: str, size: int = 28) -> ResNet18Reward:
    if init == "random":
        return ResNet18Reward(size=size)
    if init == "imagenet":
        from torchvision.models import ResNet18_Weights

        try:
            return ResNet18Reward(weights=ResNet18_Weights.DEFAULT, size=size)
        except Exception as e:
            raise CensorError(f"ImageNet weights for ResNet18 could not be fetched ({type(e).__name__}); "
                              "use init='backbone' (the shipped self-supervised one) or 'random'") from None
    if init == "backbone":
        from .backbone import load_backbone_into

        return load_backbone_into(ResNet18Reward(size=size))
    raise CensorError(f"unknown ResNet18 init {init!r}; use backbone, imagenet or random")


def clean_input(reward, diffusion, x: torch.Tensor) -> torch.Tensor:
    """What ``reward`` reads for clean images x in [-1, 1]: x itself, or the latents of x when it is a
    latent model's time-dependent reward (trained on latents, see reward_training)."""
    if diffusion is not None and diffusion.is_latent and tuple(reward.image_shape) == tuple(diffusion.sample_shape):
        with torch.no_grad():
            return torch.cat([diffusion.encode(c) for c in x.split(64)])
    return x


def model_fingerprint(unet) -> str:
    """A short hash of a UNet's weights: a reward built on one diffusion model refuses another."""
    h = hashlib.sha256()
    for k, v in sorted(unet.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


@dataclass
class RewardEnsemble:
    """K reward models combined as a product of probabilities."""

    kind: str
    members: list[nn.Module]
    image_shape: tuple[int, int, int] = (1, 28, 28)
    info: dict = field(default_factory=dict)  # training settings and measurements, saved as JSON

    @property
    def time_dependent(self) -> bool:
        return TIME_DEPENDENT[self.kind]

    @property
    def reads_unet(self):
        """The diffusion UNet whose encoder every member reads (ddpm-encoder), else None.

        Members then differ only in their heads, so one encoder pass serves all K of them, and
        time guidance can take that pass from the sampler's own ε_θ call (see guidance.py).
        """
        if self.kind != "ddpm-encoder":
            return None
        unets = {id(m.unet[0]) for m in self.members}
        return self.members[0].unet[0] if len(unets) == 1 else None

    def logits_from_features(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """[K, N] logits from the shared encoder taps of a ddpm-encoder ensemble."""
        return torch.stack([m.head(taps) for m in self.members])

    def logits(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """[K, N] member logits."""
        unet = self.reads_unet
        if unet is not None:
            t = torch.zeros(len(x), dtype=torch.long) if t is None else t
            return self.logits_from_features(unet_taps(unet, x, t))
        return torch.stack([m(x, t) for m in self.members])

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """sum_k log sigmoid(logit_k): log of the ensemble's P(benign), [N]."""
        return F.logsigmoid(self.logits(x, t)).sum(0)

    @torch.no_grad()
    def prob(self, x: torch.Tensor, t: torch.Tensor | None = None, batch_size: int = 500) -> torch.Tensor:
        """The product of member probabilities: the weight guidance steers by (not a calibrated P)."""
        return torch.cat([self.log_prob(c, None if t is None else t[i * batch_size:(i + 1) * batch_size]).exp()
                          for i, c in enumerate(x.split(batch_size))])

    @torch.no_grad()
    def benign_prob(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Geometric mean of member probabilities, for per-image verdicts (threshold 0.5).

        The product of K members sits near 0.5**K for undecided members, so thresholding it would
        call almost everything malign as K grows.
        """
        return self.prob(x, t).pow(1.0 / len(self.members))

    def eval(self) -> "RewardEnsemble":
        for m in self.members:
            m.eval().requires_grad_(False)
        return self

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"member{k}.{name}": v.detach().cpu().contiguous()
                   for k, m in enumerate(self.members) for name, v in m.state_dict().items()}
        save_file(tensors, str(folder / "reward.safetensors"))
        info = {k: v for k, v in self.info.items() if not k.startswith("_")}  # "_" keys live in memory only
        meta = dict(kind=self.kind, members=len(self.members), image_shape=list(self.image_shape), info=info)
        (folder / "reward.json").write_text(json.dumps(meta, indent=1))


def load_reward(folder: str | Path, diffusion=None) -> RewardEnsemble:
    """Load a saved ensemble; refuse one made for another image size or another diffusion model."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "reward.json").read_text())
        tensors = load_file(str(folder / "reward.safetensors"))
    except Exception as e:
        raise CensorError(f"reward folder {folder} is missing or corrupt ({type(e).__name__})") from None
    # reward files come from users' bundles: check reward.json's shape and refuse NaN/inf weights
    # (they would only turn every guided image into noise, silently)
    if (not isinstance(meta, dict) or type(meta.get("members")) is not int or meta["members"] < 1
            or not isinstance(meta.get("info", {}), dict) or not isinstance(meta.get("image_shape", []), list)):
        raise CensorError(f"reward folder {folder}: reward.json is malformed")
    for name, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CensorError(f"reward folder {folder}: {name} holds NaN or infinite values")
    kind = meta.get("kind")
    if kind not in REWARD_KINDS:
        raise CensorError(f"reward folder {folder}: unknown kind {kind!r}")
    shape = tuple(meta.get("image_shape", ()))
    if diffusion is not None and kind in REWARD_KINDS and shape != reward_shape(kind, diffusion):
        raise CensorError(f"this reward was trained on {shape} images (or latents); this model's {kind} reward reads "
                          f"{reward_shape(kind, diffusion)}")
    if kind == "ddpm-encoder":
        if diffusion is None:
            raise CensorError("a ddpm-encoder reward can only be loaded together with its diffusion model")
        if meta.get("info", {}).get("model_fingerprint") != model_fingerprint(diffusion.unet):
            raise CensorError("this reward reads features of another diffusion model; retrain it for this one")
    members = []
    for k in range(int(meta["members"])):
        m = build_member(kind, diffusion)
        sd = {name[len(f"member{k}."):]: v for name, v in tensors.items() if name.startswith(f"member{k}.")}
        try:
            m.load_state_dict(sd)
        except RuntimeError as e:
            raise CensorError(f"reward folder {folder}: member {k} does not fit a {kind} model "
                              f"({str(e).splitlines()[0]})") from None
        members.append(m)
    return RewardEnsemble(kind, members, shape, meta.get("info", {})).eval()
