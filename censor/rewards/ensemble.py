"""The reward ensemble r(x) ~ P(benign | x) of K members, and its storage (safetensors + JSON).

Four kinds (``architectures.REGISTRY``), one interface (``member(x, t) -> logit [N]``, label 1 = benign):

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
- ``local-patch``: r(x_t, t) for small local marks (``rewards.local``): full-resolution dilated convs
  with FiLM on t and a smooth max over positions, so a 7x7 stamp anywhere counts.

An ensemble combines members as sum_k log sigmoid(logit_k), the log of the product of their
probabilities, so one doubting member is enough to push a sample away."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from censor.core.errors import CensorError, shown
from censor.core.settings import RewardSettings
from censor.rewards.architectures import REWARD_KINDS, TIME_DEPENDENT, build_member, reward_shape
from censor.rewards.taps import unet_taps

STALE_SECONDS = 600  # a save's temporary folder older than this was left by a killed process


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
        # the first 1024 values are the first 4096 bytes of the float32 tensor: no full-size copy
        h.update(v.detach().flatten()[:1024].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class RewardEnsemble:
    """K reward models combined as a product of probabilities."""

    kind: str
    members: list[nn.Module]
    image_shape: tuple[int, int, int] = (1, 28, 28)
    info: dict = field(default_factory=dict)  # training settings and measurements, saved as JSON
    # in memory only: each member's AdamW state, so an imitation round resumes training where it stopped
    optimizer_states: list | None = field(default=None, repr=False, compare=False)

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
        """Write the weights and reward.json into a fresh folder, then swap it in for ``folder`` whole:
        a kill mid-save leaves the previous reward intact, never new weights beside an old config."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        for stale in folder.parent.glob(f".{folder.name}.*"):  # left by a save killed before (or after) its swap
            with contextlib.suppress(OSError):
                if time.time() - stale.stat().st_mtime > STALE_SECONDS:  # not a concurrent save's folder
                    shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.new-", dir=folder.parent))
        try:
            tensors = {f"member{k}.{name}": v.detach().cpu().contiguous()
                       for k, m in enumerate(self.members) for name, v in m.state_dict().items()}
            save_file(tensors, str(tmp / "reward.safetensors"))
            info = {k: v for k, v in self.info.items() if not k.startswith("_")}  # "_" keys live in memory only
            meta = dict(kind=self.kind, members=len(self.members), image_shape=list(self.image_shape), info=info)
            (tmp / "reward.json").write_text(json.dumps(meta, indent=1))
            for f in (tmp / "reward.safetensors", tmp / "reward.json", tmp):
                _fsync(f)
            _swap_into(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the old reward after a swap, or a failed save's files


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100
try:
    _RENAMEAT2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
except (OSError, AttributeError, TypeError):
    _RENAMEAT2 = None


def _swap_into(tmp: Path, folder: Path) -> None:
    """Put the finished folder ``tmp`` where ``folder`` is, in one step; ``tmp`` then holds the old one.

    A new folder is one rename. Replacing one is Linux's renameat2(RENAME_EXCHANGE), which swaps the
    two names atomically; where that is missing, two renames (a kill between them loses the folder)."""
    if not folder.exists():
        os.rename(tmp, folder)
        return
    if _RENAMEAT2 is not None and _RENAMEAT2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(folder),
                                           _RENAME_EXCHANGE) == 0:
        _fsync(folder.parent)
        return
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    os.rename(folder, old)
    os.rename(tmp, folder)
    os.rename(old, tmp)


def load_reward(folder: str | Path, diffusion=None) -> RewardEnsemble:
    """Load a saved ensemble; refuse one made for another image size or another diffusion model.

    Reward files come from users' bundles, so every tensor must be exactly what a freshly built member
    holds (same names, dtype and shape; finite), and the member count is the one training allows."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "reward.json").read_text())
        tensors = load_file(str(folder / "reward.safetensors"))
    except Exception as e:  # the folder's name only: a public studio's users never see server paths
        raise CensorError(f"reward folder {shown(folder)} is missing or corrupt: no readable reward.json and "
                          f"reward.safetensors ({type(e).__name__})") from None
    shape = meta.get("image_shape", []) if isinstance(meta, dict) else None
    if (not isinstance(meta, dict) or type(meta.get("members")) is not int or meta["members"] < 1
            or not isinstance(meta.get("info", {}), dict) or not isinstance(shape, list)
            or not all(type(v) is int and v > 0 for v in shape)):
        raise CensorError("reward.json is malformed")
    RewardSettings.knobs()["members"].check("members", meta["members"], "reward.json: ")
    kind = meta.get("kind")
    if kind not in REWARD_KINDS:
        raise CensorError(f"reward.json: unknown kind {kind!r}")
    shape = tuple(shape)
    if diffusion is not None and shape != reward_shape(kind, diffusion):
        raise CensorError(f"this reward was trained on {shape} images (or latents); this model's {kind} reward reads "
                          f"{reward_shape(kind, diffusion)}")
    if kind == "ddpm-encoder":
        if diffusion is None:
            raise CensorError("a ddpm-encoder reward can only be loaded together with its diffusion model")
        if meta.get("info", {}).get("model_fingerprint") != model_fingerprint(diffusion.unet):
            raise CensorError("this reward reads features of another diffusion model; retrain it for this one")
    members = [build_member(kind, diffusion) for _ in range(meta["members"])]
    expected = {f"member{k}.{name}": v for k, m in enumerate(members) for name, v in m.state_dict().items()}
    _check_tensors(tensors, expected, f"{meta['members']} {kind} member(s)")
    for k, m in enumerate(members):
        m.load_state_dict({name[len(f"member{k}."):]: v for name, v in tensors.items() if name.startswith(f"member{k}.")})
    return RewardEnsemble(kind, members, shape, meta.get("info", {})).eval()


def _check_tensors(tensors: dict, expected: dict, what: str) -> None:
    """Refuse weights that are not exactly ``expected``'s names, dtypes and shapes, or not finite
    (a complex or float8 tensor would slip past a float-only NaN check, or crash it)."""
    missing, extra = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or extra:
        first = f"lacks {missing[0][:80]!r}" if missing else f"has an unexpected {extra[0][:80]!r}"
        raise CensorError(f"reward.safetensors does not fit {what}: it {first} "
                          f"({len(missing)} missing, {len(extra)} unexpected)")
    for name, ref in expected.items():
        v = tensors[name]
        if v.dtype != ref.dtype or v.shape != ref.shape:
            raise CensorError(f"reward.safetensors: {name} is {str(v.dtype).removeprefix('torch.')} "
                              f"{list(v.shape)}, expected {str(ref.dtype).removeprefix('torch.')} {list(ref.shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CensorError(f"reward.safetensors: {name} holds NaN or infinite values")
