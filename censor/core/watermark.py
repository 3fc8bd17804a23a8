"""The synthetic "watermark": a small copyright-style glyph stamped into ~12% of training images.

It plays the part of the stock-photo watermarks in the paper's LSUN church task: a feature the
diffusion model learns to reproduce and a person wants gone. The stamp is deterministic for a seed
(which images, which corner, how bright), salient (a bright 7x7 ring on the mostly black corners of
Fashion-MNIST) and varied (corner, a 0-2 px offset, opacity 0.55-1.0) so it is a feature, not a
fixed pixel pattern.
"""

from __future__ import annotations

import numpy as np

WATERMARK_FRACTION = 0.12
GLYPH = np.array(
    [
        [0, 1, 1, 1, 1, 1, 0],
        [1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 0, 1],
        [1, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 1],
        [0, 1, 1, 1, 1, 1, 0],
    ],
    dtype=np.float32,
)
MAX_OFFSET = 2
OPACITY_RANGE = (0.55, 1.0)


def placement(corner: int, offset: tuple[int, int], h: int, w: int) -> tuple[int, int]:
    """(top, left) of the glyph for a corner 0..3 (top-left, top-right, bottom-left, bottom-right) and offset."""
    g, (dy, dx) = GLYPH.shape[0], offset
    return (dy if corner in (0, 1) else h - g - dy), (dx if corner in (0, 2) else w - g - dx)


def stamp(image: np.ndarray, corner: int, offset: tuple[int, int], opacity: float) -> np.ndarray:
    """Blend the glyph into one uint8 [H, W] image; corner 0..3 = top-left, top-right, bottom-left, bottom-right."""
    g = GLYPH.shape[0]
    top, left = placement(corner, offset, *image.shape)
    out = image.astype(np.float32).copy()
    patch = out[top:top + g, left:left + g]
    a = opacity * GLYPH
    out[top:top + g, left:left + g] = patch * (1.0 - a) + 255.0 * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_watermark(
    images: np.ndarray, seed: int, fraction: float = WATERMARK_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Stamp exactly round(fraction * N) images chosen by ``seed``; return (images, flags)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    n = len(images)
    chosen = rng.permutation(n)[: int(round(fraction * n))]
    flags = np.zeros(n, dtype=bool)
    flags[chosen] = True
    out = images.copy()
    corners = rng.integers(0, 4, size=len(chosen))
    offsets = rng.integers(0, MAX_OFFSET + 1, size=(len(chosen), 2))
    opacities = rng.uniform(*OPACITY_RANGE, size=len(chosen))
    for i, c, o, a in zip(chosen, corners, offsets, opacities):
        out[i] = stamp(images[i], int(c), (int(o[0]), int(o[1])), float(a))
    return out, flags


def locate_stamp(image: np.ndarray) -> tuple[int, int]:
    """(top, left) of the 7x7 window, among every place ``stamp`` may put the glyph, that looks most like
    it (its ring brighter than the rest of the window): where a person would see the stamp."""
    x, ring = image.astype(np.float32), GLYPH > 0
    places = [placement(c, (dy, dx), *image.shape) for c in range(4)
              for dy in range(MAX_OFFSET + 1) for dx in range(MAX_OFFSET + 1)]
    g = GLYPH.shape[0]
    score = [x[t:t + g, l:l + g][ring].mean() - x[t:t + g, l:l + g][~ring].mean() for t, l in places]
    return places[int(np.argmax(score))]
