"""Training reward models from a person's labels (1 = benign, 0 = malign).

- Loss: ``BCEWithLogitsLoss(pos_weight=alpha)``; alpha < 1 down-weights the abundant benign class
  (the paper: 0.02-0.1), AdamW (lr per kind, the paper's 3e-4 unless ``architectures.REGISTRY``
  says otherwise; weight decay 0.05), linear decay, a fixed budget.
- Ensemble (benign-dominant): member k sees *every* malign label and its own bootstrap draw of the
  benign labels, so rare malign examples are never left out and members disagree where data is thin.
- Time-dependent kinds train on x_t = q_sample(x0, t), t ~ U{0..T-1}, with the diffusion model's
  own schedule (after a share of clean views at t = 0 where the kind asks for one, ``clean_warmup``);
  clean-image kinds train on x0.
- Imitation rounds: ``train_reward(..., resume=previous)`` continues from the previous round's
  weights *and* optimizer state on the grown label set.
- Region feedback (``boxes=``): ``rewards.local.patch_loss`` besides, each box warped with its image.
"""

from __future__ import annotations

import math
import time
import numpy as np
import torch
import torch.nn.functional as F

from censor.core.data import to_model_range
from censor.core.errors import CensorError
from censor.core.progress import SEP, Progress, part, reporter, stages
from censor.core.settings import ALPHA, HINGE_QUANTILES, ITERATIONS, MEMBERS
from censor.rewards.architectures import REGISTRY, REWARD_KINDS, TIME_DEPENDENT, build_member, region_input, reward_shape
from censor.rewards.calibration import calibrated_score
from censor.rewards.ensemble import RewardEnsemble, model_fingerprint
from censor.rewards.local import PASTE, pasted_marks, scored_with_region
from censor.rewards.taps import unet_taps


BANK_DRAWS, BANK_PASS = 32, 32  # augmented views per label in a feature bank; images per encoder pass (~0.1 s)
# One encoder pass of one image (a bank view, a score-table timestep) against one head iteration of the
# default batch: 0.7 ms and 6 ms on the 2-core CPU (tests/progress_gaps.py). Sizes a job's bar stages.
PASS_PER_IMAGE = 0.12
HEAD_ITERATION_STEPS = 3.0  # one head iteration in unguided sampler image-steps (2 ms): to weigh training
# against sampling in one bar


