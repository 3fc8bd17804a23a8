"""``local-patch``: a time-dependent reward for small local marks (a corner stamp, a watermark).

The other time-dependent kinds downsample early and pool by the mean, so a 7x7 mark on a 28x28
image is averaged away (few-shot AUC 0.53-0.58 on the stamp). This one keeps full resolution:
a 3x3 stem and two stride-1 3x3 convs of dilation 2 and 4 (receptive field 15 px), each batch-
normalised and modulated by the timestep (FiLM: a per-channel scale and shift from a sinusoidal t
embedding, so the same filter can ask for a fainter mark at large t), a per-position *malign*
score, and a smooth max over positions (temperature τ: a logsumexp, so a mark anywhere makes the
image malign and guidance's gradient reaches the pixels around the mark, not one arg-max pixel).

Its training views are flipped top to bottom as well as left to right (``RewardKind.vflip``): a mark means the
same in any corner, and a reward shown stamps in the top corners only missed half of those in the bottom ones.

It learns the mark on clean views first (``RewardKind.clean_warmup``): trained on noised views
from the start, most of which hide a 7x7 mark entirely, it settles on a constant (AUC 0.5-0.6 on
the stamp in every variant tried); after clean views it keeps what it learnt through the noised ones.

Region feedback (a box on a malign image, ``censor.core.regions``) supervises the per-position scores
directly (``patch_loss``, the one place its formula lives): positions inside a box are malign, every
position of a benign image and those of a boxed image beyond the receptive field's reach of its box
are benign. The image-level loss stays as it is; this term is added to it.

A box also makes more examples (``pasted_marks``, copy-paste augmentation, Ghiasi et al. 2021): a local
mark is independent of what the image shows, so its box pasted at the same place onto a benign image is
another malign image, with the same box, and beside the unpasted original it says the mark is the cue.
Off by default (``PASTE``): on the embedded model's watermark it did not pay (the reward came to doubt most
of the model's images); ``train_reward(paste=...)`` and ``bench-active --paste`` turn it on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from censor.core.regions import box_masks, check_boxes

DILATIONS = (2, 4)  # after a 3x3 stem: receptive field 3 + 2·(2 + 4) = 15 px, a 7x7 stamp and its surround
WIDTH = 8  # full-resolution channels: 5 members train in < 1 min on 2 CPU cores (16: same AUC, 1.7x the time)
TIME_DIM = 32
TEMPERATURE = 0.5  # smooth max: τ·logsumexp(s/τ); τ → 0 is the hard max, large τ the mean
PATCH_WEIGHT = 1.0  # the region term beside the image-level BCE (both are means of per-label terms)
REACH = (3 + 2 * sum(DILATIONS)) // 2  # 7 px: a position this near a box sees part of what is in it
PASTE = 0  # pasted copies of each boxed mark, each onto another benign label (at most one per benign label). Off:
#           watermark, boxes, informative-first, 50 labels, 3 seeds x 334: 2 -> 1.90% malign, tv 0.032-0.064, the
#           reward doubting 67-90% of the pool; 0 -> 2.20%, tv 0.030-0.041 (docs/benchmarks.md, "Local marks, eighth part")


def timestep_embedding(t: torch.Tensor, dim: int = TIME_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """The DDPM sinusoidal embedding of integer timesteps, [N, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs.to(t.device).reshape(1, -1)
    return torch.cat([torch.cos(args), torch.sin(args)], 1)


class LocalPatchReward(nn.Module):
    """r(x_t, t): full-resolution dilated convs with FiLM on t, smooth max of per-position malign scores.

    Benign logit = b − τ·(logsumexp(s_p / τ) − log HW) over positions p, so any one malign patch
    lowers it (the log HW makes a uniform map score its own value, whatever the image size).
    """

    def __init__(self, in_channels: int = 1, width: int = WIDTH, dilations=DILATIONS, temperature: float = TEMPERATURE):
        super().__init__()
        self.temperature = temperature
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, width, 3, padding=1)]
                                   + [nn.Conv2d(width, width, 3, padding=d, dilation=d) for d in dilations])
        self.norms = nn.ModuleList(nn.BatchNorm2d(width) for _ in self.convs)  # fast learning from 100 labels
        self.time = nn.Sequential(nn.Linear(TIME_DIM, 64), nn.SiLU(), nn.Linear(64, 2 * width * len(self.convs)))
        nn.init.zeros_(self.time[-1].weight)  # FiLM starts as the identity: t modulates only what it learns to
        nn.init.zeros_(self.time[-1].bias)
        self.score = nn.Conv2d(width, 1, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        self.to(memory_format=torch.channels_last)  # NHWC convs: a third faster on the CPU at these widths

    def malign_map(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """[N, H, W] per-position malign scores (what the smooth max pools)."""
        if t is None:
            t = torch.zeros(len(x), dtype=torch.long)
        t = t.to(x.device).reshape(-1) * torch.ones(len(x), dtype=torch.long, device=x.device)
        film = self.time(timestep_embedding(t).to(x.dtype)).chunk(2 * len(self.convs), dim=1)
        h = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            scale, shift = film[2 * i][:, :, None, None], film[2 * i + 1][:, :, None, None]
            h = F.silu(norm(conv(h)) * (1 + scale) + shift)
        return self.score(h).squeeze(1)

    def pool(self, s: torch.Tensor) -> torch.Tensor:
        """The benign logit of a [N, H, W] malign map."""
        s, tau = s.flatten(1), self.temperature
        return self.bias - tau * (torch.logsumexp(s / tau, dim=1) - math.log(s.shape[1]))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(self.malign_map(x, t))


def patch_loss(member: LocalPatchReward, s: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The region term on a malign map ``s`` [N, H, W]: ``masks`` [N, H, W] is 1 inside each image's box
    (soft after augmentation), 0 elsewhere and for images without one; ``labels`` 1 = benign.

    A position's benign logit is ``bias − s_p`` (what an image scoring s_p everywhere gets). Inside a box
    the target is malign; all of a benign image, and a boxed image beyond ``REACH`` of its box, benign; a
    malign image without a box adds nothing. Each side is its own mean (BCE), so a box's few positions
    weigh as much as all the benign ones."""
    logit = member.bias - s
    boxed = masks.flatten(1).amax(1) > 0
    near = F.max_pool2d(masks[:, None], 2 * REACH + 1, stride=1, padding=REACH)[:, 0]
    inside = masks * boxed[:, None, None]
    outside = torch.where(labels[:, None, None] > 0.5, torch.ones_like(masks), (1 - near) * boxed[:, None, None])
    loss = logit.new_zeros(())
    if inside.sum() > 0:
        loss = loss + (F.softplus(logit) * inside).sum() / inside.sum()  # −log(1 − σ(l)): malign
    if outside.sum() > 0:
        loss = loss + (F.softplus(-logit) * outside).sum() / outside.sum()  # −log σ(l): benign
    return PATCH_WEIGHT * loss


def scored_with_region(member: LocalPatchReward, x: torch.Tensor, t, masks: torch.Tensor, labels: torch.Tensor):
    """(benign logits, region term) from one pass: the map, its pooled logit and ``patch_loss`` on it."""
    s = member.malign_map(x, t)
    return member.pool(s), patch_loss(member, s, masks, labels)


def region_masks(boxes, labels: np.ndarray, image_hw: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Each label's box (checked) as a [N, *size] mask of the reward's input (a latent grid is smaller)."""
    m = torch.from_numpy(box_masks(check_boxes(boxes, labels, *image_hw), *image_hw))
    return m if tuple(m.shape[1:]) == tuple(size) else F.interpolate(m[:, None], size=tuple(size), mode="area")[:, 0]


def pasted_marks(images: np.ndarray, labels: np.ndarray, boxes: list, rng: np.random.Generator, paste: int = PASTE):
    """(images, labels, boxes) with ``paste`` copies of every boxed malign image's box pasted onto benign
    images (distinct ones, as many as there are) appended, each labelled malign with that box."""
    boxed = [i for i, (b, y) in enumerate(zip(boxes, labels)) if b is not None and y == 0]
    benign = np.where(np.asarray(labels) == 1)[0]
    n = min(len(benign), paste * len(boxed))
    if n == 0:
        return images, labels, list(boxes)
    onto, sources = rng.choice(benign, n, replace=False), [boxed[j % len(boxed)] for j in range(n)]
    new = images[onto].copy()
    for j, s in enumerate(sources):
        x0, y0, x1, y1 = boxes[s]
        new[j, y0:y1, x0:x1] = images[s, y0:y1, x0:x1]
    return (np.concatenate([images, new]), np.concatenate([labels, np.zeros(n, labels.dtype)]),
            list(boxes) + [boxes[s] for s in sources])
