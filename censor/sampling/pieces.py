"""Gradient guidance pieces: pure functions of one immutable denoising step.

``piece.advance(step, carry)`` returns a new ``StepContext`` (its ε rewritten) and the piece's
carry for the next step of the same batch; nothing is mutated. Only time guidance carries
anything (the gradient it reuses when ``every`` > 1); the sampler loop holds the carries and
starts fresh ones for every batch. ``piece(step)`` is the new ε of one step taken on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple

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


def _identity(x0: torch.Tensor) -> torch.Tensor:
    return x0


@dataclass(frozen=True)
class StepContext:
    """What a piece sees at one denoising step; pieces return a changed copy, never edit it."""

    unet: torch.nn.Module
    x_t: torch.Tensor  # no grad
    t: int  # training timestep
    ab: torch.Tensor  # ᾱ_t as a 0-d tensor
    eps: torch.Tensor | None = None  # current noise prediction (None: the first piece computes it)
    unguided_eps: torch.Tensor | None = None  # ε_θ(x_t, t), the fallback for non-finite guidance
    decode: Callable[[torch.Tensor], torch.Tensor] = _identity  # latents -> images, differentiable
    latent: bool = False  # x_t lives in a latent space (no [-1, 1] clamp there)

    def t_batch(self) -> torch.Tensor:
        return torch.full((len(self.x_t),), int(self.t), dtype=torch.long, device=self.x_t.device)

    def with_eps(self, eps: torch.Tensor, unguided: torch.Tensor | None = None) -> "StepContext":
        """This step with ε replaced (and the unguided ε, when it was computed on the way)."""
        return replace(self, eps=eps, unguided_eps=self.unguided_eps if unguided is None else unguided)

    def predicted(self) -> "StepContext":
        """This step with ε = ε_θ(x_t, t) filled in if no piece has predicted it yet."""
        if self.eps is not None:
            return self
        with torch.no_grad():
            eps = self.unet(self.x_t, self.t).sample
        return self.with_eps(eps, eps)


class Piece:
    """A guidance piece: ``advance`` maps a step to the next; ``computes_eps`` when it predicts ε itself."""

    computes_eps = False

    def advance(self, step: StepContext, carry=None) -> tuple[StepContext, object]:
        return step.with_eps(self.guided_eps(step)), None

    def guided_eps(self, step: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, step: StepContext) -> torch.Tensor:
        return self.advance(step)[0].eps


def _from_shared_pass(reward, step: StepContext, x: torch.Tensor, objective: Objective):
    """(ε, objective [N]) from one UNet pass with the reward's taps hooked, when the reward reads the
    sampler's own UNet (ddpm-encoder); None when it reads another network."""
    unet = getattr(reward, "reads_unet", None)
    if unet is None or unet is not step.unet:
        return None
    eps, feats = eps_and_taps(step.unet, x, step.t)
    return eps, objective.at(step.t).from_logits(reward.logits_from_features(feats))


def _grad_of_log_reward(reward, x_in: torch.Tensor, wrt: torch.Tensor, t, objective: Objective) -> torch.Tensor:
    (g,) = torch.autograd.grad(objective.of(reward, x_in, t).sum(), wrt)
    return g


class Reused(NamedTuple):
    """Time guidance's carry: the last fresh gradient, the timestep it was taken at, steps since."""

    grad: torch.Tensor
    t: int
    since: int


