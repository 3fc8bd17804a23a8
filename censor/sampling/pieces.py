"""Gradient guidance pieces: each maps one step's ε to a new ε."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from censor.core.errors import CensorError
from censor.diffusion.steps import eps_from_x0, x0_from_eps
from censor.rewards.taps import eps_and_taps
from censor.sampling.objective import Objective


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

