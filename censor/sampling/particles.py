"""Sequential Monte Carlo twisted by r(x_t, t): particles reweighted and resampled, no gradient."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from censor.core.errors import CensorError
from censor.sampling.objective import Objective
from censor.sampling.pieces import StepContext, _from_shared_pass


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


@dataclass(frozen=True)
class ParticleState:
    """One batch's SMC bookkeeping, held by the sampler loop and started fresh for every batch."""

    log_w: torch.Tensor  # float64 [G·P], log importance weight of each particle
    last_phi: torch.Tensor  # float64 [G·P], φ_{t+1}(x_{t+1}) of each particle
    origin: torch.Tensor  # long [G·P], which starting particle each row descends from

    @classmethod
    def fresh(cls, n: int) -> "ParticleState":
        zeros = torch.zeros(n, dtype=torch.float64)
        return cls(zeros, zeros.clone(), torch.arange(n))


@dataclass
class ParticleResampling:
    """Sequential Monte Carlo twisted by the time-dependent reward: no gradient to exploit.

    Each image is P particles from the unguided sampler; the potential φ_t = ω·objective(r(x_t, t))
    reweights them by exp(φ_t(x_t) − φ_{t+1}(x_{t+1})) at every step, and a group is resampled
    (systematically) when its effective sample size falls below ``ess`` × P. After the last step a
    final weight exp(φ_0(x_0) − φ_1) picks one particle per image. The sampler loop holds the
    ``ParticleState``; these methods score particles and return new states, mutating nothing.
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

    def potential_and_eps(self, step: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """φ_t(x_t) [N] and the unguided ε (shared with the reward's UNet taps where it reads them)."""
        shared = _from_shared_pass(self.reward, step, step.x_t, self.objective)
        if shared is not None:
            eps, obj = shared
            return self.weight * obj, eps
        eps = step.unet(step.x_t, step.t).sample
        return self.weight * self.objective.at(step.t).of(self.reward, step.x_t, step.t_batch()), eps

    def twist(self, state: ParticleState, phi: torch.Tensor) -> ParticleState:
        """The weights times exp(φ_t − φ_{t+1}) for this step's potential ``phi`` [N]."""
        phi = phi.double().cpu()
        return replace(state, log_w=state.log_w + (phi - state.last_phi), last_phi=phi)

    def reweight(self, state: ParticleState, gen: torch.Generator) -> tuple[torch.Tensor | None, ParticleState, int]:
        """(flat indices to keep or None when no group needed resampling, the new state, the number
        of groups resampled); resampled groups restart from equal weights."""
        G = state.log_w.numel() // self.particles
        lw = state.log_w.reshape(G, self.particles)
        low = effective_sample_size(lw) < self.ess * self.particles
        if not low.any():
            return None, state, 0
        idx = torch.arange(self.particles).expand(G, -1).clone()
        idx[low] = systematic_resample(lw[low], gen)
        lw = lw.clone()
        lw[low] = 0.0
        keep = (idx + self.particles * torch.arange(G)[:, None]).reshape(-1)
        return keep, ParticleState(lw.reshape(-1), state.last_phi[keep], state.origin[keep]), int(low.sum())

    def choose(self, state: ParticleState, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One particle per image, drawn in proportion to its final weight φ_0(x_0) − φ_1 (Gumbel-max)."""
        t = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
        final = self.weight * self.objective.at(0).of(self.reward, x0, t)
        log_w = state.log_w + (final.double().cpu() - state.last_phi)
        G = log_w.numel() // self.particles
        lw = log_w.reshape(G, self.particles).double()
        u = torch.rand(lw.shape, generator=gen, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        pick = (lw - torch.log(-torch.log(u))).argmax(1)
        return pick + self.particles * torch.arange(G)
