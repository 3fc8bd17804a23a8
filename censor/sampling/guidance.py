"""Reward guidance for the one sampler loop (``sampling/loop.py``): the formula index of the sampler.

A step is an immutable ``StepContext`` (x_t, t, ᾱ_t, the current and the unguided ε, decode,
latent); every piece is a pure function of it, ``piece.advance(step, carry) -> (step', carry')``,
and ``Guidance.apply`` runs them in order. Per-batch state (time guidance's reused gradient, the
SMC weights) is carried by the loop, fresh for every batch. Each formula has one home:

``diffusion/steps.py`` (the step itself, shared with the RLHF rollouts):
- ``x0_from_eps`` / ``eps_from_x0``: x̂0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t) and its inverse;
- ``step_alphas``: ᾱ_t and ᾱ_t' of the respaced step t -> t' = t - T // S (diffusers' rule);
- ``ddim_step``: σ_t = η·sqrt((1-ᾱ_t')/(1-ᾱ_t)·(1-ᾱ_t/ᾱ_t')),
  μ = sqrt(ᾱ_t') x̂0 + sqrt(1-ᾱ_t'-σ_t²) ε: the rollouts' Gaussian policy. The sampler steps with
  diffusers' DDIM/DDPM schedulers, which ``make_scheduler`` respaces (the one factory, also the
  rollouts'); the tests hold ``ddim_step`` to diffusers' samples;
- ``renoise``: the forward kernel q(x_t | x_t'), the recurrence step.

``sampling/objective.py``:
- ``Objective``: what is pushed up, from the members' log σ(r_k): their sum (the reference code's
  product of probabilities), mean (ω = 1 then samples p_data·r for a calibrated r(x_t, t)), minimum
  or mean − λ·std (conservative: every member must agree), on logits calibrated for the training
  class weight α (``calibration_offset``), optionally hinged at τ:
  log min(1, r/τ), zero gradient for images the reward already calls benign.

``sampling/pieces.py``:
- ``shift_eps``: ε̃ = ε - w·sqrt(1-ᾱ_t)·g, with g the gradient of the objective w.r.t. x_t;
- ``limit_shift``: per-image cap on |w·sqrt(1-ᾱ_t)·g| relative to |ε| (FreeDoM-style step size);
- ``TimeGuidance``: g = ∇_{x_t} log r(x_t, t) (time-dependent reward, no gradient through the UNet),
  optionally recomputed only every few steps and reused in between (its carry, ``Reused``);
- ``UniversalGuidance``: g = ∇_{x_t} log r(D(x̂0(x_t))) with the gradient through ε_θ (and through
  the decoder D of a latent model; D is the identity for pixel models);
- ``BackwardGuidance``: B Adam steps on x0 maximising log r(D(x0)), clamped to [-1, 1] for pixel
  models, then ε from x0;
- ``ManifoldGuidance`` (MPGD-style): one step x̂0' = x̂0 + w·(1-ᾱ_t)·∇_{x0} log r(x̂0, 0), no
  backprop through the UNet, then ε from the moved x̂0 (the sampler re-noises it on the manifold's path).

``sampling/particles.py``:
- ``ParticleResampling`` (sequential Monte Carlo, twisted by r(x_t, t)): no gradient at all; the
  sampler runs P particles per image, reweights them by r_t(x_t) / r_{t+1}(x_{t+1}) and resamples
  (systematically) when the effective sample size drops; exact for p_data·r as P grows.

This module: ``Guidance`` (pieces, timestep window, recurrence: re-noise x_{t-1} back to x_t and
redo the step, applied by the sampler; the NaN fallback to the unguided ε) and ``guidance_for``,
which builds one from ``GuidanceSettings``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from censor.core.errors import CensorError
from censor.core.settings import DEFAULT_GUIDANCE, GUIDANCE_KINDS, GuidanceSettings
from censor.sampling.objective import make_objective
from censor.sampling.particles import ParticleResampling
from censor.sampling.pieces import BackwardGuidance, ManifoldGuidance, StepContext, TimeGuidance, UniversalGuidance


@dataclass
class Guidance:
    """The pieces to apply in order, where (timestep window) and how often (recurrence); or
    ``particles``, sequential Monte Carlo instead of gradient pieces."""

    pieces: list
    window: tuple[int, int] = (0, 999)  # inclusive range of training timesteps that are guided
    recurrence: int = 0  # extra re-noise-and-redo passes per guided step
    particles: ParticleResampling | None = None
    stats: dict = field(default_factory=lambda: {"guided_steps": 0, "nonfinite_fallbacks": 0})

    def __post_init__(self):
        if not self.pieces and self.particles is None:
            raise CensorError("guidance needs at least one piece")
        if self.recurrence < 0 or self.window[0] > self.window[1]:
            raise CensorError("recurrence must be >= 0 and the window (start, end) ordered")
        if self.particles is not None and (self.pieces or self.recurrence):
            raise CensorError("particle resampling runs on the unguided sampler: no gradient pieces or recurrence")

    def active(self, t: int) -> bool:
        return bool(self.pieces) and self.window[0] <= int(t) <= self.window[1]

    @property
    def computes_eps(self) -> bool:
        return bool(getattr(self.pieces[0], "computes_eps", False))

    def start(self) -> tuple:
        """Fresh per-batch carries, one per piece: the sampler loop calls this for every batch."""
        return (None,) * len(self.pieces)

    def apply(self, step: StepContext, carries: tuple) -> tuple[torch.Tensor, tuple]:
        """The guided ε of one step and the pieces' carries for the next step of the batch."""
        if step.eps is not None:
            step = step.with_eps(step.eps, step.eps)
        out = []
        for piece, carry in zip(self.pieces, carries):
            step, carry = piece.advance(step, carry)
            out.append(carry)
        eps = step.eps
        # Too large a weight makes gradients overflow: fall back to the unguided prediction for
        # those images rather than hand the scheduler NaNs (which would blank the whole gallery).
        bad = ~torch.isfinite(eps).flatten(1).all(1)
        if bad.any():
            self.stats["nonfinite_fallbacks"] += int(bad.sum())
            eps = torch.where(bad[:, None, None, None], step.unguided_eps, eps)
        self.stats["guided_steps"] += 1
        return eps, tuple(out)


