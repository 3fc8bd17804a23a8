"""Region feedback: the box a person draws round the malign part of an image they marked malign.

A box is ``(x0, y0, x1, y1)`` in the image's own pixels (the embedded model's 28x28), x to the right,
y down, the far edges exclusive: whole numbers with 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height.
``check_box`` holds every box to that wherever one enters (a drag in the label grid, an uploaded
session, reward training), so nothing downstream re-checks it. The default box and its preset
positions (the keyboard's way to place one) are defined here once, for any image size.
"""

from __future__ import annotations

import numbers

import numpy as np

from censor.core.errors import CensorError

# A default box's side as a share of the image's shorter side: 9 px of 28, a 7x7 stamp and its 0-2 px offset.
BOX_SHARE = 1 / 3
BOX_FIELDS = ("x0", "y0", "x1", "y1")
Box = tuple[int, int, int, int]


def check_box(box, height: int, width: int, where: str = "") -> Box:
    """``box`` as a tuple when it is four whole numbers inside a ``height`` x ``width`` image with
    x0 < x1 and y0 < y1; otherwise a one-line CensorError saying which rule it breaks."""
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(_whole(v) for v in box)):
        raise CensorError(f"{where}a box must be four whole numbers [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (int(v) for v in box)
    if min(x0, y0) < 0 or x1 > width or y1 > height:
        raise CensorError(f"{where}a box must lie inside the {width}x{height} image "
                          f"(0 <= x0, y0; x1 <= {width}; y1 <= {height})")
    if not (x0 < x1 and y0 < y1):
        raise CensorError(f"{where}a box needs x0 < x1 and y0 < y1 (the far edges are exclusive)")
    return x0, y0, x1, y1


def _whole(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def default_side(height: int, width: int) -> int:
    return max(1, round(BOX_SHARE * min(height, width)))


def box_at(at, height: int, width: int, where: str = "") -> Box:
    """A default-size box centred on the pixel ``at`` = (x, y) (a click), moved inside the image;
    ``at`` must be two whole numbers inside it."""
    if not isinstance(at, (list, tuple)) or len(at) != 2 or not all(_whole(v) for v in at):
        raise CensorError(f"{where}a pixel must be two whole numbers [x, y]")
    x, y = (int(v) for v in at)
    if not (0 <= x < width and 0 <= y < height):
        raise CensorError(f"{where}the pixel must lie inside the {width}x{height} image")
    side = default_side(height, width)
    x0 = int(np.clip(int(x) - side // 2, 0, width - side))
    y0 = int(np.clip(int(y) - side // 2, 0, height - side))
    return x0, y0, x0 + side, y0 + side


def preset_boxes(height: int, width: int) -> list[Box]:
    """Where the keyboard puts a default box, in turn: the four corners (top-left, top-right,
    bottom-left, bottom-right: where stamps and logos sit), then the centre."""
    s = default_side(height, width)
    corners = [(0, 0), (width - s, 0), (0, height - s), (width - s, height - s), ((width - s) // 2, (height - s) // 2)]
    return [(x, y, x + s, y + s) for x, y in corners]


def next_preset(box: Box | None, height: int, width: int) -> Box:
    """The preset after ``box`` (the first when it is none of them)."""
    presets = preset_boxes(height, width)
    k = presets.index(tuple(box)) + 1 if box is not None and tuple(box) in presets else 0
    return presets[k % len(presets)]


def box_masks(boxes, height: int, width: int) -> np.ndarray:
    """[N, height, width] float32: 1 inside each image's box, 0 elsewhere (all 0 for an image without one)."""
    out = np.zeros((len(boxes), height, width), np.float32)
    for i, b in enumerate(boxes):
        if b is not None:
            x0, y0, x1, y1 = b
            out[i, y0:y1, x0:x1] = 1.0
    return out


def check_boxes(boxes, labels, height: int, width: int) -> list[Box | None]:
    """One box or None per label, every box valid and on a malign label (0): what reward training reads."""
    boxes = list(boxes)
    if len(boxes) != len(labels):
        raise CensorError(f"{len(boxes)} boxes for {len(labels)} labels: give one box or None per label")
    out = []
    for i, (b, y) in enumerate(zip(boxes, labels)):
        if b is not None and int(y) != 0:
            raise CensorError(f"label {i}: a box shows where an image is malign; this one is labelled benign")
        out.append(None if b is None else check_box(b, height, width, f"label {i}: "))
    return out
