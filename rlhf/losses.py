"""The two per-step objectives, in one place so the formulas can be read and tested on their own.

D3PO (arXiv 2311.13231, reference code yk7333/d3po ``train_d3po.py``): for a preferred (w) and a
rejected (l) step sharing the start,

    L = -log σ(β·h_w·log clamp(r_w, 1-ε, 1+ε) + β·h_l·log clamp(r_l, 1-ε, 1+ε)),
    r = π_θ(a|s) / π_ref(a|s),   h = (+1, -1) for a preference, (0, 0) for a tie.

A tie therefore costs log 2 with no gradient. The clamp is on each ratio separately, exactly as in
the reference code (not on the difference of log-ratios): a side whose ratio has left
[1-ε, 1+ε] stops receiving gradient, which is what keeps the policy near π_ref. It is computed in
log space, clamp(log r, log(1-ε), log(1+ε)), which is the same function with the same gradient but
cannot overflow exp() (exp → inf would turn the zero gradient of the clamp into NaN).

DDPO (Black et al., ddpo-pytorch): PPO's clipped surrogate on importance ratios of each step,
advantages = rewards standardised per batch and clipped, plus an optional per-step KL penalty
β_KL·KL(π_θ(·|x_t) ‖ π_ref(·|x_t)) to the frozen model (DPOK-style; 0 by default as in DDPO). Both
policies are Gaussians with the same σ_t, so the KL is exact, ‖μ_θ − μ_ref‖² / 2σ_t² per pixel. The
sample estimate log π_θ(a) − log π_ref(a) on the rollout's own actions is not a usable penalty: its
gradient, ∇ log π_θ(a), has expectation zero under the sampling policy, so at the first update of an
epoch it pulls nowhere and only adds noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def clamped_log_ratio(logp: torch.Tensor, logp_ref: torch.Tensor, eps: float) -> torch.Tensor:
    """log clamp(π/π_ref, 1-ε, 1+ε), computed without exponentiating."""
    return (logp - logp_ref).clamp(math.log1p(-eps), math.log1p(eps))


def d3po_loss(
    logp_w: torch.Tensor,
    logp_ref_w: torch.Tensor,
    logp_l: torch.Tensor,
    logp_ref_l: torch.Tensor,
    beta: float = 0.1,
    eps: float = 0.1,
    preference: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Per-step D3PO loss for pairs (w preferred over l); ``preference`` 1 = preferred, 0 = tie.

    ``preference`` plays the role of the reference code's h: it multiplies both log-ratios, so a
    tie (0) gives -log σ(0) = log 2 and exactly zero gradient.
    """
    h = torch.ones_like(logp_w) if preference is None else preference.to(logp_w)
    z = beta * h * clamped_log_ratio(logp_w, logp_ref_w, eps) - beta * h * clamped_log_ratio(logp_l, logp_ref_l, eps)
    loss = -F.logsigmoid(z)
    return loss.mean() if reduction == "mean" else loss


def standardise_advantages(rewards: torch.Tensor, adv_clip: float = 5.0, scale: str = "std") -> torch.Tensor:
    """(r - mean) / std over the batch (``scale="std"``, DDPO's) or r - mean (``"none"``), clipped to ±adv_clip;
    all-equal rewards give zeros.

    Why "none" exists: with the reward log r(x) and the per-step KL at β, the KL-regularised objective
    E[R] − β·KL(p_θ ‖ p_ref) has its optimum at p_ref·r^(1/β), so β = 1 is censored sampling's own target
    p_data·r. Dividing by the batch's std makes the exponent 1/(β·std): as the malign rollouts disappear the std
    shrinks, the exponent grows and the small differences the reward sees between benign images are amplified
    (the class mix drifts). Unscaled, the push fades with the malign images and the KL keeps the rest."""
    r = rewards.float()
    if r.numel() < 2:
        return torch.zeros_like(r)
    return ((r - r.mean()) / advantage_scale(r, scale)).clamp(-adv_clip, adv_clip)


def advantage_scale(rewards: torch.Tensor, scale: str = "std") -> torch.Tensor:
    """What the advantages of a batch of ``rewards`` are divided by: their std (``"std"``, DDPO's; 1 for a single
    reward) or 1 (``"none"``). One home for the mean and the value baselines alike."""
    r = rewards.float()
    return r.std() + 1e-8 if scale == "std" and r.numel() > 1 else torch.tensor(1.0)


def gaussian_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[N] KL(N(mean, std²) ‖ N(mean_ref, std²)) averaged over non-batch dims, as the log-probabilities are."""
    kl = (mean - mean_ref) ** 2 / (2 * std**2)
    return kl.mean(dim=tuple(range(1, mean.ndim)))


def ddpo_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    kl_ref: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate for one step of each trajectory; returns (loss, diagnostics).

    ratio = exp(logp_new - logp_old); loss = mean(max(-A·ratio, -A·clamp(ratio, 1±clip))).
    Outside the clip range on the side the advantage pushes towards, the clamped term wins and the
    gradient is zero: one batch of samples cannot drag the policy far.
    """
    adv = advantages.to(logp_new)
    ratio = torch.exp(logp_new - logp_old)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    kl = torch.zeros((), device=logp_new.device)
    if kl_beta and kl_ref is not None:  # [N] per-step KL to π_ref (``gaussian_kl``), with its gradient
        kl = kl_ref.mean()
        loss = loss + kl_beta * kl
    info = {
        "approx_kl_old": 0.5 * ((logp_new - logp_old) ** 2).mean().item(),
        "clipfrac": ((ratio - 1).abs() > clip_range).float().mean().item(),
        "kl_ref": float(kl.detach()),
    }
    return loss, info