def guidance_for(reward, settings: GuidanceSettings = DEFAULT_GUIDANCE) -> Guidance:
    """The usual composition: one first piece (time, universal, manifold) and optional backward
    guidance; or ``particles``: SMC resampling with P particles per image. The hinge (``threshold``
    or ``hinge_quantile``) is resolved for the reward by ``make_objective``.

    ``every`` > 1 (time guidance only) computes the reward gradient on every ``every``-th step and
    reuses it in between: the cheap way to bring guided sampling close to unguided cost.
    """
    s = settings
    if s.kind not in GUIDANCE_KINDS:
        raise CensorError(f"unknown guidance {s.kind!r}; use one of {', '.join(GUIDANCE_KINDS)}")
    if s.every != 1 and s.kind != "time":
        raise CensorError("reusing gradients (every > 1) is only supported for time-dependent guidance")
    objective = make_objective(reward, s.combine, s.spread, s.threshold, s.calibrate, s.hinge_quantile)
    if s.kind == "particles":
        return Guidance([], window=s.window, particles=ParticleResampling(reward, s.particles, s.weight, objective))
    if s.kind == "time":
        first = TimeGuidance(reward, s.weight, s.every, objective, s.max_ratio)
    elif s.kind == "universal":
        first = UniversalGuidance(reward, s.weight, objective, s.max_ratio)
    else:
        first = ManifoldGuidance(reward, s.weight, objective, s.max_ratio)
    backward = [BackwardGuidance(reward, s.backward_steps, s.backward_lr, objective)] if s.backward_steps else []
    return Guidance([first] + backward, window=s.window, recurrence=s.recurrence)


def build_guidance(reward, kind: str, weight: float, **knobs) -> Guidance:
    """``guidance_for`` with ``DEFAULT_GUIDANCE`` changed in the given fields (None included)."""
    return guidance_for(reward, replace(DEFAULT_GUIDANCE, kind=kind, weight=weight, **knobs))
