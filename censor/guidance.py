"""Reward guidance as small composable pieces of the one sampler loop in ``sampling.py``.

Every piece maps the step's noise prediction to a new one, ``piece(ctx) -> eps``; the sampler
calls them in order. The formulas live here and only here:

- ``x0_from_eps`` / ``eps_from_x0``: x̂0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t) and its inverse;
- ``shift_eps``: ε̃ = ε - w·sqrt(1-ᾱ_t)·g, with g a gradient of Σ_k log σ(r_k) w.r.t. x_t;
- ``TimeGuidance``: g = ∇_{x_t} log r(x_t, t) (time-dependent reward, no gradient through the UNet),
  optionally recomputed only every few steps and reused in between;
- ``UniversalGuidance``: g = ∇_{x_t} log r(D(x̂0(x_t))) with the gradient through ε_θ (and through
  the decoder D of a latent model; D is the identity for pixel models);
- ``BackwardGuidance``: B Adam steps on x0 maximising log r(D(x0)), clamped to [-1, 1] for pixel
  models, then ε from x0.

Recurrence (re-noise x_{t-1} back to x_t and redo the step) and the timestep window are settings
of ``Guidance``, applied by the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import CensorError
from .rewards import eps_and_taps


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return (x - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def shift_eps(eps: torch.Tensor, grad: torch.Tensor, weight: float, ab: torch.Tensor) -> torch.Tensor:
    return eps - weight * (1 - ab).sqrt() * grad


def renoise(x_prev: torch.Tensor, ab_t: torch.Tensor, ab_prev: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Forward kernel q(x_t | x_{t'}) of the respaced schedule: the recurrence step."""
    a = ab_t / ab_prev
    z = torch.randn(x_prev.shape, generator=gen).to(x_prev.device)
    return a.sqrt() * x_prev + (1 - a).sqrt() * z


@dataclass
class StepContext:
    """What a piece sees at one denoising step."""

    unet: torch.nn.Module
    x: torch.Tensor  # x_t, no grad
    t: int  # training timestep
    ab: torch.Tensor  # ᾱ_t as a 0-d tensor
    eps: torch.Tensor | None  # current noise prediction (None before the first piece if it computes its own)
    unguided_eps: torch.Tensor | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] = lambda x0: x0  # latents -> images, differentiable
    latent: bool = False  # x lives in a latent space (no [-1, 1] clamp there)

    def t_batch(self) -> torch.Tensor:
        return torch.full((len(self.x),), int(self.t), dtype=torch.long, device=self.x.device)


def _grad_of_log_reward(reward, x_in: torch.Tensor, wrt: torch.Tensor, t) -> torch.Tensor:
    (g,) = torch.autograd.grad(reward.log_prob(x_in, t).sum(), wrt)
    return g


@dataclass
class TimeGuidance:
    """Classifier-style guidance with a time-dependent reward r(x_t, t).

    A reward that reads the diffusion UNet's own encoder (ddpm-encoder) takes its features from
    the sampler's ε_θ pass (hooks on the tapped blocks), so guidance adds only the encoder's
    backward pass instead of a second forward and backward through it.
    """

    reward: object
    weight: float
    every: int = 1  # a fresh reward gradient every `every` steps; the steps between reuse the last one
    _g: torch.Tensor | None = field(default=None, repr=False)
    _last_t: int = field(default=-1, repr=False)
    _since: int = field(default=0, repr=False)

    def __post_init__(self):
        if not self.reward.time_dependent:
            raise CensorError(f"time-dependent guidance needs a time-dependent reward; a {self.reward.kind} "
                              "reward scores clean images, so use universal guidance")
        if self.every < 1:
            raise CensorError(f"every must be >= 1, got {self.every}")

    @property
    def computes_eps(self) -> bool:
        return getattr(self.reward, "reads_unet", None) is not None

    def _reuse(self, ctx: StepContext) -> bool:
        """Whether this step may reuse the last gradient: same trajectory batch, within `every`."""
        new_batch = int(ctx.t) >= self._last_t or self._g is None or self._g.shape != ctx.x.shape
        self._last_t = int(ctx.t)
        if new_batch or self._since + 1 >= self.every:
            self._since = 0
            return False
        self._since += 1
        return True

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        if self._reuse(ctx):
            if ctx.eps is None:
                with torch.no_grad():
                    ctx.eps = ctx.unguided_eps = ctx.unet(ctx.x, ctx.t).sample
            return shift_eps(ctx.eps, self._g, self.weight, ctx.ab)
        with torch.enable_grad():
            x = ctx.x.detach().requires_grad_(True)
            if ctx.eps is None and self.reward.reads_unet is ctx.unet:
                eps, feats = eps_and_taps(ctx.unet, x, ctx.t)
                g, = torch.autograd.grad(F.logsigmoid(self.reward.logits_from_features(feats)).sum(), x)
                ctx.unguided_eps = eps = eps.detach()
            else:
                if ctx.eps is None:  # a reward on another model's encoder: no pass to share
                    with torch.no_grad():
                        ctx.eps = ctx.unguided_eps = ctx.unet(ctx.x, ctx.t).sample
                eps = ctx.eps
                g = _grad_of_log_reward(self.reward, x, x, ctx.t_batch())
        self._g = g
        return shift_eps(eps, g, self.weight, ctx.ab)


