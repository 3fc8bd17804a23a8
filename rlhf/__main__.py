"""``python -m rlhf compare ...``: guidance against RLHF, D3PO and censor-then-distil on the same simulated labels."""

from __future__ import annotations

import argparse
import os
import sys

from censor.cli.args import add_model_args, dispatch, positive_int
from censor.core.errors import CensorError
from censor.core.settings import DEFAULT_GUIDANCE
from censor.diffusion.models import EMBEDDED_MODEL_DIR, load_diffusion
from censor.eval.oracle import load_oracle, load_reference
from censor.labels.pool import load_pool
from rlhf.compare import METHODS, CompareConfig, markdown_table, run_compare
from rlhf.configs import ADV_SCALES, DDPO_BASELINES, DISTIL_TARGETS, DDPOConfig, DistilConfig
from rlhf.finetune import MIXED_PRECISION


def _config(a, **extra) -> CompareConfig:
    """The comparison's settings from the options ``compare`` and ``curve`` share, plus ``extra``."""
    return CompareConfig(feature=a.feature, budget=a.budget, seeds=a.seeds, n=a.n, steps=a.steps,
                         train_steps=a.train_steps, guidance_weight=a.weight, lr=a.lr, d3po_lr=a.d3po_lr,
                         kl_beta=a.kl_beta, full=a.full, ddpo_images=a.ddpo_images, inner_epochs=a.inner_epochs,
                         lora_target=a.lora_target, ddpo_baseline=a.ddpo_baseline,
                         ddpo_adv_scale=a.ddpo_adv_scale, **extra)


