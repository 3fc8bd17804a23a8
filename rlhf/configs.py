"""The settings of the D3PO and DDPO loops (``rlhf.train``), of censor-then-distil and of a comparison of them all,
checked before a run: config as data, read by the CLI, the studio tab and the benchmarks alike."""

from __future__ import annotations

from dataclasses import dataclass, field

from censor.core.errors import CensorError
from censor.core.settings import DEFAULT_GUIDANCE, MEMBERS
from censor.eval.features import feature_spec


@dataclass
class CommonConfig:
    """What D3PO and DDPO share: the policy's rollouts, the adapter and the optimiser."""

    steps: int = 20  # S respaced DDIM steps, all of them trained
    eta: float = 1.0  # DDIM stochasticity: the policy's σ_t = eta * DDPM posterior σ
    epochs: int = 10
    lr: float = 3e-4  # for LoRA; 1e-4 moved the embedded model with full fine-tuning (docs/benchmarks.md)
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    full: bool = False  # train every weight instead of LoRA (tiny models only)
    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_target: str = "attention"  # or "attention+convs"
    seed: int = 0
    rollout_batch: int = 64
    inner_epochs: int = 1  # passes over one epoch's trajectories (labels and rewards are reused: free)
    # steps whose policy σ_t is below this are sampled but not trained: their score (x_{t-1}-μ)/σ_t²·∂μ
    # has noise ∝ 1/σ_t and no more signal, and the last step (onto ᾱ_0, σ ≈ 0.01) swamped every other
    # step's gradient (docs/benchmarks.md, issue 22)
    min_sigma: float = 0.05

    def check(self) -> None:
        for name in ("steps", "epochs", "rollout_batch", "inner_epochs"):
            if getattr(self, name) < 1:
                raise CensorError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eta <= 0:
            raise CensorError(f"eta must be > 0 for a stochastic policy, got {self.eta}")
        if self.lr <= 0:
            raise CensorError(f"lr must be positive, got {self.lr}")
        if self.min_sigma < 0:
            raise CensorError(f"min_sigma must be >= 0, got {self.min_sigma}")


@dataclass
class D3POConfig(CommonConfig):
    groups: int = 4  # initial noises x_T per epoch
    group_size: int = 7  # images per x_T; every benign/malign pair inside a group is a preference
    batch_groups: int = 2  # groups per optimiser step
    beta: float = 0.1
    eps: float = 0.1  # ratio clamp [1-eps, 1+eps]

    def check(self) -> None:
        super().check()
        if self.groups < 1 or self.group_size < 2 or self.batch_groups < 1:
            raise CensorError("D3PO needs groups >= 1, group_size >= 2 and batch_groups >= 1")


DDPO_BASELINES = ("mean", "value")
ADV_SCALES = ("std", "none")


@dataclass
class DDPOConfig(CommonConfig):
    images: int = 16  # trajectories per epoch
    batch_size: int = 8  # trajectories per optimiser step
    clip_range: float = 1e-4  # PPO ratio clip (DDPO's default; the thesis used 0.2)
    adv_clip: float = 5.0
    kl_beta: float = 0.0  # per-step KL penalty to the frozen model (off as in DDPO)
    # "mean": every step of a trajectory gets its standardised reward (DDPO); "value": step j gets R − V(x_t), V the
    # time-dependent reward's log P(benign | x_t) (rlhf.train.value_from), so credit goes where the outcome was decided
    baseline: str = "mean"
    # "std": advantages divided by the batch's std (DDPO); "none": left in the reward's units, so that with the
    # reward log r and kl_beta 1 the optimum is p_data·r (rlhf.losses.standardise_advantages)
    adv_scale: str = "std"

    def check(self) -> None:
        super().check()
        if self.images < 2 or self.batch_size < 1:
            raise CensorError("DDPO needs images >= 2 and batch_size >= 1")
        if self.adv_scale not in ADV_SCALES:
            raise CensorError(f"DDPO's advantage scale is one of {', '.join(ADV_SCALES)}, got {self.adv_scale!r}")
        if self.baseline not in DDPO_BASELINES:
            raise CensorError(f"DDPO's baseline is one of {', '.join(DDPO_BASELINES)}, got {self.baseline!r}")


