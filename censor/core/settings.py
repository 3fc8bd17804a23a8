"""Every setting a person or a benchmark can choose, defined once: its default, its bounds and its help.

Two frozen, serialisable objects, ``GuidanceSettings`` (how a censored gallery is steered) and
``RewardSettings`` (how the reward is trained), are read by the CLI (``censor.cli.args`` builds its
options from the fields), the benchmarks, the studio's sliders and server checks (``STUDIO_LIMITS``),
gallery bundles and their manifests (``check``). A bundle records every field, so changing a default
never changes what an old bundle reproduces (``LEGACY`` fills fields it lacks).

The guidance defaults were chosen by the feature sweep (``python -m censor sweep``; docs/benchmarks.md,
"Faithful censoring") for all features together, never per feature.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace

from censor.core.errors import CensorError

GUIDANCE_KINDS = ("time", "universal", "manifold", "particles")
COMBINES = ("sum", "mean", "min", "mean-std")
HINGE_QUANTILES = (0.05, 0.1, 0.2, 0.5)  # the quantiles a reward's benign-score table holds
# How labels become a reward. "ensemble": K bootstrap members; "imitation": an ensemble grown over
# rounds of labelled censored galleries; "union": one model on all labels. "single" is one model on
# all labels in the studio, but ONE BOOTSTRAP MEMBER in the benchmarks (bench.censoring.train_for_method),
# so that bench rows single vs ensemble measure what the other K-1 members add.
METHODS = ("single", "union", "ensemble", "imitation")


@dataclass(frozen=True)
class Knob:
    """What a setting may be: bounds (inclusive), whole numbers, None allowed, a fixed set of choices."""

    help: str
    lo: float | None = None
    hi: float | None = None
    whole: bool = False
    optional: bool = False
    choices: tuple | None = None
    pair: bool = False  # two ordered numbers (the timestep window)

    def check(self, name: str, v, where: str = "") -> None:
        """Raise a one-line CensorError unless ``v`` is exactly what this knob allows."""
        if v is None and self.optional:
            return
        if self.choices is not None:
            if v not in self.choices:
                raise CensorError(f"{where}{name} must be one of {', '.join(map(str, self.choices))}, got {v!r}")
            return
        if self.pair:
            if not isinstance(v, (list, tuple)) or len(v) != 2 or any(not _number(x, True) for x in v) \
                    or not self.lo <= v[0] <= v[1] <= self.hi:
                raise CensorError(f"{where}{name} must be two ordered whole numbers in [{self.lo}, {self.hi}], "
                                  f"got {v!r}")
            return
        if isinstance(self.lo, bool):
            if not isinstance(v, bool):
                raise CensorError(f"{where}{name} must be true or false, got {v!r}")
            return
        if not _number(v, self.whole) or not self.lo <= v <= self.hi:
            raise CensorError(f"{where}{name} must be {'a whole number ' if self.whole else ''}between {self.lo} "
                              f"and {self.hi}{' or null' if self.optional else ''}, got {v!r}")

    @property
    def bounds(self) -> tuple:
        return self.lo, self.hi


def _number(v, whole: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral if whole else numbers.Real):
        return False
    return math.isfinite(v)


def knob(default, help: str, **bounds):
    return field(default=default, metadata={"knob": Knob(help, **bounds)})


FLAG = dict(lo=False, hi=True)  # a bool knob


class _Settings:
    """Shared behaviour of the settings dataclasses: dicts, checked changes, the knob table."""

    @classmethod
    def knobs(cls) -> dict[str, Knob]:
        return {f.name: f.metadata["knob"] for f in fields(cls)}

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def with_(self, **changes):
        """A copy with the given fields changed; ``None`` means "keep" (for optional CLI overrides)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def check(self, where: str = "") -> "_Settings":
        """Every field within its knob's bounds (uploads, the public studio); returns self."""
        for name, k in self.knobs().items():
            k.check(name, getattr(self, name), where)
        return self


