"""Fashion-MNIST from IDX files, plus the watermarked training set every asset is built from.

Only retraining reads the Debian package (``/usr/share/datasets/fashion-mnist``); the app and the
tests use the shipped assets and ``tests/fixtures``. Images travel as uint8 arrays [N, 28, 28]
and become float tensors in [-1, 1] (the diffusion model's range) only at the model boundary.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from censor.core.errors import CensorError
from censor.core.watermark import apply_watermark

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes (http://yann.lecun.com/exdb/mnist/): only unsigned bytes occur in Fashion-MNIST.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise CensorError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise CensorError(f"{path} is not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise CensorError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CensorError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise CensorError(f"{path}: expected {expected} data bytes for shape {shape}, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).exists():
            return data_dir / name
    raise CensorError(
        f"no {stem}[.gz] in {data_dir}; install Debian's dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist) or pass --data DIR"
    )


def load_split(split: str, data_dir: str | Path = DEFAULT_DATA_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Clean images (uint8 [N, 28, 28]) and class labels (uint8 [N]) of one split."""
    if split not in _SPLIT_FILES:
        raise CensorError(f"unknown split {split!r}; use one of {sorted(_SPLIT_FILES)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CensorError(f"data folder {data_dir} does not exist")
    img_stem, lbl_stem = _SPLIT_FILES[split]
    images, labels = read_idx(_find(data_dir, img_stem)), read_idx(_find(data_dir, lbl_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise CensorError(f"{data_dir}: {split} images {images.shape} and labels {labels.shape} do not match")
    return images, labels


@dataclass
class LabelledImages:
    """Watermarked images with everything the judge needs to know about them."""

    images: np.ndarray     # uint8 [N, 28, 28], watermark already stamped where flagged
    labels: np.ndarray     # uint8 [N], Fashion-MNIST class
    watermark: np.ndarray  # bool [N]

    def __len__(self) -> int:
        return len(self.labels)


# Different seeds per split so the test split's stamps are not a copy of the training split's.
_SPLIT_SEEDS = {"train": 20230706, "test": 20231122}


def load_watermarked(split: str, data_dir: str | Path = DEFAULT_DATA_DIR) -> LabelledImages:
    """A split with the project's deterministic watermark applied (the data every asset is trained on)."""
    images, labels = load_split(split, data_dir)
    stamped, flags = apply_watermark(images, seed=_SPLIT_SEEDS[split])
    return LabelledImages(stamped, labels.copy(), flags)


def to_model_range(images: np.ndarray):
    """uint8 [N, H, W] (grayscale) or [N, H, W, C] (colour) -> float tensor [N, C, H, W] in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
    """float tensor [N, C, H, W] in [-1, 1] -> uint8 [N, H, W] for C = 1, else [N, H, W, C] (clamped, rounded)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    x = x.squeeze(1) if x.shape[1] == 1 else x.permute(0, 2, 3, 1)
    return x.to("cpu").numpy().astype(np.uint8)
