"""What guidance raises: the members' calibrated log P(benign), combined and hinged."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from censor.core.errors import CensorError
from censor.core.settings import COMBINES
from censor.core.settings import DEFAULT_GUIDANCE as _D
from censor.rewards.calibration import calibration_offset, hinge_schedule, member_log_probs, reward_prior

FALLBACK_THRESHOLD = 0.9  # hinge × prior for rewards without a benign-score table


@dataclass(frozen=True)
class Objective:
    """log of what guidance raises, per image, from the members' logits [K, N].

    ``offset`` is added to every logit first: ``calibration_offset`` undoes the class weight α of
    reward training (BCE with pos_weight α scales the benign odds by α, so σ(logit) sits near 0.5
    on images the reward is sure are benign and guidance keeps pushing them; σ(logit − log α) is
    the reward's actual P(benign), near 1 there, so they are left alone as p_data·r asks).
    ``sum`` multiplies the members' probabilities (the weight then grows with K: ω 4 on five members
    pushes like ω 20 on one); ``mean`` is their geometric mean, so ω means the same for any K;
    ``min`` and ``mean-std`` (λ = ``spread``) trust an image only as far as the most doubtful members.
    ``threshold`` τ hinges the result at log τ: images scored above τ get no push at all.
    """

    combine: str = "mean"
    spread: float = 1.0
    threshold: float | None = None
    offset: float = 0.0
    schedule: tuple | None = None  # ((t, ...), (τ_t, ...)): a hinge that depends on the timestep

    def at(self, t) -> "Objective":
        """This objective at timestep t: the scheduled hinge τ_t interpolated, else itself."""
        if self.schedule is None:
            return self
        ts, taus = self.schedule
        return replace(self, threshold=float(np.interp(float(t), ts, taus)), schedule=None)

    def __post_init__(self):
        if self.combine not in COMBINES:
            raise CensorError(f"unknown ensemble combination {self.combine!r}; use one of {', '.join(COMBINES)}")
        if self.threshold is not None and not 0 < self.threshold <= 1 and self.schedule is None:
            raise CensorError(f"the hinge threshold τ must be in (0, 1], got {self.threshold}")
        if self.spread < 0:
            raise CensorError(f"the spread penalty λ must be >= 0, got {self.spread}")

    def __call__(self, member_log_probs: torch.Tensor) -> torch.Tensor:
        lp = member_log_probs
        if self.combine == "sum":
            s = lp.sum(0)
        elif self.combine == "mean":
            s = lp.mean(0)
        elif self.combine == "min":
            s = lp.min(0).values
        else:
            s = lp.mean(0) - self.spread * (lp.std(0, unbiased=False) if len(lp) > 1 else 0 * lp[0])
        if self.threshold is not None:
            s = torch.clamp(s - math.log(self.threshold), max=0.0)
        return s

    def from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self(F.logsigmoid(logits + self.offset))

    def of(self, reward, x: torch.Tensor, t) -> torch.Tensor:
        return self(member_log_probs(reward, x, t, self.offset))


def make_objective(reward, combine: str = _D.combine, spread: float = _D.spread, threshold: float | None = _D.threshold,
                   calibrate: bool = _D.calibrate, hinge_quantile: float | None = _D.hinge_quantile) -> Objective:
    """The objective for this reward: ``threshold`` is relative to the reward's prior
    (τ = threshold × share of benign labels); else ``hinge_quantile`` hinges at τ_t from the
    reward's benign-score table (``hinge_schedule``), or, for a reward trained before the table
    existed, at the nearest prior-relative meaning (``FALLBACK_THRESHOLD``)."""
    tau, schedule = None, None
    if threshold is not None:
        tau = min(1.0, threshold * reward_prior(reward))
    elif hinge_quantile is not None:
        schedule = hinge_schedule(reward, hinge_quantile)
        if schedule is None:
            tau = min(1.0, FALLBACK_THRESHOLD * reward_prior(reward))
    return Objective(combine, spread, tau, calibration_offset(reward) if calibrate else 0.0, schedule)

