"""Reward guidance as small composable pieces of the one sampler loop in ``sampling.py``.

Every piece maps the step's noise prediction to a new one, ``piece(ctx) -> eps``; the sampler
calls them in order. The formulas live here and only here:

- ``x0_from_eps`` / ``eps_from_x0``: x̂0 = (x_t - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t) and its inverse;
- ``shift_eps``: ε̃ = ε - w·sqrt(1-ᾱ_t)·g, with g the gradient of the objective w.r.t. x_t;
- ``Objective``: what is pushed up, from the members' log σ(r_k): their sum (the reference code's
  product of probabilities), mean (ω = 1 then samples p_data·r for a calibrated r(x_t, t)), minimum
  or mean − λ·std (conservative: every member must agree), on logits calibrated for the training
  class weight α (``calibration_offset``), optionally hinged at τ:
  log min(1, r/τ), zero gradient for images the reward already calls benign;
- ``limit_shift``: per-image cap on |w·sqrt(1-ᾱ_t)·g| relative to |ε| (FreeDoM-style step size);
- ``TimeGuidance``: g = ∇_{x_t} log r(x_t, t) (time-dependent reward, no gradient through the UNet),
  optionally recomputed only every few steps and reused in between;
- ``UniversalGuidance``: g = ∇_{x_t} log r(D(x̂0(x_t))) with the gradient through ε_θ (and through
  the decoder D of a latent model; D is the identity for pixel models);
- ``BackwardGuidance``: B Adam steps on x0 maximising log r(D(x0)), clamped to [-1, 1] for pixel
  models, then ε from x0;
- ``ManifoldGuidance`` (MPGD-style): one step on x̂0 along ∇_{x0} log r(x̂0, 0), no backprop
  through the UNet, then ε from the moved x̂0 (the sampler re-noises it on the manifold's path);
- ``ParticleResampling`` (sequential Monte Carlo, twisted by r(x_t, t)): no gradient at all; the
  sampler runs P particles per image, reweights them by r_t(x_t) / r_{t+1}(x_{t+1}) and resamples
  when the effective sample size drops; exact for p_data·r as P grows.

Recurrence (re-noise x_{t-1} back to x_t and redo the step) and the timestep window are settings
of ``Guidance``, applied by the sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .defaults import DEFAULT_GUIDANCE as _D
from .errors import CensorError
from .rewards import eps_and_taps


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return (x - (1 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(x: torch.Tensor, x0: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def limit_shift(eps: torch.Tensor, shift: torch.Tensor, max_ratio: float | None) -> torch.Tensor:
    """Scale each image's guidance shift so |shift| <= max_ratio·|ε| (None: no cap)."""
    if max_ratio is None:
        return shift
    norm = shift.flatten(1).norm(dim=1).clamp_min(1e-12)
    cap = max_ratio * eps.flatten(1).norm(dim=1)
    return shift * (cap / norm).clamp(max=1.0).reshape(-1, *([1] * (eps.ndim - 1)))


def shift_eps(eps: torch.Tensor, grad: torch.Tensor, weight: float, ab: torch.Tensor,
              max_ratio: float | None = None) -> torch.Tensor:
    """ε̃ = ε − w·sqrt(1−ᾱ_t)·g, the shift capped per image by ``limit_shift``."""
    return eps - limit_shift(eps, weight * (1 - ab).sqrt() * grad, max_ratio)


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


COMBINES = ("sum", "mean", "min", "mean-std")
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
        if hasattr(reward, "logits"):
            return self.from_logits(reward.logits(x, t))
        return self(reward.log_prob(x, t)[None])  # a reward with only a combined log_prob is one member


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


def calibrated_score(reward, x: torch.Tensor, t) -> torch.Tensor:
    """The reward's calibrated P(benign) [N]: the geometric mean over members of σ(logit − log α),
    the r of the p_data·r target (what the drift figure weights by and the hinge table holds)."""
    return Objective("mean", offset=calibration_offset(reward)).of(reward, x, t).exp()


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


def _from_shared_pass(reward, ctx: "StepContext", x: torch.Tensor, objective: Objective):
    """(ε, objective [N]) from one UNet pass with the reward's taps hooked, when the reward reads the
    sampler's own UNet (ddpm-encoder); None when it reads another network."""
    unet = getattr(reward, "reads_unet", None)
    if unet is None or unet is not ctx.unet:
        return None
    eps, feats = eps_and_taps(ctx.unet, x, ctx.t)
    return eps, objective.at(ctx.t).from_logits(reward.logits_from_features(feats))


