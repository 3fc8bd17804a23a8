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

import contextlib
import time
from dataclasses import asdict
from typing import Callable, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.core.progress import Progress, reporter
from censor.diffusion.models import DiffusionModel
from censor.sampling.loop import seeds_for
from rlhf.adapters import frozen_reference, make_trainable
from rlhf.configs import CommonConfig, D3POConfig, DDPOConfig
from rlhf.losses import d3po_loss, ddpo_loss, gaussian_kl, standardise_advantages
from rlhf.rollout import (Trajectory, gaussian_log_prob, make_rollout_scheduler, rollout, step_log_prob,
                           step_policy, step_sigmas)


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


def trained_steps(scheduler, eta: float, min_sigma: float) -> torch.Tensor:
    """Indices of the rollout steps that are trained: those whose σ_t reaches ``min_sigma``."""
    sigmas = step_sigmas(scheduler, eta)
    keep = torch.nonzero(sigmas >= min_sigma).reshape(-1)
    if len(keep) == 0:
        raise CensorError(f"no rollout step has σ_t >= min_sigma={min_sigma} (largest {float(sigmas.max()):.3g})")
    return keep


STEP_STREAM = 0x5354  # tags the step-noise seeds' SeedSequence, so they never retrace an x_T seed


def step_seed(seed: int, member: int) -> int:
    """The step-noise seed of image ``member`` of the group started from x_T seed ``seed``.

    Mixed by numpy's SeedSequence into 32 bits, because ``torch.Generator.manual_seed`` keeps only
    the low 32 bits: an offset such as 2**40 + seed replays the x_T stream, so the first step's
    noise *was* x_T, the samples were not drawn from the policy, and DDPO climbed against its
    reward (issue 22).
    """
    return int(np.random.SeedSequence([int(seed), int(member), STEP_STREAM]).generate_state(1, np.uint32)[0])


def _inner_batches(n: int, size: int, passes: int):
    """Minibatches of ``range(n)``: ``passes`` shuffled passes, ``size`` items each."""
    for _ in range(passes):
        yield from torch.randperm(n).split(size)


def _synced(policy, wrapper):
    """``policy``, calling the data-parallel ``wrapper`` where it called the bare network: DDP syncs the
    gradients of forwards that go through it only, and ``make_denoiser`` reads the bare network's config."""
    inner = getattr(wrapper, "module", None)
    if inner is None:  # one process: nothing wraps the network
        return policy
    if policy is inner:
        return wrapper
    policy.net = wrapper  # a Denoiser (conditioning, other parameterisations)
    return policy


