"""The embedded ResNet18 backbone, pretrained *without class labels* on the training images (SimCLR).

The paper's ResNet18 reward starts from ImageNet weights, which these offline machines cannot
fetch; a reward trained from scratch on ~100 labels has meaningless, adversarial input gradients
(../shared/MEASURED.md). So the project pretrains its own backbone self-supervised: two augmented
views of each image must find each other among the batch (NT-Xent loss, Chen et al. 2020).

``python -m censor train-backbone --epochs 5 [--subset 20000]`` writes assets/backbone/."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from censor.core.errors import CensorError, shown
from censor.diffusion.models import ASSETS_DIR

BACKBONE_DIR = ASSETS_DIR / "backbone"


def load_backbone_into(reward, folder: str | Path = BACKBONE_DIR):
    """Copy the shipped backbone weights into a ``ResNet18Reward`` (its fc head stays freshly initialised)."""
    path = Path(folder) / "backbone.safetensors"
    if not path.is_file():
        raise CensorError(f"no embedded backbone {shown(path)}; train one with python -m censor train-backbone "
                          "or use init='random'")
    state = load_file(str(path))
    missing, unexpected = reward.net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise CensorError(f"{shown(path)} does not fit the ResNet18 reward (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return reward