def _grad_of_log_reward(reward, x_in: torch.Tensor, wrt: torch.Tensor, t, objective: "Objective") -> torch.Tensor:
    (g,) = torch.autograd.grad(objective.of(reward, x_in, t).sum(), wrt)
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
    objective: Objective = field(default_factory=Objective)
    max_ratio: float | None = None  # cap on |shift| / |ε| per image (None: uncapped)
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
            return shift_eps(ctx.eps, self._g, self.weight, ctx.ab, self.max_ratio)
        with torch.enable_grad():
            x = ctx.x.detach().requires_grad_(True)
            shared = _from_shared_pass(self.reward, ctx, x, self.objective) if ctx.eps is None else None
            if shared is not None:
                eps, obj = shared
                g, = torch.autograd.grad(obj.sum(), x)
                ctx.unguided_eps = eps = eps.detach()
            else:
                if ctx.eps is None:  # a reward on another model's encoder: no pass to share
                    with torch.no_grad():
                        ctx.eps = ctx.unguided_eps = ctx.unet(ctx.x, ctx.t).sample
                eps = ctx.eps
                g = _grad_of_log_reward(self.reward, x, x, ctx.t_batch(), self.objective.at(ctx.t))
        self._g = g
        return shift_eps(eps, g, self.weight, ctx.ab, self.max_ratio)


@dataclass
class UniversalGuidance:
    """Forward universal guidance: the reward judges x̂0, the gradient flows back through ε_θ."""

    reward: object
    weight: float
    objective: Objective = field(default_factory=Objective)
    max_ratio: float | None = None
    computes_eps = True

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        with torch.enable_grad():
            x = ctx.x.detach().requires_grad_(True)
            eps = ctx.unet(x, ctx.t).sample
            x0 = x0_from_eps(x, eps, ctx.ab)
            zeros = torch.zeros(len(x), dtype=torch.long, device=x.device)
            g = _grad_of_log_reward(self.reward, ctx.decode(x0), x, zeros, self.objective.at(0))
        ctx.unguided_eps = eps.detach()
        return shift_eps(eps.detach(), g, self.weight, ctx.ab, self.max_ratio)


@dataclass
class ManifoldGuidance:
    """MPGD-style: move x̂0 = x̂0(x_t, ε) along ∇_{x0} log r(x̂0, 0) without backpropagating
    through the UNet, then take ε from the moved x̂0, so the step stays on the sampler's path.

    x̂0' = x̂0 + w·(1 − ᾱ_t)·∇ : the (1 − ᾱ_t) factor shrinks the step as the image settles, where a
    constant one would make late steps jump off the manifold.
    """

    reward: object
    weight: float
    objective: Objective = field(default_factory=Objective)
    max_ratio: float | None = None
    computes_eps = False

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        zeros = torch.zeros(len(ctx.x), dtype=torch.long, device=ctx.x.device)
        x0 = x0_from_eps(ctx.x, ctx.eps, ctx.ab)
        x0 = (x0 if ctx.latent else x0.clamp(-1, 1)).detach()
        with torch.enable_grad():
            z = x0.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.objective.at(0).of(self.reward, ctx.decode(z), zeros).sum(), z)
        moved = eps_from_x0(ctx.x, x0 + self.weight * (1 - ctx.ab) * g, ctx.ab)
        return ctx.eps + limit_shift(ctx.eps, moved - ctx.eps, self.max_ratio)


@dataclass
class BackwardGuidance:
    """Backward universal guidance: optimise x̂0 directly for B Adam steps, then recompute ε."""

    reward: object
    steps: int = 5
    lr: float = 0.01
    objective: Objective = field(default_factory=Objective)
    computes_eps = False

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        zeros = torch.zeros(len(ctx.x), dtype=torch.long, device=ctx.x.device)
        with torch.enable_grad():
            x0 = x0_from_eps(ctx.x, ctx.eps, ctx.ab)
            x0 = (x0 if ctx.latent else x0.clamp(-1, 1)).detach().requires_grad_(True)
            opt = torch.optim.Adam([x0], lr=self.lr)
            for _ in range(self.steps):
                loss = -self.objective.at(0).of(self.reward, ctx.decode(x0), zeros).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if not ctx.latent:
                    with torch.no_grad():
                        x0.clamp_(-1, 1)
        return eps_from_x0(ctx.x, x0.detach(), ctx.ab)


