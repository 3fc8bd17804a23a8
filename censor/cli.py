"""Shared CLI plumbing: a ``CensorError`` becomes one ``error:`` line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from .errors import CensorError


def positive_int(value: str) -> int:
    """argparse type for counts: a whole number >= 1, else argparse's own one-line usage error."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {n}")
    return n


def add_model_args(p: argparse.ArgumentParser, default: str = "embedded") -> None:
    """--model SOURCE and what a model beyond the embedded one needs: conditioning and GPU switches."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default,
                   help="'embedded', a model folder (ours or a diffusers pipeline folder) or a hub id owner/name")
    g.add_argument("--prompt", default=None, help="text-to-image models: the prompt")
    g.add_argument("--negative-prompt", default="", help="text-to-image models: the unconditional prompt of CFG")
    g.add_argument("--class-label", default=None, help="class-conditional models: class id or name (DiT: 0 = tench)")
    g.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (default 7.5 text, 4 DiT)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype of the denoiser")
    g.add_argument("--batch-size", type=positive_int, default=250, help="images per sampler batch (GPU memory)")
    g.add_argument("--attention-slicing", action="store_true")
    g.add_argument("--gradient-checkpointing", action="store_true", help="less memory for universal guidance")
    g.add_argument("--compile", action="store_true", help="torch.compile the denoiser (pays on long GPU runs)")


def _optional_float(value: str):
    return None if value.lower() in ("none", "off") else float(value)


def add_guidance_args(p: argparse.ArgumentParser) -> None:
    """Every guidance knob, defaulting to ``defaults.DEFAULT_GUIDANCE`` (the one definition)."""
    from .defaults import DEFAULT_GUIDANCE as D
    from .guidance import COMBINES, GUIDANCE_KINDS

    g = p.add_argument_group("guidance (defaults: censor/defaults.py)")
    g.add_argument("--guidance", default=None, choices=GUIDANCE_KINDS,
                   help=f"default {D.kind} (universal for a reward that scores clean images)")
    g.add_argument("--weight", type=float, default=D.weight, help="ω on the members' combination")
    g.add_argument("--combine", default=D.combine, choices=COMBINES, help="how the members' log P(benign) combine")
    g.add_argument("--threshold", type=_optional_float, default=D.threshold,
                   help="hinge, relative to the reward's prior P(benign): no push for images scored above "
                        "τ = threshold × prior ('none': off)")
    g.add_argument("--spread", type=float, default=D.spread, help="λ of --combine mean-std")
    g.add_argument("--max-ratio", type=_optional_float, default=D.max_ratio,
                   help="cap on |guidance shift| / |ε| per image ('none': off)")
    g.add_argument("--backward-steps", type=int, default=D.backward_steps)
    g.add_argument("--backward-lr", type=float, default=D.backward_lr)
    g.add_argument("--recurrence", type=int, default=D.recurrence)
    g.add_argument("--window", type=int, nargs=2, default=list(D.window), metavar=("START", "END"))
    g.add_argument("--every", type=positive_int, default=D.every,
                   help="time guidance: fresh reward gradient every k-th step, reused in between")
    g.add_argument("--particles", type=positive_int, default=D.particles, help="--guidance particles: P per image")
    g.add_argument("--hinge-quantile", type=_optional_float, default=D.hinge_quantile,
                   help="hinge at this quantile of the reward's scores on its own noised benign labels, per "
                        "timestep (used when --threshold is none; 'none': off)")
    g.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="use the raw logits (do not undo the training class weight α)")


def guidance_from_args(a):
    """The ``GuidanceSettings`` of ``add_guidance_args``' options."""
    from .defaults import DEFAULT_GUIDANCE as D, GuidanceSettings

    return GuidanceSettings(kind=a.guidance or D.kind, weight=a.weight, combine=a.combine, threshold=a.threshold,
                            spread=a.spread, max_ratio=a.max_ratio, backward_steps=a.backward_steps,
                            backward_lr=a.backward_lr, recurrence=a.recurrence, window=tuple(a.window), every=a.every,
                            particles=a.particles, calibrate=a.calibrate, hinge_quantile=a.hinge_quantile)


def runtime_from_args(a):
    """The ``RuntimeOptions`` of ``add_model_args``' GPU switches."""
    from .runtime import RuntimeOptions

    return RuntimeOptions(device=a.device, dtype=a.dtype, batch_size=a.batch_size,
                          attention_slicing=a.attention_slicing, gradient_checkpointing=a.gradient_checkpointing,
                          compile=a.compile)


def model_from_args(a):
    """The ``DiffusionModel`` that ``add_model_args`` options describe."""
    from .sources import load_model

    return load_model(a.model, prompt=a.prompt, class_label=a.class_label, guidance_scale=a.cfg_scale,
                      negative_prompt=a.negative_prompt, runtime=runtime_from_args(a))


def dispatch(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse, then run the chosen subcommand's ``fn(args)`` under ``run_cli``."""
    args = parser.parse_args(argv)
    return run_cli(lambda: args.fn(args))


def run_cli(fn) -> int:
    try:
        fn()
    except CensorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
