"""What the studio's buttons call: model loading, galleries as PIL images (no UI code here)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PIL import Image

from .data import to_uint8
from .errors import CensorError
from .models import EMBEDDED_MODEL_DIR, DiffusionModel, load_diffusion
from .sampling import sample, seeds_for

MAX_GALLERY = 256
DISPLAY_SIZE = 112


class Studio:
    """Holds the loaded model for a running app; loads it lazily so the page comes up at once."""

    def __init__(self, model_dir: str | Path | None = None, model: DiffusionModel | None = None):
        self.model_dir = Path(model_dir) if model_dir else EMBEDDED_MODEL_DIR
        self._model = model

    @property
    def model(self) -> DiffusionModel:
        if self._model is None:
            self._model = load_diffusion(self.model_dir)
        return self._model

    def fresh_gallery(self, n: int, steps: int, seed: int,
                      progress: Callable[[float], None] | None = None) -> list[Image.Image]:
        if not 1 <= n <= MAX_GALLERY:
            raise CensorError(f"a gallery holds 1 to {MAX_GALLERY} images, asked for {n}")
        images = to_uint8(sample(self.model, seeds_for(n, seed), steps=steps, progress=progress))
        return [Image.fromarray(im).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.NEAREST) for im in images]