@dataclass
class TimeGuidance(Piece):
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

    def __post_init__(self):
        if not self.reward.time_dependent:
            raise CensorError(f"time-dependent guidance needs a time-dependent reward; a {self.reward.kind} "
                              "reward scores clean images, so use universal guidance")
        if self.every < 1:
            raise CensorError(f"every must be >= 1, got {self.every}")

    @property
    def computes_eps(self) -> bool:
        return getattr(self.reward, "reads_unet", None) is not None

    def _reuses(self, step: StepContext, carry: Reused | None) -> bool:
        """A later step of the same batch, within ``every`` of the last fresh gradient; a redo of the
        same timestep (recurrence, re-noised x_t) takes a fresh one."""
        return carry is not None and int(step.t) < carry.t and carry.since + 1 < self.every

    def advance(self, step: StepContext, carry: Reused | None = None) -> tuple[StepContext, Reused]:
        if self._reuses(step, carry):
            step = step.predicted()
            eps = shift_eps(step.eps, carry.grad, self.weight, step.ab, self.max_ratio)
            return step.with_eps(eps), Reused(carry.grad, int(step.t), carry.since + 1)
        with torch.enable_grad():
            x = step.x_t.detach().requires_grad_(True)
            shared = _from_shared_pass(self.reward, step, x, self.objective) if step.eps is None else None
            if shared is not None:
                eps, obj = shared
                g, = torch.autograd.grad(obj.sum(), x)
                step = step.with_eps(eps.detach(), eps.detach())
            else:  # a reward on another model's encoder: no pass to share
                step = step.predicted()
                g = _grad_of_log_reward(self.reward, x, x, step.t_batch(), self.objective.at(step.t))
        return step.with_eps(shift_eps(step.eps, g, self.weight, step.ab, self.max_ratio)), Reused(g, int(step.t), 0)


@dataclass
class UniversalGuidance(Piece):
    """Forward universal guidance: the reward judges x̂0, the gradient flows back through ε_θ."""

    reward: object
    weight: float
    objective: Objective = field(default_factory=Objective)
    max_ratio: float | None = None
    computes_eps = True

    def advance(self, step: StepContext, carry=None) -> tuple[StepContext, None]:
        with torch.enable_grad():
            x = step.x_t.detach().requires_grad_(True)
            eps = step.unet(x, step.t).sample
            x0 = x0_from_eps(x, eps, step.ab)
            zeros = torch.zeros(len(x), dtype=torch.long, device=x.device)
            g = _grad_of_log_reward(self.reward, step.decode(x0), x, zeros, self.objective.at(0))
        eps = eps.detach()
        return step.with_eps(shift_eps(eps, g, self.weight, step.ab, self.max_ratio), eps), None


def _clean_x0(step: StepContext) -> torch.Tensor:
    """x̂0 of the step's ε, clamped to [-1, 1] for pixel models, detached."""
    x0 = x0_from_eps(step.x_t, step.eps, step.ab)
    return (x0 if step.latent else x0.clamp(-1, 1)).detach()


@dataclass
class ManifoldGuidance(Piece):
    """MPGD-style: move x̂0 = x̂0(x_t, ε) along ∇_{x0} log r(x̂0, 0) without backpropagating
    through the UNet, then take ε from the moved x̂0, so the step stays on the sampler's path.

    x̂0' = x̂0 + w·(1 − ᾱ_t)·∇ : the (1 − ᾱ_t) factor shrinks the step as the image settles, where a
    constant one would make late steps jump off the manifold.
    """

    reward: object
    weight: float
    objective: Objective = field(default_factory=Objective)
    max_ratio: float | None = None

    def guided_eps(self, step: StepContext) -> torch.Tensor:
        zeros = torch.zeros(len(step.x_t), dtype=torch.long, device=step.x_t.device)
        x0 = _clean_x0(step)
        with torch.enable_grad():
            z = x0.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.objective.at(0).of(self.reward, step.decode(z), zeros).sum(), z)
        moved = eps_from_x0(step.x_t, x0 + self.weight * (1 - step.ab) * g, step.ab)
        return step.eps + limit_shift(step.eps, moved - step.eps, self.max_ratio)


@dataclass
class BackwardGuidance(Piece):
    """Backward universal guidance: optimise x̂0 directly for B Adam steps, then recompute ε."""

    reward: object
    steps: int = 5
    lr: float = 0.01
    objective: Objective = field(default_factory=Objective)

    def guided_eps(self, step: StepContext) -> torch.Tensor:
        zeros = torch.zeros(len(step.x_t), dtype=torch.long, device=step.x_t.device)
        with torch.enable_grad():
            x0 = _clean_x0(step).requires_grad_(True)
            opt = torch.optim.Adam([x0], lr=self.lr)
            for _ in range(self.steps):
                loss = -self.objective.at(0).of(self.reward, step.decode(x0), zeros).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if not step.latent:
                    with torch.no_grad():
                        x0.clamp_(-1, 1)
        return eps_from_x0(step.x_t, x0.detach(), step.ab)