DISTIL_TARGETS = ("images", "steps")


@dataclass
class DistilConfig:
    """Censor-then-distil (``rlhf.distil``): the censored samples it learns from and the fine-tune on them."""

    # what the student learns (rlhf.distil): "images", the denoising loss on the censored samples, or "steps", the
    # censored sampler's own step at every recorded x_t (it then retraces the censored gallery from the same x_T).
    # Measured (docs/benchmarks.md, censor-then-distil, second part; 300 trajectories, 600 steps): steps keeps the
    # classes (tv 0.06 on bags and trousers, under the floor) where images moved them (tv 0.14-0.16, confident
    # 0.56-0.60 against 0.70), and removes less (seed 0: bags 3.0% against 2.3%, trousers 1.0% against 0.0%; over two
    # seeds steps left bags 3.7%, trousers 2.5%: the student does not learn all of the guidance's correction)
    target: str = "steps"
    # trajectories (steps) or images drawn to distil from: 300 trajectories did as well as 1000 (bags 3.0% / 3.7%);
    # the images target needed 1000 (300: 4.7-6.7% bags; 1000 with drop 0.1: 2.3%)
    images: int = 300
    drop: float = 0.1  # fraction of them the reward scores most malign, left out (the reward, never the oracle)
    steps: int = 600  # optimiser steps of the denoising loss
    batch_size: int = 32
    lr: float = 1e-4  # small: the model should move towards p_data·r, not forget p_data
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    anchor: float = 0.0  # L2 pull of the trained weights to where they started (summed over weights)
    # the result is an exponential moving average of the weights, started at the original ones (0: the last
    # weights): the shipped model is an EMA too, and single Adam steps on a few hundred images are noisy
    ema: float = 0.99  # without it: tv 0.27 and confident 0.53 (baseline 0.70) at 300 images / 300 steps
    flip: bool = True  # random horizontal flips, as the embedded model was trained with (target "images" only)
    full: bool = True  # every weight: LoRA r4 barely moves the embedded model (docs/benchmarks.md, issue 22)
    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_target: str = "attention"
    seed: int = 0

    def check(self) -> None:
        for name in ("images", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise CensorError(f"distil {name} must be at least 1, got {getattr(self, name)}")
        if self.target not in DISTIL_TARGETS:
            raise CensorError(f"distil target is one of {', '.join(DISTIL_TARGETS)}, got {self.target!r}")
        if not 0 <= self.drop < 1:
            raise CensorError(f"distil drop must be a fraction in [0, 1), got {self.drop}")
        if round(self.images * (1 - self.drop)) < 1:
            raise CensorError(f"dropping {self.drop:.0%} of {self.images} images leaves none to distil from")
        if self.lr <= 0:
            raise CensorError(f"distil lr must be positive, got {self.lr}")
        if not 0 <= self.ema < 1:
            raise CensorError(f"distil ema must be a decay in [0, 1), got {self.ema}")
        if self.anchor < 0 or self.weight_decay < 0:
            raise CensorError("distil anchor and weight_decay must be >= 0")


METHODS = ("baseline", "censored", "rlhf", "d3po", "d3po+censored", "distil")
REWARDED = ("censored", "rlhf", "d3po+censored", "distil")  # the methods that need the reward ensemble


@dataclass
class CompareConfig:
    """``rlhf compare``'s run: the labels, the galleries and each method's settings (``ddpo``, ``d3po``, ``distil``)."""

    feature: str = "bags"
    budget: int = 100  # human labels per method (d3po+censored spends two budgets)
    seeds: int = 3
    n: int = 300  # gallery images per seed and method
    steps: int = 25  # sampling steps of every gallery
    train_steps: int = 10  # DDIM steps of the fine-tuning rollouts
    guidance_weight: float = DEFAULT_GUIDANCE.weight
    members: int = MEMBERS
    # RLHF and D3PO defaults (docs/benchmarks.md, "Fine-tuning that moves the model, second part"; bags, one seed):
    # LoRA r4 left every malign count exactly where it was, so every weight trains; without the KL DDPO reached 3.3%
    # by reshuffling the classes (tv 0.30 against a floor of 0.11), with β 10 it kept them (tv 0.08) but stayed
    # at 6-9%; β 1 is the point between (5.7% at tv 0.14 after 10 epochs, 3.3% at tv 0.16 after 30)
    epochs: int = 10  # DDPO epochs (reward-model rollouts cost no labels)
    ddpo_images: int = 64
    d3po_group_size: int = 7
    lr: float = 1e-4  # RLHF's
    # D3PO's own: with every weight trained, 1e-4 collapsed trousers (0% malign, but 59% bags, tv 0.56, recall 0.42×)
    # and 3e-5 still moved the classes (tv 0.24); 1e-5 kept them (tv 0.09 against a floor of 0.13) and removed little
    d3po_lr: float = 1e-5
    inner_epochs: int = 1  # passes over each batch of labelled / rewarded rollouts (no extra labels)
    lora_target: str = "attention"  # or "attention+convs" (the small model has few attention layers)
    kl_beta: float = 1.0  # RLHF's exact per-step KL to the frozen model (rlhf.losses.gaussian_kl)
    ddpo_baseline: str = DDPOConfig.baseline  # RLHF's advantages: the batch's standardised reward, or R − V(x_t) per step
    ddpo_adv_scale: str = DDPOConfig.adv_scale  # RLHF's advantages divided by the batch's std, or "none"
    full: bool = True  # RLHF and D3PO train every weight (the embedded UNet has 1.1M) instead of LoRA adapters
    methods: tuple[str, ...] = METHODS
    distil: DistilConfig = field(default_factory=DistilConfig)  # its seed is the labelling seed's

    def __post_init__(self):
        feature_spec(self.feature)
        self.distil.check()
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise CensorError(f"unknown method(s) {', '.join(sorted(unknown))}; use {', '.join(METHODS)}")
        if min(self.budget, self.seeds, self.n, self.steps, self.train_steps, self.epochs, self.inner_epochs) < 1:
            raise CensorError("budget, seeds, n, steps, train_steps, epochs and inner_epochs must be positive")
        if self.lora_target not in ("attention", "attention+convs"):
            raise CensorError(f"lora_target must be 'attention' or 'attention+convs', got {self.lora_target!r}")
        if self.budget < 2 * self.d3po_group_size:
            raise CensorError(f"a budget of {self.budget} labels is under two D3PO groups of {self.d3po_group_size}")
        self.methods = tuple(self.methods)

    def ddpo(self, seed: int, epochs: int | None = None) -> DDPOConfig:
        """The RLHF arm's DDPO settings (two optimiser steps per epoch of rollouts)."""
        return DDPOConfig(steps=self.train_steps, epochs=epochs or self.epochs, images=self.ddpo_images,
                          batch_size=max(1, self.ddpo_images // 2), lr=self.lr, kl_beta=self.kl_beta, seed=seed,
                          inner_epochs=self.inner_epochs, lora_target=self.lora_target, full=self.full,
                          baseline=self.ddpo_baseline, adv_scale=self.ddpo_adv_scale)

    def d3po(self, seed: int) -> D3POConfig:
        """The D3PO arm's settings: one labelling round of ``budget // d3po_group_size`` groups."""
        groups = self.budget // self.d3po_group_size
        return D3POConfig(steps=self.train_steps, epochs=1, groups=groups, group_size=self.d3po_group_size,
                          batch_groups=max(1, groups // 4), lr=self.d3po_lr, seed=seed, inner_epochs=self.inner_epochs,
                          lora_target=self.lora_target, full=self.full)