def one_process(command: str) -> None:
    """``compare`` and ``curve`` run every method and write every gallery themselves: under ``accelerate
    launch`` each process would repeat the whole benchmark and write the same files (measured: galleries
    twice). Only ``finetune`` is a loop that shares its work over processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CensorError(f"`{command}` runs in one process; launch it with plain python (accelerate launch is for "
                          "`python -m rlhf finetune`, whose loop shares its rollouts and gradients over processes)")


def cmd_compare(a) -> None:
    one_process("compare")
    cfg = _config(a, epochs=a.epochs, methods=tuple(a.methods),
                  distil=DistilConfig(target=a.distil_target, images=a.distil_images, drop=a.distil_drop, steps=a.distil_steps,
                                      batch_size=a.distil_batch, lr=a.distil_lr, anchor=a.distil_anchor,
                                      ema=a.distil_ema, full=not a.distil_lora, lora_target=a.lora_target))
    model = load_diffusion(a.model)
    result = run_compare(cfg, model, load_oracle(), load_pool(model_dir=a.model), load_reference(),
                         out_dir=a.out, cache_dir=a.cache)
    print(markdown_table(result), end="")


def cmd_curve(a) -> None:
    from rlhf.curves import CurveConfig, markdown_curve, run_curve

    one_process("curve")
    cfg = CurveConfig(_config(a, methods=("baseline", "censored", "rlhf")), at=a.at)
    model = load_diffusion(a.model)
    result = run_curve(cfg, model, load_oracle(), load_pool(model_dir=a.model), load_reference(), out_dir=a.out,
                       cache_dir=a.cache)
    print(markdown_curve(result), end="")


def cmd_finetune(a) -> None:
    from censor.cli.args import model_from_args
    from rlhf.finetune import run_finetune

    cfg = DDPOConfig(steps=a.train_steps, epochs=a.epochs, images=a.images, batch_size=a.batch, lr=a.lr,
                     full=a.full, lora_rank=a.lora_rank, lora_target=a.lora_target, kl_beta=a.kl_beta, seed=a.seed,
                     baseline=a.baseline, adv_scale=a.adv_scale)
    run_finetune(lambda device: model_from_args(_on(a, device)), a.reward, cfg, a.out, device=a.device,
                 mixed_precision=a.mixed_precision)


def _on(a, device: str):
    """The parsed options with ``device`` (the one accelerate assigned this process)."""
    b = argparse.Namespace(**vars(a))
    b.device = device
    return b


def _shared(c: argparse.ArgumentParser, seeds: int, out: str) -> None:
    """The options ``compare`` and ``curve`` share (each parser its own: argparse's set_defaults on a parser
    rewrites the defaults of the very action objects it holds)."""
    c.add_argument("--feature", default="bags")
    c.add_argument("--budget", type=positive_int, default=100, help="human labels per method")
    c.add_argument("--seeds", type=positive_int, default=seeds, help="labelling seeds")
    c.add_argument("--n", type=positive_int, default=300, help="gallery images per seed and method")
    c.add_argument("--steps", type=positive_int, default=25, help="sampling steps of the galleries")
    c.add_argument("--train-steps", type=positive_int, default=10, help="DDIM steps of fine-tuning rollouts")
    c.add_argument("--weight", type=float, default=DEFAULT_GUIDANCE.weight,
                   help="ω of the default guidance (censor/core/settings.py) for the censored methods")
    c.add_argument("--ddpo-images", type=positive_int, default=CompareConfig.ddpo_images,
                   help="DDPO rollouts per epoch (two optimiser steps each)")
    c.add_argument("--lr", type=float, default=CompareConfig.lr, help="RLHF learning rate")
    c.add_argument("--d3po-lr", type=float, default=CompareConfig.d3po_lr, help="D3PO learning rate")
    c.add_argument("--full", dest="full", action="store_true", help="RLHF and D3PO train every weight (the default)")
    c.add_argument("--lora", dest="full", action="store_false",
                   help="RLHF and D3PO train LoRA adapters (--lora-target) instead of every weight")
    c.add_argument("--inner-epochs", type=positive_int, default=1,
                   help="passes over each batch of labelled or rewarded rollouts (costs no labels)")
    c.add_argument("--lora-target", default="attention", choices=("attention", "attention+convs"))
    c.add_argument("--kl-beta", type=float, default=CompareConfig.kl_beta,
                   help="per-step KL penalty of RLHF to the frozen model")
    c.add_argument("--ddpo-baseline", choices=DDPO_BASELINES, default=CompareConfig.ddpo_baseline,
                   help="RLHF's advantages: the batch-mean baseline, or the reward's value of each step's x_t")
    c.add_argument("--ddpo-adv-scale", choices=ADV_SCALES, default=CompareConfig.ddpo_adv_scale,
                   help="RLHF's advantages divided by the batch's std (DDPO), or left in log r's units ('none': with "
                        "--kl-beta 1 the optimum is p_data·r)")
    c.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    c.add_argument("--out", default=out)
    c.add_argument("--cache", default="runs/bench_cache")
    c.set_defaults(full=CompareConfig.full)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlhf", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="baseline, censored sampling, RLHF (DDPO), D3PO, D3PO+censored and censor-then-distil")
    _shared(c, seeds=3, out="docs/bench")
    c.add_argument("--epochs", type=positive_int, default=CompareConfig.epochs, help="DDPO epochs")
    c.add_argument("--distil-target", choices=DISTIL_TARGETS, default=DistilConfig.target,
                   help="what distil learns: the censored samples (images) or the censored sampler's steps")
    c.add_argument("--distil-images", type=positive_int, default=DistilConfig.images,
                   help="censored samples the distil method learns from")
    c.add_argument("--distil-drop", type=float, default=DistilConfig.drop,
                   help="fraction of them the reward scores most malign, left out")
    c.add_argument("--distil-steps", type=positive_int, default=DistilConfig.steps, help="distil optimiser steps")
    c.add_argument("--distil-batch", type=positive_int, default=DistilConfig.batch_size)
    c.add_argument("--distil-lr", type=float, default=DistilConfig.lr)
    c.add_argument("--distil-anchor", type=float, default=DistilConfig.anchor, help="L2 pull to the original weights")
    c.add_argument("--distil-ema", type=float, default=DistilConfig.ema,
                   help="keep the moving average of the distilled weights with this decay (0: the last weights)")
    c.add_argument("--distil-lora", action="store_true", help="distil into LoRA adapters (--lora-target) instead of "
                   "every weight")
    c.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    c.set_defaults(fn=cmd_compare)
    k = sub.add_parser("curve", help="RLHF (DDPO) judged after several epochs: malign %% and tv against CPU minutes")
    _shared(k, seeds=1, out="docs/bench/rlhf_curves")
    k.add_argument("--at", type=positive_int, nargs="+", default=[2, 5, 10, 20], help="DDPO epochs to judge")
    k.set_defaults(fn=cmd_curve)
    add_finetune_parser(sub)
    return p


def add_finetune_parser(sub) -> None:
    d = DDPOConfig()
    f = sub.add_parser("finetune", help="RLHF (DDPO) of any model against a saved reward (accelerate launch for GPUs)")
    add_model_args(f)
    f.add_argument("--reward", required=True, help="a saved reward folder (a studio session's), trained on this model")
    f.add_argument("--out", required=True, help="the adapter folder to write")
    f.add_argument("--epochs", type=positive_int, default=d.epochs)
    f.add_argument("--images", type=positive_int, default=d.images, help="rollouts per epoch and process")
    f.add_argument("--batch", type=positive_int, default=d.batch_size, help="rollouts per optimiser step")
    f.add_argument("--train-steps", type=positive_int, default=d.steps, help="DDIM steps of a rollout")
    f.add_argument("--lr", type=float, default=d.lr)
    f.add_argument("--full", action="store_true", help="train every weight instead of LoRA adapters")
    f.add_argument("--lora-rank", type=positive_int, default=d.lora_rank)
    f.add_argument("--lora-target", default=d.lora_target, choices=["attention", "attention+convs"])
    f.add_argument("--kl-beta", type=float, default=d.kl_beta, help="per-step KL penalty to the frozen model")
    f.add_argument("--baseline", choices=DDPO_BASELINES, default=d.baseline,
                   help="advantages: the batch-mean baseline, or the reward's value of each step's x_t")
    f.add_argument("--adv-scale", choices=ADV_SCALES, default=d.adv_scale,
                   help="advantages divided by the batch's std (DDPO), or left in log r's units")
    f.add_argument("--seed", type=int, default=d.seed)
    f.add_argument("--mixed-precision", default="no", choices=MIXED_PRECISION)
    f.set_defaults(fn=cmd_finetune)


def main(argv=None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
