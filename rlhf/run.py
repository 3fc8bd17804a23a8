"""What the D3PO and DDPO loops share (``rlhf.train``): the accelerator, the trainable weights and their
optimiser, the frozen reference, per-image rollout seeds, the steps that are trained, progress and Cancel.

One ``Run`` per training call. Its rollouts give every image its own step-noise seed (``step_seed``), so k
data-parallel processes of n images roll out exactly what one process of k·n would.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from censor.core.errors import CensorError
from censor.core.progress import reporter
from censor.diffusion.models import DiffusionModel
from censor.sampling.loop import seeds_for
from rlhf.adapters import frozen_reference, make_trainable
from rlhf.configs import CommonConfig
from rlhf.rollout import Trajectory, make_rollout_scheduler, rollout, step_log_prob, step_sigmas

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


def inner_batches(n: int, size: int, passes: int):
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


class Run:
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