@dataclass(frozen=True)
class GuidanceSettings(_Settings):
    """How a censored gallery is steered; every field is one knob of ``sampling.guidance.guidance_for``."""

    kind: str = knob("time", "guidance kind (universal for a reward that scores clean images)", choices=GUIDANCE_KINDS)
    weight: float = knob(16.0, "ω on the members' combination (mean: the same meaning for any K)", lo=0.0, hi=50.0)
    combine: str = knob("mean", "how the members' log P(benign) combine", choices=COMBINES)
    threshold: float | None = knob(None, "hinge relative to the reward's prior: no push for images scored above "
                                   "τ = threshold × prior ('none': off)", lo=1e-6, hi=1.0, optional=True)
    spread: float = knob(1.0, "λ of combine mean-std", lo=0.0, hi=10.0)
    max_ratio: float | None = knob(None, "cap on |guidance shift| / |ε| per image ('none': off)", lo=1e-6, hi=10.0,
                                   optional=True)
    backward_steps: int = knob(0, "backward guidance: Adam steps on x̂0 per guided step", lo=0, hi=20, whole=True)
    backward_lr: float = knob(0.01, "backward guidance: Adam learning rate", lo=0.0, hi=1.0)
    recurrence: int = knob(0, "re-noise and redo each guided step this many times", lo=0, hi=4, whole=True)
    window: tuple[int, int] = knob((0, 999), "guided training timesteps, inclusive", lo=0, hi=999, pair=True)
    every: int = knob(1, "time guidance: a fresh reward gradient every k-th step, reused in between", lo=1, hi=10,
                      whole=True)
    particles: int = knob(4, "particle guidance: SMC particles per image", lo=1, hi=16, whole=True)
    calibrate: bool = knob(True, "undo the training class weight α on the logits", **FLAG)
    hinge_quantile: float | None = knob(0.1, "hinge at this quantile of the reward's scores on its noised benign "
                                        "labels, per timestep (when threshold is none; 'none': off)",
                                        choices=HINGE_QUANTILES + (None,))

    def __post_init__(self):
        object.__setattr__(self, "window", tuple(self.window))

    @classmethod
    def from_dict(cls, d: dict) -> "GuidanceSettings":
        """Settings from a stored dict; missing fields keep the value they had before they existed."""
        return replace(LEGACY, **{k: v for k, v in d.items() if k in cls.knobs()})


@dataclass(frozen=True)
class RewardSettings(_Settings):
    """How labels become a reward (``rewards.training.train_reward`` and the methods around it)."""

    kind: str = knob("ddpm-encoder", "reward network (censor.rewards.architectures.REWARD_KINDS)",
                     choices=("resnet18", "half-unet", "ddpm-encoder", "local-patch"))
    method: str = knob("ensemble", "how labels become a reward", choices=METHODS)
    members: int = knob(5, "ensemble size K", lo=1, hi=8, whole=True)
    iterations: int = knob(300, "training iterations per member", lo=10, hi=2000, whole=True)
    alpha: float = knob(0.1, "benign class weight α of the BCE loss", lo=0.01, hi=1.0)


# What galleries were sampled with before these fields existed (sum over members, no hinge):
# read for stored settings that lack a field, so old bundles reproduce as they were made.
LEGACY = GuidanceSettings(combine="sum", calibrate=False, threshold=None, hinge_quantile=None)

DEFAULT_GUIDANCE = GuidanceSettings()
DEFAULT_REWARD = RewardSettings()
REWARD_KIND, MEMBERS, ALPHA, ITERATIONS = (DEFAULT_REWARD.kind, DEFAULT_REWARD.members, DEFAULT_REWARD.alpha,
                                           DEFAULT_REWARD.iterations)
STRICT_MODES = ("auto", "reject", "repaint")  # what strict does with a doubted image (sampling.repaint.resolve_strict_mode)
STEPS = 30  # DDIM steps of a studio gallery
COUNT = 32  # images in a studio gallery (the Samples tab and the censored gallery)
# A censored malign % can show a drop only from a baseline holding some malign images: under this many,
# a drop to 0 cannot be told from chance (the studio's gallery readout and rlhf compare warn).
MIN_BASELINE_MALIGN = 5
# The cost estimate of guidance (sampling/cost.py), in UNet forward passes: a backward pass costs about
# two forwards of the same network; a studio reward (half-unet, or ddpm-encoder's encoder taps) about half
# a UNet forward.
BACKWARD_COST, REWARD_FORWARD_COST = 2.0, 0.5

# Bounds of every number a person sets in the studio: the sliders show them, the server checks them.
_G, _R = GuidanceSettings.knobs(), RewardSettings.knobs()
STUDIO_LIMITS = dict(members=_R["members"].bounds, iterations=_R["iterations"].bounds, alpha=_R["alpha"].bounds,
                     weight=_G["weight"].bounds, backward=_G["backward_steps"].bounds,
                     recurrence=_G["recurrence"].bounds, steps=(5, 100), count=(1, 64), seed=(0, 2**32 - 1))
