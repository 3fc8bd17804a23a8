"""Sequential Monte Carlo twisted by r(x_t, t): particles reweighted and resampled, no gradient."""

from __future__ import annotations

from dataclasses import dataclass, field

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

