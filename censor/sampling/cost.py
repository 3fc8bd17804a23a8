"""What a guidance setting costs before it runs: network evaluations per image, counted the way the
sampler loop (``loop.py``) and the pieces (``pieces.py``) make them, and that count as a multiple of
the unguided sampler's time, so the studio can say why backward steps or recurrence are slow.

The counts are exact (the tests hold them to a counted run); turning them into time takes two
rough constants (``core.settings``): a backward pass ≈ ``BACKWARD_COST`` forwards, a reward forward ≈
``REWARD_FORWARD_COST`` UNet forwards. A latent model's decoder passes are not counted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from censor.core.settings import BACKWARD_COST, REWARD_FORWARD_COST, GuidanceSettings
from censor.diffusion.models import EMBEDDED_SCHEDULER_CONFIG
from censor.diffusion.steps import make_scheduler


@dataclass(frozen=True)
class Evaluations:
    """Network passes one image takes over a whole sampling run."""

    unet_forwards: int
    unet_backwards: int = 0
    reward_forwards: int = 0
    reward_backwards: int = 0

    def cost(self, reward_cost: float = REWARD_FORWARD_COST, backward_cost: float = BACKWARD_COST) -> float:
        """In UNet forward passes."""
        return (self.unet_forwards + backward_cost * self.unet_backwards
                + reward_cost * (self.reward_forwards + backward_cost * self.reward_backwards))


def evaluations(settings: GuidanceSettings, steps: int, timesteps: Sequence[int] | None = None,
                shares_unet: bool = False) -> Evaluations:
    """The passes of ``sample(..., steps, guidance=guidance_for(reward, settings))`` per image.

    ``timesteps``: the sampler's (default: the embedded scheduler respaced to ``steps``), which the
    window selects from; ``shares_unet``: the reward reads the sampler's own UNet encoder (ddpm-encoder),
    so time guidance and particles take the reward's forward from the ε_θ pass and time guidance's
    backward runs through that encoder (counted as a reward backward). ω = 0 counts as unguided: the
    studio passes no guidance then."""
    s = settings
    if timesteps is None:
        timesteps = [int(t) for t in make_scheduler(EMBEDDED_SCHEDULER_CONFIG, "ddim", steps).timesteps]
    if s.weight == 0:
        return Evaluations(len(timesteps))
    if s.kind == "particles":  # every step, P particles, no gradient, no window (loop.py); then the
        n = len(timesteps) * s.particles  # final weight r(x_0) of every particle (ParticleResampling.choose)
        return Evaluations(n, reward_forwards=(0 if shares_unet else n) + s.particles)
    uf = ub = rf = rb = 0
    carry = None  # time guidance's reused gradient: (timestep, steps since it was fresh)
    for t in timesteps:
        if not s.window[0] <= t <= s.window[1]:
            uf += 1
            continue
        for _ in range(1 + s.recurrence):
            uf += 1  # ε_θ(x_t, t), with or without a graph
            if s.kind == "time":
                if carry is not None and t < carry[0] and carry[1] + 1 < s.every:  # TimeGuidance._reuses
                    carry = (t, carry[1] + 1)
                    continue
                carry = (t, 0)
                rf, rb = rf + (0 if shares_unet else 1), rb + 1
            elif s.kind == "universal":  # the gradient of r(x̂0) flows back through ε_θ
                ub, rf, rb = ub + 1, rf + 1, rb + 1
            else:  # manifold: a gradient of r at x̂0, none through the UNet
                rf, rb = rf + 1, rb + 1
            rf, rb = rf + s.backward_steps, rb + s.backward_steps  # Adam steps on x̂0
    return Evaluations(uf, ub, rf, rb)


def relative_cost(settings: GuidanceSettings, steps: int, timesteps: Sequence[int] | None = None,
                  shares_unet: bool = False, reward_cost: float = REWARD_FORWARD_COST) -> float:
    """Sampling time with ``settings`` over the unguided sampler's (one UNet forward a step), estimated."""
    n = len(timesteps) if timesteps is not None else steps
    return evaluations(settings, steps, timesteps, shares_unet).cost(reward_cost) / n


def _kind_text(s: GuidanceSettings) -> str:
    if s.kind == "particles":
        return f"particles: {s.particles} samples per image, reweighted and resampled by the reward (no gradient)"
    if s.kind == "time":
        return ("time guidance: a reward gradient at each guided step" if s.every == 1 else
                f"time guidance: a fresh reward gradient every {s.every} steps, reused in between")
    if s.kind == "universal":
        return "universal guidance: the reward's gradient through the denoiser at each guided step"
    return "manifold guidance: a reward gradient on the predicted clean image at each guided step"


def cost_readout(settings: GuidanceSettings, steps: int, shares_unet: bool = False) -> str:
    """What the studio shows before a render: "≈ 9.5× the unguided time (…)", naming what each costly
    knob does, so a slow setting is a choice and not a surprise."""
    if settings.weight == 0:
        return "≈ 1× the unguided time (ω = 0: no guidance)"
    s, why = settings, [_kind_text(settings)]
    if s.kind != "particles" and s.backward_steps:
        why.append(f"backward steps: {s.backward_steps} extra optimisation steps on the predicted clean image at each "
                   "of the window's steps, sharpening the push where one step is not enough")
    if s.kind != "particles" and s.recurrence:
        why.append(f"recurrence: re-noises and repeats each guided step {s.recurrence} more time"
                   f"{'' if s.recurrence == 1 else 's'}, letting guidance correct itself")
    return f"≈ {relative_cost(s, steps, shares_unet=shares_unet):.1f}× the unguided time ({'; '.join(why)})"
