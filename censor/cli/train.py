"""The commands that (re)build the shipped assets and time a studio session.

``python -m censor train-diffusion`` (the embedded DDPM), ``train-oracle`` (the evaluation oracle),
``train-backbone`` (the self-supervised ResNet18 reward backbone), ``session-timing`` (the README's
wall times of a three-minute session, without a browser).
"""

from __future__ import annotations

import argparse

from censor.core.data import DEFAULT_DATA_DIR, load_watermarked
from censor.diffusion import training as diffusion_training
from censor.eval import oracle_training
from censor.eval.oracle import ORACLE_DIR, load_oracle
from censor.rewards import pretrain
from censor.rewards.backbone import BACKBONE_DIR
from censor.studio.timing import session_timing


def cmd_train_diffusion(a) -> None:
    # the run's options are stored in its checkpoint (to resume it): only the training options
    options = argparse.Namespace(**{k: v for k, v in vars(a).items() if k not in ("fn", "command")})
    print(f"EMA weights exported to {diffusion_training.train(options)}")


def cmd_train_oracle(a) -> None:
    if a.reference_only:
        oracle = load_oracle(a.out)
        print(oracle_training.write_reference(oracle, load_watermarked("train", a.data),
                                              load_watermarked("test", a.data), a.out))
    else:
        print(oracle_training.train(a.data, a.epochs, out=a.out, threads=a.threads).metrics)


def cmd_train_backbone(a) -> None:
    print(pretrain.train(a.data, a.epochs, a.batch, subset=a.subset, out=a.out))


def cmd_session_timing(a) -> None:
    session_timing(a.feature, a.labels, a.reps)


def register_training(sub) -> None:
    p = sub.add_parser("train-diffusion", help="train (or resume) the embedded DDPM on Fashion-MNIST")
    p.add_argument("--data", default=str(DEFAULT_DATA_DIR), help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--run", default="runs/ddpm", help="checkpoint folder (resumed if it holds a checkpoint)")
    p.add_argument("--steps", type=int, default=8000, help="total optimisation steps to reach")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--decay-from", type=int, default=None, metavar="STEP",
                   help="cosine-decay the learning rate to 0 from this step to --steps (a cheap final polish)")
    p.add_argument("--snr-gamma", type=float, default=diffusion_training.SNR_GAMMA,
                   help="min-SNR weighting; 0 = plain MSE")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, metavar="MODEL_DIR",
                   help="with no checkpoint in --run: start from these weights (e.g. assets/ddpm) with a fresh "
                        "optimizer, continuing its step count; how a new machine resumes the shipped model")
    p.add_argument("--width", type=int, nargs=3, default=None, metavar="C",
                   help="block_out_channels for a bigger model (GPU runs), e.g. 64 128 128")
    p.set_defaults(fn=cmd_train_diffusion)

    o = sub.add_parser("train-oracle", help="train the evaluation oracle on the labelled, watermarked split")
    o.add_argument("--data", default=str(DEFAULT_DATA_DIR))
    o.add_argument("--epochs", type=int, default=12)
    o.add_argument("--out", default=str(ORACLE_DIR))
    o.add_argument("--threads", type=int, default=0)
    o.add_argument("--reference-only", action="store_true",
                   help="keep the trained oracle, only recompute its real-image reference")
    o.set_defaults(fn=cmd_train_oracle)

    b = sub.add_parser("train-backbone", help="self-supervised pretraining of the ResNet18 reward backbone")
    b.add_argument("--data", default=str(DEFAULT_DATA_DIR))
    b.add_argument("--epochs", type=int, default=5)
    b.add_argument("--batch", type=int, default=256)
    b.add_argument("--subset", type=int, default=None, help="pretrain on a random subset of the images")
    b.add_argument("--out", default=str(BACKBONE_DIR))
    b.set_defaults(fn=cmd_train_backbone)

    t = sub.add_parser("session-timing", help="wall times of a default three-minute session, without a browser")
    t.add_argument("--feature", default="bags")
    t.add_argument("--labels", type=int, default=100)
    t.add_argument("--reps", type=int, default=3)
    t.set_defaults(fn=cmd_session_timing)
