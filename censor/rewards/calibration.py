"""The reward's calibration: its prior, the class-weight offset and its per-timestep benign-score hinge."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from censor.core.errors import CensorError


def _info(reward) -> dict:
    return getattr(reward, "info", None) or {}


def reward_prior(reward) -> float:
    """The share of benign labels a reward was trained on (``info``), else 1.

    A calibrated time-dependent r(x_t, t) tends to this prior as t → T (pure noise says nothing),
    so a hinge relative to it means the same on every feature: push only images the reward now
    doubts more than it doubts pure noise.
    """
    info = _info(reward)
    n, b = info.get("labels"), info.get("benign_labels")
    return b / n if isinstance(n, int) and isinstance(b, int) and n > 0 and b > 0 else 1.0


def hinge_schedule(reward, quantile: float) -> tuple | None:
    """((t, ...), (τ_t, ...)): the ``quantile`` of the reward's own calibrated score on noised copies
    of its benign labels at each timestep (``reward_training.benign_score_table``, kept in ``info``),
    or None for a reward without the table. Hinged at τ_t, guidance leaves alone every image the
    reward scores as high as most known-benign images at the same noise level, on any feature."""
    table = _info(reward).get("benign_scores")
    if not table:
        return None
    try:  # the table comes from a reward.json, which may be an upload: held to its exact shape
        qs, ts, rows = list(table["quantiles"]), [int(t) for t in table["t"]], table["scores"]
        k = qs.index(quantile)
        taus = [float(row[k]) for row in rows]
        if len(taus) != len(ts) or ts != sorted(ts) or not all(math.isfinite(v) for v in taus):
            raise ValueError
    except (KeyError, TypeError, ValueError, IndexError):
        raise CensorError(f"the reward's benign-score table has no valid {quantile} quantile") from None
    return tuple(ts), tuple(min(1.0, max(1e-6, v)) for v in taus)


def calibration_offset(reward) -> float:
    """−log α for a reward trained with class weight α (``info["alpha"]``), else 0: see ``Objective``."""
    alpha = _info(reward).get("alpha")
    return -math.log(alpha) if isinstance(alpha, (int, float)) and alpha > 0 else 0.0


def member_log_probs(reward, x: torch.Tensor, t, offset: float = 0.0) -> torch.Tensor:
    """log σ(logit + offset) per member [K, N]; a reward with only a combined ``log_prob`` is one member."""
    if hasattr(reward, "logits"):
        return F.logsigmoid(reward.logits(x, t) + offset)
    return reward.log_prob(x, t)[None]


def calibrated_score(reward, x: torch.Tensor, t) -> torch.Tensor:
    """The reward's calibrated P(benign) [N]: the geometric mean over members of σ(logit − log α),
    the r of the p_data·r target (what the drift figure weights by and the hinge table holds)."""
    return member_log_probs(reward, x, t, calibration_offset(reward)).mean(0).exp()