class _Run:
    """Shared plumbing: accelerator, trainable parameters, optimiser, reference, progress."""

    def __init__(self, model: DiffusionModel, cfg: CommonConfig, need_ref: bool, total: int,
                 progress, show_bar: bool, accelerator, desc: str):
        cfg.check()
        self.cfg, self.model, self.report = cfg, model, reporter(progress)
        self.acc = accelerator or Accelerator(mixed_precision="no")
        unet = model.unet.float()
        self.ref = frozen_reference(unet).to(self.acc.device) if need_ref else None
        params = make_trainable(unet, cfg.full, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target)
        self.params = params
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.unet, self.opt = self.acc.prepare(unet.to(self.acc.device), opt)
        # the policy is ε of the (adapted) network with the model's conditioning (a prompt, a class)
        self.policy = _synced(model.denoiser_for(self.acc.unwrap_model(self.unet)), self.unet)
        self.ref_policy = model.denoiser_for(self.ref) if self.ref is not None else None
        self.sched = make_rollout_scheduler(model.scheduler.config, cfg.steps)
        self.trained = trained_steps(self.sched, cfg.eta, cfg.min_sigma)
        self.total, self.done = total, 0
        self.bar = tqdm(total=total, desc=desc, disable=not (show_bar and self.acc.is_main_process))
        self.t0 = time.perf_counter()
        self.losses: list[float] = []

    def rollout(self, epoch: int, n: int, group_size: int) -> Trajectory:
        # each process draws its slice of one epoch-wide set of images, each image with its own step
        # noise: k processes of n images roll out exactly what one process of k·n would
        rank, world = self.acc.process_index, self.acc.num_processes
        seeds = seeds_for(n * world, self.cfg.seed + 1009 * epoch)[rank * n:(rank + 1) * n]
        step_seeds = [step_seed(s, g) for s in seeds for g in range(group_size)]
        unet = self.acc.unwrap_model(self.unet).eval()  # no gradients: skip the DDP wrapper
        decode = self.model.decode if self.model.is_latent else None
        traj = rollout(self.model.denoiser_for(unet), self.model.scheduler.config, seeds=seeds,
                       steps=self.cfg.steps, eta=self.cfg.eta, group_size=group_size, step_seeds=step_seeds,
                       batch_size=self.cfg.rollout_batch, shape=self.model.sample_shape, decode=decode,
                       progress=lambda f: self.within(f, f"epoch {epoch + 1}: rollouts"))
        self.unet.train()
        self.tick(1)
        return traj

    def ref_log_probs(self, traj: Trajectory) -> torch.Tensor:
        """[N, S] log π_ref of the recorded (trained) steps: fixed for the epoch, so computed once."""
        out = torch.zeros_like(traj.log_probs)
        dev = self.acc.device
        with torch.no_grad():
            for rows in torch.arange(len(traj)).split(self.cfg.rollout_batch):
                for j in self.trained.tolist():
                    t = traj.timesteps[j]
                    self.within(0.0, "reference log-probabilities")
                    out[rows, j] = step_log_prob(self.ref_policy, self.sched, traj.xs[rows, j].to(dev), t,
                                                 traj.xs[rows, j + 1].to(dev), traj.eta).cpu()
        return out

    def optimise(self, step_loss: Callable[[int], torch.Tensor]) -> float:
        """One optimiser step: ``step_loss(j)`` for every trained timestep j (random order), accumulated."""
        S = len(self.trained)
        total = 0.0
        for k, j in enumerate(self.trained[torch.randperm(S)].tolist()):
            if k:
                self.within(k / S, "optimising")
            sync = k == S - 1
            with contextlib.nullcontext() if sync else self.acc.no_sync(self.unet):
                loss = step_loss(j) / S
                self.acc.backward(loss)
            total += float(loss.detach())
        self.acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(total)
        self.tick(1)
        return total

    def tick(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        self.within(0.0)

    def within(self, fraction: float, desc: str | None = None) -> None:
        """Progress ``fraction`` of the way through the next unit (a rollout or an optimiser step): the
        units take seconds on a CPU, and a Cancel is heard only here."""
        if self.report is not None:
            self.report(min(1.0, (self.done + fraction) / self.total), desc=desc)

    def finish(self, **info) -> dict:
        self.bar.close()
        self.unet.eval()
        self.model.unet = self.acc.unwrap_model(self.unet).eval().requires_grad_(False)  # as load_diffusion
        return dict(losses=self.losses, seconds=time.perf_counter() - self.t0, config=asdict(self.cfg),
                    trainable_params=sum(p.numel() for p in self.params), **info)


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
    run = _Run(model, cfg, need_ref=True, total=cfg.epochs * (1 + n_batches), progress=progress,
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
        for groups in _inner_batches(cfg.groups, cfg.batch_groups, cfg.inner_epochs):
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
) -> dict:
    """DDPO-IS: PPO on per-step importance ratios, reward = ``reward_fn(final images in [-1, 1])``.

    Advantages are the epoch's rewards standardised and clipped; ``kl_beta`` > 0 adds the exact
    per-step KL to the frozen pre-adapter UNet (``rlhf.losses.gaussian_kl``). Returns losses, mean reward per epoch, seconds.
    """
    cfg = config or DDPOConfig()
    n_batches = -(-cfg.images // cfg.batch_size) * cfg.inner_epochs
    run = _Run(model, cfg, need_ref=cfg.kl_beta > 0, total=cfg.epochs * (1 + n_batches), progress=progress,
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
        adv = standardise_advantages(all_rewards, cfg.adv_clip)
        adv = adv[run.acc.process_index * len(traj):(run.acc.process_index + 1) * len(traj)]
        for rows in _inner_batches(len(traj), cfg.batch_size, cfg.inner_epochs):
            a = adv[rows].to(dev)
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
                loss, info = ddpo_loss(gaussian_log_prob(x_prev, mean, std), traj.log_probs[rows, j].to(dev), a,
                                       cfg.clip_range, kl, cfg.kl_beta)
                fractions.append(info["clipfrac"])
                return loss

            run.optimise(step_loss)
            clipfrac.append(float(np.mean(fractions)))
    return run.finish(reward_mean=reward_mean, clipfrac=clipfrac)
