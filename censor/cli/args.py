"""Shared CLI plumbing: options built from the settings objects, the model options, and one error rule
(a ``CensorError`` becomes one ``error:`` line on stderr and exit code 2)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from censor.core.errors import CensorError
from censor.core.settings import DEFAULT_GUIDANCE, GuidanceSettings
from censor.diffusion.runtime import RuntimeOptions
from censor.diffusion.sources import load_model


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


def _at_least(lo, whole: bool):
    """argparse type: a number >= ``lo`` (the knob's upper bounds guard the public studio, not the CLI)."""
    def parse(value: str):
        try:
            v = int(value) if whole else float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if whole else ''}number, got {value!r}") from None
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v
    return parse


def add_settings_args(p: argparse.ArgumentParser, cls, title: str, rename: dict | None = None,
                      skip: tuple = (), defaults=None) -> None:
    """One option per field of a settings dataclass (``core.settings``), typed and documented by
    its knob: ``--field-name`` (or ``rename[field]``), ``--no-field`` for a flag that is on by
    default, two numbers for a pair, 'none' for an optional number."""
    defaults = defaults or cls()
    g = p.add_argument_group(f"{title} (defaults: censor/core/settings.py)")
    for name, k in cls.knobs().items():
        if name in skip:
            continue
        flag, default = (rename or {}).get(name, "--" + name.replace("_", "-")), getattr(defaults, name)
        if isinstance(k.lo, bool):
            g.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_false", default=default,
                           help=f"off: {k.help}")
        elif k.pair:
            g.add_argument(flag, dest=name, type=int, nargs=2, default=list(default), metavar=("START", "END"),
                           help=k.help)
        elif k.choices is not None and all(isinstance(c, str) for c in k.choices):
            g.add_argument(flag, dest=name, default=default, choices=k.choices, help=k.help)
        elif k.optional or k.choices is not None:
            g.add_argument(flag, dest=name, type=_optional_float, default=default, help=k.help)
        else:
            g.add_argument(flag, dest=name, type=_at_least(k.lo, k.whole), default=default, help=k.help)


def settings_from_args(cls, a, **overrides):
    """The ``cls`` settings that ``add_settings_args`` options describe (choices checked by its knobs)."""
    values = {name: getattr(a, name) for name in cls.knobs() if hasattr(a, name)}
    values.update(overrides)
    out = replace(cls(), **values)
    for name, k in cls.knobs().items():  # e.g. a hinge quantile the reward's table does not hold
        if k.choices is not None:
            k.check(name, getattr(out, name))
    return out


def add_guidance_args(p: argparse.ArgumentParser) -> None:
    """Every guidance knob; ``--guidance`` has no default here: ``sample`` picks universal for a reward
    that scores clean images, everything else ``DEFAULT_GUIDANCE.kind``."""
    add_settings_args(p, GuidanceSettings, "guidance", rename={"kind": "--guidance"},
                      defaults=replace(DEFAULT_GUIDANCE, kind=None))


def guidance_from_args(a) -> GuidanceSettings:
    """The ``GuidanceSettings`` of ``add_guidance_args``' options."""
    return settings_from_args(GuidanceSettings, a, kind=a.kind or DEFAULT_GUIDANCE.kind)


def runtime_from_args(a):
    """The ``RuntimeOptions`` of ``add_model_args``' GPU switches."""
    return RuntimeOptions(device=a.device, dtype=a.dtype, batch_size=a.batch_size,
                          attention_slicing=a.attention_slicing, gradient_checkpointing=a.gradient_checkpointing,
                          compile=a.compile)


def model_from_args(a):
    """The ``DiffusionModel`` that ``add_model_args`` options describe."""
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
