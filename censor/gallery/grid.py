"""Image grids: the galleries people look at, label and share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from censor.core.errors import CensorError, shown


def grid(images: np.ndarray, nrow: int | None = None, scale: int = 2, pad: int = 2,
         marks: np.ndarray | None = None) -> Image.Image:
    """Tile uint8 [N, H, W] (grayscale) or [N, H, W, 3] (colour) images into one PIL image;
    ``marks`` (bool [N]) draws a red frame."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise CensorError(f"grid needs uint8 [N, H, W] or [N, H, W, 3] images, got {images.dtype} {images.shape}")
    if images.ndim == 3:
        images = images[..., None]
    n, h, w = images.shape[:3]
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        if marks is not None and marks[i]:
            canvas[y - pad:y + h + pad, x - pad:x + w + pad] = (220, 30, 30)
        canvas[y:y + h, x:x + w] = images[i]
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(images: np.ndarray, path: str | Path, **kw) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise CensorError(f"grid output must end in .png, .jpg or .webp, got {path.name}")
    if path.parent and not path.parent.exists():
        raise CensorError(f"output folder {shown(path.parent)} does not exist")
    grid(images, **kw).save(path)
    return path