@dataclass
class UniversalGuidance:
    """Forward universal guidance: the reward judges x̂0, the gradient flows back through ε_θ."""

    reward: object
    weight: float
    computes_eps = True

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        with torch.enable_grad():
            x = ctx.x.detach().requires_grad_(True)
            eps = ctx.unet(x, ctx.t).sample
            x0 = x0_from_eps(x, eps, ctx.ab)
            zeros = torch.zeros(len(x), dtype=torch.long, device=x.device)
            g = _grad_of_log_reward(self.reward, ctx.decode(x0), x, zeros)
        ctx.unguided_eps = eps.detach()
        return shift_eps(eps.detach(), g, self.weight, ctx.ab)


@dataclass
class BackwardGuidance:
    """Backward universal guidance: optimise x̂0 directly for B Adam steps, then recompute ε."""

    reward: object
    steps: int = 5
    lr: float = 0.01
    computes_eps = False

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        zeros = torch.zeros(len(ctx.x), dtype=torch.long, device=ctx.x.device)
        with torch.enable_grad():
            x0 = x0_from_eps(ctx.x, ctx.eps, ctx.ab)
            x0 = (x0 if ctx.latent else x0.clamp(-1, 1)).detach().requires_grad_(True)
            opt = torch.optim.Adam([x0], lr=self.lr)
            for _ in range(self.steps):
                loss = -self.reward.log_prob(ctx.decode(x0), zeros).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if not ctx.latent:
                    with torch.no_grad():
                        x0.clamp_(-1, 1)
        return eps_from_x0(ctx.x, x0.detach(), ctx.ab)


@dataclass
class Guidance:
    """The pieces to apply in order, where (timestep window) and how often (recurrence)."""

    pieces: list
    window: tuple[int, int] = (0, 999)  # inclusive range of training timesteps that are guided
    recurrence: int = 0  # extra re-noise-and-redo passes per guided step
    stats: dict = field(default_factory=lambda: {"guided_steps": 0, "nonfinite_fallbacks": 0})

    def __post_init__(self):
        if not self.pieces:
            raise CensorError("guidance needs at least one piece")
        if self.recurrence < 0 or self.window[0] > self.window[1]:
            raise CensorError("recurrence must be >= 0 and the window (start, end) ordered")

    def active(self, t: int) -> bool:
        return self.window[0] <= int(t) <= self.window[1]

    @property
    def computes_eps(self) -> bool:
        return bool(getattr(self.pieces[0], "computes_eps", False))

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        if ctx.eps is not None:
            ctx.unguided_eps = ctx.eps
        for piece in self.pieces:
            ctx.eps = piece(ctx)
        eps = ctx.eps
        # Too large a weight makes gradients overflow: fall back to the unguided prediction for
        # those images rather than hand the scheduler NaNs (which would blank the whole gallery).
        bad = ~torch.isfinite(eps).flatten(1).all(1)
        if bad.any():
            self.stats["nonfinite_fallbacks"] += int(bad.sum())
            eps = torch.where(bad[:, None, None, None], ctx.unguided_eps, eps)
        self.stats["guided_steps"] += 1
        return eps


def build_guidance(reward, kind: str, weight: float, backward_steps: int = 0, backward_lr: float = 0.01,
                   recurrence: int = 0, window: tuple[int, int] = (0, 999), every: int = 1) -> Guidance:
    """The usual composition: time or universal guidance, then optional backward guidance.

    ``every`` > 1 (time guidance only) computes the reward gradient on every ``every``-th step and
    reuses it in between: the cheap way to bring guided sampling close to unguided cost.
    """
    if every != 1 and kind != "time":
        raise CensorError("reusing gradients (every > 1) is only supported for time-dependent guidance")
    first = TimeGuidance(reward, weight, every) if kind == "time" else UniversalGuidance(reward, weight)
    pieces = [first] + ([BackwardGuidance(reward, backward_steps, backward_lr)] if backward_steps else [])
    return Guidance(pieces, window=tuple(window), recurrence=recurrence)