def check_labels(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(images), np.asarray(labels)
    if len(labels) == 0:
        raise CensorError("no labels yet: label some images as benign or malign first")
    if len(images) != len(labels):
        raise CensorError(f"{len(images)} images but {len(labels)} labels")
    if not np.isin(labels, (0, 1)).all():
        raise CensorError("labels must be 1 (benign) or 0 (malign); drop 'unsure' images before training")
    if (labels == 0).sum() == 0:
        raise CensorError("no malign example among the labels: the reward cannot learn what to avoid")
    if (labels == 1).sum() == 0:
        raise CensorError("no benign example among the labels: the reward cannot learn what to keep")
    return images, labels.astype(np.int64)


def bootstrap_indices(labels: np.ndarray, members: int, rng: np.random.Generator,
                      bootstrap: bool | None = None) -> list[np.ndarray]:
    """Per member: all malign indices + a with-replacement draw of as many benign indices as exist.

    By default a single model gets the labels as they are (the paper's "union"); ``bootstrap=True``
    gives it one member's draw instead (the paper's "single").
    """
    malign, benign = np.where(labels == 0)[0], np.where(labels == 1)[0]
    if not (members > 1 if bootstrap is None else bootstrap):
        return [np.arange(len(labels))]
    return [np.concatenate([malign, rng.choice(benign, size=len(benign), replace=True)]) for _ in range(members)]


def augment(x: torch.Tensor, gen: torch.Generator, max_degrees: float = 10.0, max_shift: float = 2.0,
            vflip: bool = False) -> torch.Tensor:
    """Per-sample random horizontal flip, rotation (+-10 deg) and shift (+-2 px) via one affine warp; with
    ``vflip`` a random vertical flip too (a reward kind for local marks: ``RewardKind.vflip``)."""
    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_degrees)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * max_shift / torch.tensor([w, h]))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # drawn after the others only when asked: every other kind's views stay the ones it was measured with
    up = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if vflip else torch.ones(n)
    theta = torch.stack([torch.stack([cos * flip, -sin * up, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos * up, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # background is -1 (black): pad with it by shifting to 0-padding space and back
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def noised_views(x0: torch.Tensor, sched, gen: torch.Generator, masks: torch.Tensor | None = None,
                 vflip: bool = False):
    """Augmented copies, and for time-dependent rewards x_t = q_sample(x0, t) with t ~ U{0..T-1}. With
    ``masks`` [N, H, W] (boxes) also the masks, warped alike (a channel shifted to pad with 0): (x, t, masks)."""
    x = augment(x0 if masks is None else torch.cat([x0, masks[:, None] - 1], 1), gen, vflip=vflip)
    x, masks = (x, None) if masks is None else (x[:, :-1], x[:, -1] + 1)
    t = None
    if sched is not None:
        t = torch.randint(0, sched.config.num_train_timesteps, (len(x),), generator=gen)
        x = sched.add_noise(x, torch.randn(x.shape, generator=gen), t)
    return (x, t) if masks is None else (x, t, masks)


class FeatureBank:
    """Frozen-encoder taps of ``draws`` augmented, noised views of every labelled image.

    Kept in float16 (half the memory for imitation rounds with hundreds of labels); the heads
    train in float32. ``progress`` hears after every chunk: on a CPU the bank is seconds of work.
    """

    def __init__(self, unet, x_all: torch.Tensor, sched, gen: torch.Generator, draws: int = BANK_DRAWS,
                 chunk: int = 256, progress: Progress | None = None):
        per_draw, report = [], reporter(progress)
        passes = draws * -(-len(x_all) // BANK_PASS)
        with torch.no_grad():
            for d in range(draws):
                views = []
                for c in x_all.split(chunk):  # the random views per chunk of 256, as before: the same bank
                    x, t = noised_views(c, sched, gen)
                    for i in range(0, len(x), BANK_PASS):  # the encoder in smaller passes, each reported
                        views.append(unet_taps(unet, x[i:i + BANK_PASS], None if t is None else t[i:i + BANK_PASS]))
                        if report is not None:
                            report((d * passes // draws + len(views)) / passes,
                                   desc=f"encoding {len(x_all)} labels (view {d + 1} of {draws})")
                per_draw.append([torch.cat(tap).half() for tap in zip(*views)])
        self.taps = [torch.stack(tap, 1) for tap in zip(*per_draw)]  # each [n_images, draws, C, h, w]
        self.gen_state = gen.get_state()  # where the generator stood after it: a shared bank trains as a fresh one

    def subset(self, image_idx) -> "FeatureBank":
        """The bank of some of its images (a held-out check's training split): no encoder pass, and
        the held-out images' views are not in it."""
        sub = object.__new__(FeatureBank)
        idx = torch.as_tensor(np.asarray(image_idx), dtype=torch.long)
        sub.taps, sub.gen_state = [tap[idx] for tap in self.taps], self.gen_state
        return sub

    def draw(self, image_idx: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        which = torch.randint(0, self.taps[0].shape[1], (len(image_idx),), generator=gen)
        return [tap[image_idx, which].float() for tap in self.taps]


SCORE_TIMESTEPS = tuple(range(0, 1000, 50)) + (999,)
SCORE_QUANTILES = HINGE_QUANTILES
SCORE_IMAGES = 200  # benign labels the score table is measured on


@torch.no_grad()
def benign_score_table(reward, x_benign: torch.Tensor, sched, gen: torch.Generator, max_images: int = SCORE_IMAGES,
                       timesteps=SCORE_TIMESTEPS, quantiles=SCORE_QUANTILES, progress: Progress | None = None) -> dict:
    """Quantiles of the reward's calibrated score (``guidance.calibrated_score``) on noised
    copies of its benign labels at each timestep: where the per-timestep hinge sits
    (guidance.hinge_schedule). JSON-safe, kept in the reward's info."""
    x0 = x_benign[torch.randperm(len(x_benign), generator=gen)[:max_images]]
    rows = []
    for t in timesteps:
        tt = torch.full((len(x0),), int(t), dtype=torch.long)
        xt = sched.add_noise(x0, torch.randn(x0.shape, generator=gen), tt) if t > 0 else x0
        score = calibrated_score(reward, xt, tt).double().numpy()
        rows.append([round(float(np.quantile(score, q)), 5) for q in quantiles])
        if progress is not None:
            progress(len(rows) / len(timesteps))
    return dict(t=list(timesteps), quantiles=list(quantiles), scores=rows, images=int(len(x0)))


def model_inputs(images: np.ndarray, kind: str, diffusion) -> torch.Tensor:
    """What a reward of ``kind`` trains on: images in the model's range, or, for a time-dependent
    reward of a latent model, their latents (it judges noised latents)."""
    x_all = to_model_range(images)
    if TIME_DEPENDENT[kind] and diffusion is not None and diffusion.is_latent:
        with torch.no_grad():
            x_all = torch.cat([diffusion.encode(c) for c in x_all.split(32)])
    return x_all


def feature_bank(images: np.ndarray, kind: str, diffusion, seed: int = 0,
                 progress: Progress | None = None) -> FeatureBank | None:
    """The bank ``train_reward(images, ..., seed=seed)`` would encode for itself (None for kinds
    without one): built once, it serves the final reward whole and a held-out check by ``subset``."""
    if kind != "ddpm-encoder":
        return None
    gen = torch.Generator().manual_seed(seed)
    return FeatureBank(diffusion.unet, model_inputs(images, kind, diffusion), diffusion.scheduler, gen,
                       progress=progress)


def training_cost(labels: int, members: int, iterations: int, kind: str, score_table: bool = True,
                  split: bool = False, encoded: bool = False) -> float | dict[str, float]:
    """What ``train_reward`` costs, in head iterations: the encoding (ddpm-encoder's feature bank; none
    when ``encoded``, a bank given), the members' iterations and the benign-score table; ``split``
    gives each stage's share (bar sizes)."""
    costs = dict(encoding=PASS_PER_IMAGE * BANK_DRAWS * labels if kind == "ddpm-encoder" and not encoded else 0.0,
                 training=float(members * iterations),
                 scoring=PASS_PER_IMAGE * len(SCORE_TIMESTEPS) * min(labels, SCORE_IMAGES) if score_table and TIME_DEPENDENT[kind] else 0.0)
    return costs if split else sum(costs.values())


def train_reward(
    images: np.ndarray, labels: np.ndarray, kind: str = "ddpm-encoder", diffusion=None, members: int = MEMBERS,
    alpha: float = ALPHA, iterations: int = ITERATIONS, batch_size: int = 64, lr: float | None = None,
    weight_decay: float = 0.05, init: str = "random", seed: int = 0, resume: RewardEnsemble | None = None,
    progress: Progress | None = None, bootstrap: bool | None = None, score_table: bool = True,
    bank: FeatureBank | None = None, boxes: list | None = None, paste: int = PASTE,
) -> RewardEnsemble:
    """Train a K-member ensemble (K=1: a single model) on uint8 images and 0/1 labels.

    ``progress(fraction, desc=...)`` hears at every iteration of every member ("member 2 of 4 ·
    iteration 120 of 400") and inside the encoding and the benign-score table, so a job's Cancel lands
    within a fraction of a second. ``score_table=False`` skips the table (a reward only scored, never
    used to guide, e.g. a held-out check). ``bank``: a ddpm-encoder bank of exactly these images
    (``feature_bank``, or its ``subset``), so a second training on them skips the encoding. ``boxes``: one
    (x0, y0, x1, y1) or None per label (malign ones only) for a kind that scores positions; None: as without.
    ``paste``: copies of each boxed mark pasted onto benign labels as more malign ones (``local.pasted_marks``)."""
    images, labels = check_labels(images, labels)
    person = dict(labels=int(len(labels)), malign_labels=int((labels == 0).sum()), benign_labels=int((labels == 1).sum()),
                  boxes=sum(map(bool, boxes or [])))  # the person's, before any pasting
    if kind not in REWARD_KINDS:
        raise CensorError(f"unknown reward kind {kind!r}; use one of {', '.join(REWARD_KINDS)}")
    if not (members >= 1 and iterations >= 1 and batch_size >= 1 and alpha > 0 and paste >= 0):
        raise CensorError("members, iterations and batch size must be >= 1, alpha > 0 and paste >= 0")
    if TIME_DEPENDENT[kind] and diffusion is None:
        raise CensorError(f"a time-dependent {kind} reward needs the diffusion model's noise schedule")
    if resume is not None and (resume.kind != kind or len(resume.members) != members):
        raise CensorError("an imitation round must continue the same reward kind and ensemble size")
    lr = REGISTRY[kind].lr if lr is None else lr
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if bank is not None and (kind != "ddpm-encoder" or len(bank.taps[0]) != len(labels)):
        raise CensorError(f"a feature bank of {len(bank.taps[0])} images cannot train a {kind} reward on {len(labels)}")
    if boxes is not None and paste > 0:  # its own random stream: without boxes a reward trains exactly as before
        region_input(kind, boxes, labels, images.shape[1:3], images.shape[1:3])  # refuses bad boxes before they are read
        images, labels, boxes = pasted_marks(images, labels, boxes, np.random.default_rng([seed, 0x5041]), paste)
    x_all = model_inputs(images, kind, diffusion)
    y_all = torch.as_tensor(labels, dtype=torch.float32)
    m_all = None if boxes is None else region_input(kind, boxes, labels, images.shape[1:3], x_all.shape[-2:])
    subsets = bootstrap_indices(labels, members, rng, bootstrap)
    sched = diffusion.scheduler if TIME_DEPENDENT[kind] else None
    start = time.time()
    table = score_table and sched is not None
    stage = stages(progress, training_cost(len(labels), members, iterations, kind, table, split=True,
                                           encoded=bank is not None))
    # A frozen encoder gives the same features to every member: compute them once for a bank of
    # augmented, noised copies and train only the heads on it (5 members cost ~1 member's forwards).
    if bank is not None:
        gen.set_state(bank.gen_state)
    elif kind == "ddpm-encoder":
        bank = FeatureBank(diffusion.unet, x_all, sched, gen, progress=stage["encoding"])
    train_bar = stage["training"]
    warmup = int(REGISTRY[kind].clean_warmup * iterations) if sched is not None and resume is None else 0
    trained, opt_states = [], []
    for k, idx in enumerate(subsets):
        model = resume.members[k] if resume is not None else build_member(kind, diffusion, init)
        params = list(model.parameters())  # a ddpm-encoder member owns only its head; the UNet stays frozen
        for p in params:
            p.requires_grad_(True)
        model.train()
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        if resume is not None and resume.optimizer_states:
            opt.load_state_dict(resume.optimizer_states[k])
        decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / iterations)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(alpha))
        idx = torch.as_tensor(idx)
        for it in range(iterations):
            b = idx[torch.randint(0, len(idx), (batch_size,), generator=gen)]
            if bank is not None:
                logits, region = model.head(bank.draw(b, gen)), 0.0
            else:  # with boxes: the warped masks too, and the region term beside the image-level loss
                x, t, *m = noised_views(x_all[b], sched if it >= warmup else None, gen, None if m_all is None else m_all[b],
                                        vflip=REGISTRY[kind].vflip)
                t = torch.zeros(len(b), dtype=torch.long) if it < warmup else t
                logits, region = (model(x, t), 0.0) if m_all is None else scored_with_region(model, x, t, m[0], y_all[b])
            loss = loss_fn(logits, y_all[b]) + region
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay.step()
            if train_bar is not None:
                train_bar((k * iterations + it + 1) / (members * iterations),
                          desc=(f"member {k + 1} of {members}{SEP}" if members > 1 else "")
                          + f"iteration {it + 1} of {iterations}")
        if not math.isfinite(loss.item()):
            raise CensorError(f"reward training diverged (loss {loss.item()}); lower the learning rate")
        trained.append(model)
        opt_states.append(opt.state_dict())
    info = dict(
        kind=kind, members=members, alpha=alpha, iterations=iterations + (resume.info.get("iterations", 0) if resume else 0),
        batch_size=batch_size, lr=lr, init=init, seed=seed, **person, pasted=int(len(labels) - person["labels"]),
        paste=paste if boxes is not None else 0,
        rounds=(resume.info.get("rounds", 1) + 1) if resume else 1,
        train_seconds=round(time.time() - start + (resume.info.get("train_seconds", 0) if resume else 0), 2),
    )
    if diffusion is not None:
        info["model_fingerprint"] = model_fingerprint(diffusion.unet)
    ens = RewardEnsemble(kind, trained, reward_shape(kind, diffusion) if diffusion else tuple(x_all.shape[1:]), info)
    if table and bool((y_all == 1).any()):
        ens.eval()
        ens.info["benign_scores"] = benign_score_table(ens, x_all[y_all == 1], sched, gen,
                                                       progress=part(stage["scoring"], 0, 1, "benign-score table"))
    ens.optimizer_states = opt_states
    return ens.eval()
