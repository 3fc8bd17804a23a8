"""D3PO and DDPO training loops: sample rollouts, then replay every step with gradients.

Both follow ddpo-pytorch's shape: an epoch samples a batch of stochastic DDIM trajectories with the
current policy (no gradients), scores them (labels for D3PO, a reward for DDPO), then replays each
recorded step x_t -> x_{t-1} with gradients, accumulating over all S timesteps before one
optimiser step per minibatch, so memory holds one UNet pass at a time. ``accelerate`` handles the
device and, under ``accelerate launch``, data parallelism; a plain call runs on one CPU or GPU.

The model is changed in place: LoRA adapters are added to ``model.unet`` (or, with ``full``, every
weight trains) and stay there; save them with ``rlhf.adapters.save_adapter``.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.core.progress import Progress
from censor.diffusion.models import DiffusionModel
from rlhf.configs import D3POConfig, DDPOConfig
from rlhf.losses import advantage_scale, d3po_loss, ddpo_loss, gaussian_kl, standardise_advantages
from rlhf.rollout import gaussian_log_prob, step_log_prob, step_policy
from rlhf.run import Run, inner_batches


def preference_pairs(labels: Sequence[int], group_ids: Sequence[int]) -> torch.Tensor:
    """[P, 2] (winner, loser) indices: every (benign=1, malign=0) pair that shares a group.

    Equal labels are ties and give no pair; any other label (e.g. -1 for "unsure") is left out.
    """
    labels, group_ids = np.asarray(labels), np.asarray(group_ids)
    if labels.shape != group_ids.shape:
        raise CensorError(f"{len(labels)} labels for {len(group_ids)} images")
    pairs = []
    for g in np.unique(group_ids):
        idx = np.flatnonzero(group_ids == g)
        good, bad = idx[labels[idx] == 1], idx[labels[idx] == 0]
        pairs += [(w, l) for w in good for l in bad]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def labels_from(labeller) -> Callable[[torch.Tensor], np.ndarray]:
    """Adapt a ``SimulatedLabeller`` (uint8 images) to a label function on images in [-1, 1]."""
    return lambda images: labeller.label(to_uint8(images))


def reward_from(ensemble) -> Callable[[torch.Tensor], torch.Tensor]:
    """A DDPO reward from a reward ensemble: log P(benign) of the final image (standardised later)."""

    @torch.no_grad()
    def reward(images: torch.Tensor) -> torch.Tensor:
        return ensemble.log_prob(images.to(next(ensemble.members[0].parameters()).device)).float().cpu()

    return reward


def value_from(ensemble) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """DDPO's per-step baseline from a time-dependent ensemble: log P(benign | x_t), what the reward expects of
    a trajectory from x_t on (``DDPOConfig.baseline = "value"``)."""
    if not getattr(ensemble, "time_dependent", False):
        raise CensorError("a value baseline needs a time-dependent reward (it scores noisy x_t)")
    dev = next(ensemble.members[0].parameters()).device

    @torch.no_grad()
    def value(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ensemble.log_prob(x_t.to(dev), t.to(dev).expand(len(x_t))).float().cpu()

    return value


def value_for(reward, cfg: DDPOConfig):
    """The value function ``cfg.baseline`` asks of ``reward`` (None for the batch-mean baseline)."""
    return value_from(reward) if cfg.baseline == "value" else None


def train_d3po(
    model: DiffusionModel,
    label_fn: Callable[[torch.Tensor], Sequence[int]],
    config: D3POConfig | None = None,
    progress: Progress | None = None,
    show_bar: bool = False,
    accelerator=None,
) -> dict:
    """D3PO: each epoch, ``groups`` x_T with ``group_size`` images each are labelled by ``label_fn``
    (images in [-1, 1] -> 1 benign / 0 malign / other = unsure); benign ≻ malign inside a group.

    The per-step D3PO loss is averaged over the pairs of a minibatch of groups and accumulated over
    all S steps. π_ref is the UNet before adapters. Returns losses, pairs per epoch, seconds.
    """
    cfg = config or D3POConfig()
    n_batches = -(-cfg.groups // cfg.batch_groups) * cfg.inner_epochs
    run = Run(model, cfg, need_ref=True, total=cfg.epochs * (1 + n_batches), progress=progress,
              show_bar=show_bar, accelerator=accelerator, desc="D3PO")
    pairs_per_epoch, benign_rate = [], []
    dev = run.acc.device
    for epoch in range(cfg.epochs):
        traj = run.rollout(epoch, cfg.groups, cfg.group_size)
        labels = np.asarray(label_fn(traj.images))
        pairs = preference_pairs(labels, traj.group_ids.numpy())
        pairs_per_epoch.append(len(pairs))
        benign_rate.append(float((labels == 1).mean()))
        if len(pairs) == 0 and run.acc.num_processes == 1:
            run.tick(n_batches)  # nothing to learn from: every group agreed
            continue
        ref = run.ref_log_probs(traj)
        for groups in inner_batches(cfg.groups, cfg.batch_groups, cfg.inner_epochs):
            rows = torch.nonzero(torch.isin(traj.group_ids, groups)).squeeze(1)
            local = {int(r): i for i, r in enumerate(rows)}
            mine = pairs[[int(w) in local for w, _ in pairs.tolist()]] if len(pairs) else pairs
            if len(mine) == 0 and run.acc.num_processes == 1:
                run.tick(1)
                continue
            w = torch.tensor([local[int(i)] for i in mine[:, 0]], dtype=torch.long)
            l = torch.tensor([local[int(i)] for i in mine[:, 1]], dtype=torch.long)

            def step_loss(j: int) -> torch.Tensor:
                lp = step_log_prob(run.policy, run.sched, traj.xs[rows, j].to(dev), traj.timesteps[j],
                                   traj.xs[rows, j + 1].to(dev), cfg.eta)
                if len(w) == 0:  # keeps data-parallel processes in step; contributes nothing
                    return lp.sum() * 0.0
                r = ref[rows, j].to(dev)
                return d3po_loss(lp[w], r[w], lp[l], r[l], beta=cfg.beta, eps=cfg.eps)

            run.optimise(step_loss)
    return run.finish(pairs=pairs_per_epoch, benign_rate=benign_rate)


def train_ddpo(
    model: DiffusionModel,
    reward_fn: Callable[[torch.Tensor], torch.Tensor],
    config: DDPOConfig | None = None,
    progress: Progress | None = None,
    show_bar: bool = False,
    accelerator=None,
    on_epoch: Callable[[int, torch.nn.Module, float], None] | None = None,
    value_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """DDPO-IS: PPO on per-step importance ratios, reward = ``reward_fn(final images in [-1, 1])``.

    Advantages are the epoch's rewards standardised and clipped; with ``baseline = "value"`` step j's
    advantage is (R − V(x_t)) / std(R), V = ``value_fn`` (``value_from``): the same expected gradient (a
    state-dependent baseline), with the credit of a trajectory's outcome going to the steps that changed
    what the reward expected of it. ``kl_beta`` > 0 adds the exact
    per-step KL to the frozen pre-adapter UNet (``rlhf.losses.gaussian_kl``). ``on_epoch(epochs done,
    network, seconds so far)`` hears after every epoch (``rlhf.curves`` copies the network there).
    Returns losses, mean reward per epoch, seconds.
    """
    cfg = config or DDPOConfig()
    _check_value(cfg, value_fn, model.is_latent)  # before any rollout
    n_batches = -(-cfg.images // cfg.batch_size) * cfg.inner_epochs
    run = Run(model, cfg, need_ref=cfg.kl_beta > 0, total=cfg.epochs * (1 + n_batches), progress=progress,
              show_bar=show_bar, accelerator=accelerator, desc="DDPO")
    reward_mean, clipfrac = [], []
    dev = run.acc.device
    for epoch in range(cfg.epochs):
        traj = run.rollout(epoch, cfg.images, 1)
        rewards = torch.as_tensor(reward_fn(traj.images), dtype=torch.float32).reshape(-1).cpu()
        if rewards.shape[0] != len(traj):
            raise CensorError(f"the reward function gave {rewards.shape[0]} rewards for {len(traj)} images")
        all_rewards = run.acc.gather(rewards.to(dev)).cpu()  # standardise over every process's samples
        reward_mean.append(float(all_rewards.mean()))
        mine = slice(run.acc.process_index * len(traj), (run.acc.process_index + 1) * len(traj))
        adv = step_advantages(all_rewards, mine, traj, cfg, value_fn, model.is_latent)
        for rows in inner_batches(len(traj), cfg.batch_size, cfg.inner_epochs):
            a = adv[rows].to(dev)  # [B, S]
            fractions = []

            def step_loss(j: int) -> torch.Tensor:
                x_t, x_prev = traj.xs[rows, j].to(dev), traj.xs[rows, j + 1].to(dev)
                t = traj.timesteps[j]
                mean, std = step_policy(run.policy, run.sched, x_t, t, cfg.eta)
                kl = None
                if run.ref is not None:
                    with torch.no_grad():
                        mean_ref, _ = step_policy(run.ref_policy, run.sched, x_t, t, cfg.eta)
                    kl = gaussian_kl(mean, mean_ref, std)
                loss, info = ddpo_loss(gaussian_log_prob(x_prev, mean, std), traj.log_probs[rows, j].to(dev), a[:, j],
                                       cfg.clip_range, kl, cfg.kl_beta)
                fractions.append(info["clipfrac"])
                return loss

            run.optimise(step_loss)
            clipfrac.append(float(np.mean(fractions)))
        if on_epoch is not None:
            on_epoch(epoch + 1, run.acc.unwrap_model(run.unet), time.perf_counter() - run.t0)
    return run.finish(reward_mean=reward_mean, clipfrac=clipfrac)


def step_advantages(all_rewards: torch.Tensor, mine: slice, traj, cfg: DDPOConfig, value_fn=None,
                    latent: bool = False) -> torch.Tensor:
    """[N, S] advantages of this process's trajectories (``mine`` of every process's rewards) at every step:
    the standardised reward, the same at every step; or with the value baseline (R − V(x_t)) / std(R), clipped
    (without the division under ``adv_scale = "none"``)."""
    if cfg.baseline == "mean":
        return standardise_advantages(all_rewards, cfg.adv_clip, cfg.adv_scale)[mine, None].expand(-1, traj.steps)
    _check_value(cfg, value_fn, latent)
    values = torch.stack([value_fn(traj.xs[:, j], traj.timesteps[j]) for j in range(traj.steps)], 1)
    r = all_rewards.float()
    return ((r[mine, None] - values) / advantage_scale(r, cfg.adv_scale)).clamp(-cfg.adv_clip, cfg.adv_clip)


def _check_value(cfg: DDPOConfig, value_fn, latent: bool) -> None:
    if cfg.baseline != "value":
        return
    if value_fn is None:
        raise CensorError("DDPO's value baseline needs a value function (rlhf.train.value_from)")
    if latent:
        raise CensorError("the value baseline scores x_t as images: not for a latent model")
