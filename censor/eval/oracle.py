"""The evaluation oracle: a CNN that judges Fashion-MNIST class and watermark, and nothing else.

It is the project's stand-in for the paper's human inspection of censored galleries. It is trained
on the full labelled, watermarked training split and must never feed guidance or reward training
(the reward models in censor/ see only the labeller's labels); otherwise the judge would be grading
its own homework. Its 128-d penultimate activations are the feature space for FID and k-NN
precision/recall.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from censor.core.data import to_model_range
from censor.core.errors import CensorError, hide_paths, shown
from censor.diffusion.models import ASSETS_DIR

ORACLE_DIR = ASSETS_DIR / "oracle"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class OracleNet(nn.Module):
    """Two conv stages at 28 and 14 px, one at 7 px, then a 128-d embedding and two heads."""

    def __init__(self, width: int = 32, feature_dim: int = 128, num_classes: int = 10):
        super().__init__()
        self.config = dict(width=width, feature_dim=feature_dim, num_classes=num_classes)
        w = width
        self.body = nn.Sequential(
            _block(1, w), nn.MaxPool2d(2), _block(w, 2 * w), nn.MaxPool2d(2), _block(2 * w, 4 * w),
        )
        self.embed = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * w * 49, feature_dim),
                                   nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.class_head = nn.Linear(feature_dim, num_classes)
        self.watermark_head = nn.Linear(feature_dim, 1)

    def forward(self, x: torch.Tensor):
        f = self.embed(self.body(x))
        return self.class_head(f), self.watermark_head(f).squeeze(1), f


@dataclass
class Judgement:
    """The oracle's view of a batch: class probabilities, P(watermark) and embeddings."""

    class_probs: np.ndarray  # [N, 10]
    watermark_prob: np.ndarray  # [N]
    features: np.ndarray  # [N, 128]

    @property
    def classes(self) -> np.ndarray:
        return self.class_probs.argmax(1)

    @property
    def confident(self) -> np.ndarray:
        """Max class probability >= 0.9: the oracle recognises the item as one garment type."""
        return self.class_probs.max(1) >= 0.9

    @property
    def watermarked(self) -> np.ndarray:
        return self.watermark_prob >= 0.5


class Oracle:
    def __init__(self, net: OracleNet, metrics: dict | None = None):
        self.net = net.eval()
        self.metrics = metrics or {}

    @torch.no_grad()
    def judge(self, images, batch_size: int = 1000) -> Judgement:
        """Judge uint8 [N, 28, 28] arrays or float tensors [N, 1, 28, 28] in [-1, 1]."""
        x = images if torch.is_tensor(images) else to_model_range(np.asarray(images))
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise CensorError(f"the oracle judges 1x28x28 images; got shape {tuple(x.shape)}")
        probs, wms, feats = [], [], []
        for chunk in x.float().cpu().split(batch_size):
            logits, wm, f = self.net(chunk)
            probs.append(logits.softmax(1))
            wms.append(wm.sigmoid())
            feats.append(f)
        return Judgement(torch.cat(probs).numpy(), torch.cat(wms).numpy(), torch.cat(feats).numpy())

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**self.net.config, "metrics": self.metrics}, indent=1))


def load_oracle(folder: str | Path = ORACLE_DIR) -> Oracle:
    folder = Path(folder)
    cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise CensorError(f"oracle folder {shown(folder)} needs config.json and model.safetensors; "
                          "retrain with python -m censor train-oracle")
    try:
        cfg = json.loads(cfg_path.read_text())
        metrics = cfg.pop("metrics", {})
        net = OracleNet(**cfg)
        net.load_state_dict(load_file(str(w_path)))
    except Exception as e:
        raise CensorError(f"oracle folder {shown(folder)} is corrupt: "
                          f"{hide_paths(str(e).splitlines()[0]) if str(e) else type(e).__name__}") from None
    return Oracle(net, metrics)


def load_reference(folder: str | Path = ORACLE_DIR) -> dict[str, np.ndarray]:
    """Real test-split oracle features, labels and watermark flags written by train_oracle."""
    path = Path(folder) / "reference.safetensors"
    if not path.is_file():
        raise CensorError(f"oracle folder {shown(folder)} has no {path.name}; "
                          "run python -m censor train-oracle --reference-only")
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in load_file(str(path)).items()}
