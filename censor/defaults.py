"""The default censoring settings: one definition, read by the CLI, the benchmarks, the studio and
gallery bundles alike (a bundle records every field, so changing a default never changes what an
old bundle reproduces).

Chosen by the feature sweep (``python -m censor sweep``; docs/benchmarks.md, "Faithful censoring")
for all features together, never per feature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class GuidanceSettings:
    """How a censored gallery is steered; every field is one knob of ``guidance.build_guidance``."""

    kind: str = "time"  # time | universal | manifold | particles
    weight: float = 16.0  # ω on the combined objective (mean over members: the same meaning for any K)
    combine: str = "mean"  # sum | mean | min | mean-std over the members' log P(benign)
    threshold: float | None = None  # hinge: no push for images scored above τ = threshold × the reward's prior
    spread: float = 1.0  # λ of mean-std
    max_ratio: float | None = None  # cap on |guidance shift| / |ε| per image
    backward_steps: int = 0
    backward_lr: float = 0.01
    recurrence: int = 0
    window: tuple[int, int] = (0, 999)
    every: int = 1
    particles: int = 4  # SMC particles per image (kind "particles" only)
    calibrate: bool = True  # undo the training class weight α on the logits (guidance.calibration_offset)
    hinge_quantile: float | None = 0.1  # hinge at this quantile of the reward's scores on its benign labels, per t

    def build(self, reward):
        from .guidance import build_guidance

        return build_guidance(reward, self.kind, self.weight, self.backward_steps, self.backward_lr,
                              self.recurrence, tuple(self.window), self.every, self.combine, self.threshold,
                              self.spread, self.max_ratio, self.particles, self.calibrate, self.hinge_quantile)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["window"] = list(self.window)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GuidanceSettings":
        """Settings from a stored dict; missing fields keep the value they had before they existed."""
        known = {f.name for f in fields(cls)}
        out = replace(LEGACY, **{k: v for k, v in d.items() if k in known})
        return replace(out, window=tuple(out.window))

    def with_(self, **changes) -> "GuidanceSettings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# What galleries were sampled with before these fields existed (sum over members, no hinge):
# read for stored settings that lack a field, so old bundles reproduce as they were made.
LEGACY = GuidanceSettings(combine="sum", calibrate=False, threshold=None, hinge_quantile=None)

# The default: chosen by the sweep (see the module docstring).
DEFAULT_GUIDANCE = GuidanceSettings()

# Reward training defaults shared by the studio, the CLI and the benchmarks.
REWARD_KIND = "ddpm-encoder"
MEMBERS = 5
ALPHA = 0.1
ITERATIONS = 300
STEPS = 30