def systematic_resample(log_w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Indices [G, P] drawn by systematic resampling within each group of ``log_w`` [G, P].

    Equal weights give the identity, so a flat potential never reshuffles the particles.
    """
    G, P = log_w.shape
    w = torch.softmax(log_w.double(), dim=1)
    cdf = w.cumsum(1)
    cdf[:, -1] = 1.0
    u = (torch.rand(G, 1, generator=gen, dtype=torch.float64) + torch.arange(P, dtype=torch.float64)) / P
    return torch.searchsorted(cdf, u).clamp(max=P - 1)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """ESS = (Σw)² / Σw² per group: P for equal weights, 1 when one particle holds all the mass."""
    w = torch.softmax(log_w.double(), dim=1)
    return 1.0 / (w * w).sum(1)


@dataclass
class ParticleResampling:
    """Sequential Monte Carlo twisted by the time-dependent reward: no gradient to exploit.

    Each image is P particles from the unguided sampler; the potential φ_t = ω·objective(r(x_t, t))
    reweights them by exp(φ_t(x_t) − φ_{t+1}(x_{t+1})) at every step, and a group is resampled
    (systematically) when its effective sample size falls below ``ess`` × P. After the last step a
    final weight exp(φ_0(x_0) − φ_1) picks one particle per image. The sampler (sampling.py) owns the
    particle bookkeeping; this class only scores particles and decides which survive.
    """

    reward: object
    particles: int = 4
    weight: float = 1.0
    objective: Objective = field(default_factory=Objective)
    ess: float = 0.5
    computes_eps = True

    def __post_init__(self):
        if not self.reward.time_dependent:
            raise CensorError("particle resampling needs a time-dependent reward r(x_t, t)")
        if self.particles < 1 or not 0 < self.ess <= 1:
            raise CensorError("particles must be >= 1 and ess in (0, 1]")

    def potential_and_eps(self, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """φ_t(x_t) [N] and the unguided ε (shared with the reward's UNet taps where it reads them)."""
        shared = _from_shared_pass(self.reward, ctx, ctx.x, self.objective)
        if shared is not None:
            eps, obj = shared
            return self.weight * obj, eps
        eps = ctx.unet(ctx.x, ctx.t).sample
        return self.weight * self.objective.at(ctx.t).of(self.reward, ctx.x, ctx.t_batch()), eps

    def final_potential(self, x0: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
        return self.weight * self.objective.at(0).of(self.reward, x0, t)

    def reweight(self, log_w: torch.Tensor, gen: torch.Generator, stats: dict) -> torch.Tensor | None:
        """Flat indices to keep (None: no group needed resampling); resets the resampled groups' weights."""
        G = log_w.numel() // self.particles
        lw = log_w.reshape(G, self.particles)
        low = effective_sample_size(lw) < self.ess * self.particles
        if not low.any():
            return None
        idx = torch.arange(self.particles).expand(G, -1).clone()
        idx[low] = systematic_resample(lw[low], gen)
        stats["resamples"] = stats.get("resamples", 0) + int(low.sum())
        lw[low] = 0.0
        return (idx + self.particles * torch.arange(G)[:, None]).reshape(-1)

    def choose(self, log_w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One particle per image, drawn in proportion to its final weight (Gumbel-max)."""
        G = log_w.numel() // self.particles
        lw = log_w.reshape(G, self.particles).double()
        u = torch.rand(lw.shape, generator=gen, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        pick = (lw - torch.log(-torch.log(u))).argmax(1)
        return pick + self.particles * torch.arange(G)


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


GUIDANCE_KINDS = ("time", "universal", "manifold", "particles")


def build_guidance(reward, kind: str, weight: float, backward_steps: int = _D.backward_steps,
                   backward_lr: float = _D.backward_lr, recurrence: int = _D.recurrence,
                   window: tuple[int, int] = _D.window, every: int = _D.every, combine: str = _D.combine,
                   threshold: float | None = _D.threshold, spread: float = _D.spread,
                   max_ratio: float | None = _D.max_ratio, particles: int = _D.particles,
                   calibrate: bool = _D.calibrate, hinge_quantile: float | None = _D.hinge_quantile) -> Guidance:
    """The usual composition: one first piece (time, universal, manifold) and optional backward
    guidance; or ``particles``: SMC resampling with P particles per image. The hinge (``threshold``
    or ``hinge_quantile``) is resolved for the reward by ``make_objective``. Every knob not given
    takes its value from ``defaults.DEFAULT_GUIDANCE`` (``GuidanceSettings.build`` passes them all).

    ``every`` > 1 (time guidance only) computes the reward gradient on every ``every``-th step and
    reuses it in between: the cheap way to bring guided sampling close to unguided cost.
    """
    if kind not in GUIDANCE_KINDS:
        raise CensorError(f"unknown guidance {kind!r}; use one of {', '.join(GUIDANCE_KINDS)}")
    if every != 1 and kind != "time":
        raise CensorError("reusing gradients (every > 1) is only supported for time-dependent guidance")
    objective = make_objective(reward, combine, spread, threshold, calibrate, hinge_quantile)
    if kind == "particles":
        return Guidance([], window=tuple(window),
                        particles=ParticleResampling(reward, particles, weight, objective))
    if kind == "time":
        first = TimeGuidance(reward, weight, every, objective, max_ratio)
    elif kind == "universal":
        first = UniversalGuidance(reward, weight, objective, max_ratio)
    else:
        first = ManifoldGuidance(reward, weight, objective, max_ratio)
    pieces = [first] + ([BackwardGuidance(reward, backward_steps, backward_lr, objective)] if backward_steps else [])
    return Guidance(pieces, window=tuple(window), recurrence=recurrence)
