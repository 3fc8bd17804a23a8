"""The baseline sample pool: pre-generated unguided images so a labelling session starts instantly.

Stored as ``pool.safetensors`` (uint8 images [N, 28, 28], int64 seeds [N]) plus ``pool.json``
(how they were made, and a fingerprint of the model weights so a stale pool is detected).
The seeds regenerate every image's initial noise (``sampling.initial_noise``), so a censored
gallery can be drawn from exactly the same x_T as the pool image a person labelled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from censor.core.data import to_uint8
from censor.core.errors import CensorError, shown, source_name
from censor.diffusion.models import ASSETS_DIR, EMBEDDED_MODEL_DIR, DiffusionModel
from censor.rewards.ensemble import model_fingerprint
from censor.sampling.loop import sample, seeds_for

POOL_DIR = ASSETS_DIR / "pool"


def weights_fingerprint(model_dir: str | Path) -> str:
    path = Path(model_dir) / "unet" / "diffusion_pytorch_model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def pool_fingerprint(model: DiffusionModel | None, model_dir: str | Path | None) -> str:
    """Which model (and conditioning) made a pool: the weights file of a folder in our layout, else
    a hash of the loaded network's weights plus the prompt or class it samples with."""
    if model_dir is not None and (Path(model_dir) / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        return weights_fingerprint(model_dir)
    label = model.conditioning.label if model.conditioning is not None else ""
    return "w" + hashlib.sha256((model_fingerprint(model.unet) + "|" + label).encode()).hexdigest()[:15]


@dataclass
class Pool:
    images: np.ndarray  # uint8 [N, 28, 28]
    seeds: np.ndarray  # int64 [N]
    meta: dict

    def __len__(self) -> int:
        return len(self.seeds)


def make_pool(model: DiffusionModel, model_dir: str | Path | None, n: int = 1000, steps: int = 50, seed: int = 1,
              show_bar: bool = True) -> Pool:
    seeds = seeds_for(n, seed)
    images = to_uint8(sample(model, seeds, steps=steps, method="ddim", eta=0.0, show_bar=show_bar))
    meta = dict(n=n, steps=steps, method="ddim", eta=0.0, seed=seed,
                model_fingerprint=pool_fingerprint(model, model_dir), source=model.source,
                image_shape=list(model.image_shape))
    return Pool(images, np.asarray(seeds, dtype=np.int64), meta)


def save_pool(pool: Pool, folder: str | Path = POOL_DIR) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"images": torch.as_tensor(pool.images), "seeds": torch.as_tensor(pool.seeds)},
              str(folder / "pool.safetensors"))
    (folder / "pool.json").write_text(json.dumps(pool.meta, indent=1))


def load_pool(folder: str | Path = POOL_DIR, model_dir: str | Path | None = EMBEDDED_MODEL_DIR,
              model: DiffusionModel | None = None) -> Pool:
    """Load the pool; with ``model_dir`` (or a loaded ``model``) given, refuse a pool made by other weights."""
    folder = Path(folder)
    try:
        t = load_file(str(folder / "pool.safetensors"))
        meta = json.loads((folder / "pool.json").read_text())
    except Exception as e:
        raise CensorError(f"sample pool {shown(folder)} is missing or corrupt ({type(e).__name__}); "
                          "rebuild it with python -m censor make-pool") from None
    if (model_dir is not None or model is not None) and meta.get("model_fingerprint") != pool_fingerprint(model, model_dir):
        raise CensorError(f"sample pool {shown(folder)} was made by other weights than "
                          f"{source_name(model_dir or model.source)!r}; "
                          "rebuild it with python -m censor make-pool")
    return Pool(t["images"].numpy(), t["seeds"].numpy(), meta)
