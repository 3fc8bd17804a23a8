"""The automatic strength: the largest push a reward earns, chosen without the oracle.

A reward trained on ~100 labels is neither calibrated nor near 1 on every benign image, so the
same ω can be too weak for one reward and collapse the gallery for another. The studio therefore
climbs a ladder of weights on a small probe batch (fixed seeds, few steps) and, at each rung,
reads two things it can know without an oracle: the reward's own predicted malign rate on the
probe (images it still doubts: calibrated P(benign) below the hinge at t = 0, where guidance stops
pushing), and the probe's drift from the reward-weighted pool (``fidelity.DriftMeter``). It stops at
the first rung where the reward doubts no more of the probe than of its own benign labels (the
hinge quantile q, plus one image), or one rung before the probe drifts beyond chance, whichever comes
first. The user can always override the pick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from censor.core.data import to_model_range, to_uint8
from censor.core.progress import Progress, part
from censor.core.settings import GuidanceSettings
from censor.eval.drift import DriftMeter
from censor.rewards.calibration import calibrated_score
from censor.rewards.ensemble import clean_input
from censor.sampling.guidance import guidance_for
from censor.sampling.loop import sample, seeds_for
from censor.sampling.objective import make_objective

LADDER = (1.0, 2.0)  # multiples of the default weight, climbed in order (pilot: 16 → 32 helps weak rewards)
PROBE_N = 32
PROBE_STEPS = 12
SCORE_BATCH = 64  # images per reward pass when scoring the pool: well under a second between progress calls
PROBE_SEED = 77_777  # probe seeds are disjoint from galleries (seeds_for(n, seed) with small seeds)


@torch.no_grad()
def reward_benign(reward, model, images: np.ndarray, batch_size: int = SCORE_BATCH,
                  progress: Progress | None = None) -> np.ndarray:
    """``guidance.calibrated_score`` at t = 0 on uint8 images, in batches (``progress`` hears after each)."""
    out = []
    chunks = np.array_split(np.asarray(images), max(1, -(-len(images) // batch_size)))
    for i, chunk in enumerate(chunks):
        if progress is not None and i:
            progress(i / len(chunks))
        x = clean_input(reward, model, to_model_range(chunk))
        t = torch.zeros(len(x), dtype=torch.long) if reward.time_dependent else None
        out.append(calibrated_score(reward, x, t).float().numpy())
    return np.concatenate(out)


def doubt_threshold(reward, settings: GuidanceSettings) -> float:
    """Below which calibrated P(benign) the reward still doubts a finished image: the hinge at t = 0
    when the settings hinge (guidance stops pushing above it), else 0.5."""
    objective = make_objective(reward, settings.combine, settings.spread, settings.threshold, settings.calibrate,
                               settings.hinge_quantile).at(0)
    return objective.threshold if objective.threshold is not None else 0.5


@dataclass
class StrengthChoice:
    weight: float
    reason: str
    trace: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(weight=self.weight, reason=self.reason, trace=self.trace)


def auto_strength(model, reward, meter: DriftMeter, pool_weights: np.ndarray, settings: GuidanceSettings,
                  probe_n: int = PROBE_N, probe_steps: int = PROBE_STEPS, ladder=LADDER,
                  progress: Progress | None = None) -> StrengthChoice:
    """Climb ``ladder`` × ``settings.weight``; see the module docstring for the stopping rule."""
    seeds = seeds_for(probe_n, PROBE_SEED)
    doubt = doubt_threshold(reward, settings)
    # by construction a share q of the reward's benign labels sits below the hinge: a probe doubted no
    # more than that (one image of slack) holds nothing the reward can still tell is malign
    allowed = (settings.hinge_quantile or 0.0) + 1.0 / probe_n
    trace, previous = [], None
    for i, factor in enumerate(ladder):
        w = float(settings.weight * factor)
        g = guidance_for(reward, settings.with_(weight=w))
        sub = part(progress, i / len(ladder), 1 / len(ladder), f"automatic strength: probe at ω {w:g}")
        probe = to_uint8(sample(model, seeds, steps=probe_steps, guidance=g, progress=sub))
        predicted = float((reward_benign(reward, model, probe) < doubt).mean())
        drift = meter.measure(probe, pool_weights)
        trace.append(dict(weight=w, predicted_malign=predicted, **drift.as_dict()))
        if drift.drifted:
            if previous is None:
                return StrengthChoice(w, f"the probe drifts even at ω {w:g}: the lowest rung", trace)
            return StrengthChoice(previous, f"ω {w:g} drifts beyond chance: one rung lower", trace)
        if predicted <= allowed:
            return StrengthChoice(w, f"at ω {w:g} the reward doubts {100 * predicted:.0f}% of the probe, no more than "
                                     f"it doubts of its own benign labels ({100 * allowed:.0f}%)", trace)
        previous = w
    return StrengthChoice(previous, "the reward still doubts some probe images at the top rung", trace)
