"""``python -m censor COMMAND``: sample galleries, judge a model, build the sample pool.

The benchmark commands are in ``censor/cli/bench.py``, the asset-training and timing commands in
``censor/cli/train.py``; every guidance option comes from ``core.settings.GuidanceSettings``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from censor.cli.args import (
    add_guidance_args,
    add_model_args,
    dispatch,
    guidance_from_args,
    model_from_args,
    positive_int,
)
from censor.cli.bench import register_bench
from censor.cli.train import register_training
from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.core.settings import STRICT_MODES
from censor.diffusion.models import EMBEDDED_MODEL_DIR, load_diffusion
from censor.eval.metrics import quality_report
from censor.eval.oracle import load_oracle, load_reference
from censor.gallery.grid import save_grid
from censor.labels.pool import make_pool, save_pool
from censor.rewards.ensemble import load_reward
from censor.sampling.guidance import guidance_for
from censor.sampling.kinds import kind_for
from censor.sampling.loop import sample, seeds_for
from censor.sampling.rejection import check_probability
from censor.sampling.repaint import resolve_strict_mode, strict_sample
from censor.sampling.thresholds import cached_threshold


def cmd_sample(a) -> None:
    out = Path(a.out)
    if not out.parent.exists():
        raise CensorError(f"output folder {out.parent} does not exist")
    model = model_from_args(a)
    if a.adapter:  # an RLHF / D3PO fine-tune (``python -m rlhf finetune``): refused when made for another model
        from rlhf.adapters import load_adapter

        load_adapter(model.unet, a.adapter)
    guidance = None
    if a.reward:
        reward = load_reward(a.reward, model)
        settings = guidance_from_args(a)
        kind, note = kind_for(reward, settings.kind, switch=a.kind is None)  # an asked-for kind is never switched
        if note:
            settings = settings.with_(kind=kind)
            print(f"note: {note}", file=sys.stderr)
        guidance = guidance_for(reward, settings)
    t0 = time.time()
    if a.strict:  # the studio's strict mode: what the reward still doubts is rejected or repainted
        p, mode = _strict(a, reward if a.reward else None)
        images, _, r = strict_sample(model, reward, a.n, a.seed, p, mode, guidance=guidance, steps=a.steps)
        print(f"strict ({mode}, p={p:.3g}): {r.summary()}", file=sys.stderr)
    else:
        images = to_uint8(sample(model, seeds_for(a.n, a.seed), steps=a.steps, method=a.scheduler, eta=a.eta,
                                 show_bar=True, guidance=guidance))
    save_grid(images, out, nrow=a.nrow)
    what = (f"censored with {a.reward}" if a.reward else "unguided") + (f", from adapter {a.adapter}" if a.adapter else "")
    print(f"wrote {len(images)} {what} samples ({a.steps} {a.scheduler} steps, {time.time() - t0:.1f}s) to {out}")


def _strict(a, reward) -> tuple[float, str]:
    """(threshold, mode) of ``--strict``: ``--strict-p``, else the cross-fitted one the studio cached beside the
    reward (this very reward file); DDIM at eta 0 only, so that a kept image is reproduced by its seed."""
    if reward is None:
        raise CensorError("--strict filters with the reward: give --reward too")
    if a.scheduler != "ddim" or a.eta != 0:
        raise CensorError("--strict samples with DDIM at eta 0 (a kept image is reproduced by its seed)")
    if a.strict_p is not None:
        p = check_probability(a.strict_p)
    else:
        cached = cached_threshold(a.reward)
        if cached is None:
            raise CensorError("no threshold for --strict: give --strict-p P, or render one strict gallery of this reward in "
                              "the studio (it cross-fits the threshold on the session's labels and keeps it beside the reward)")
        p = cached["threshold"]
    return p, resolve_strict_mode(a.strict_mode, reward)


def cmd_evaluate_model(a) -> None:
    """Sample n images and report what the foundation quality bar asks, next to the real-image floors."""
    oracle, ref = load_oracle(), load_reference()
    model = load_diffusion(a.model)
    t0 = time.time()
    images = to_uint8(sample(model, seeds_for(a.n, a.seed), steps=a.steps, show_bar=True))
    seconds = time.time() - t0
    rng = np.random.default_rng(0)
    real = ref["test_features"][rng.permutation(len(ref["test_features"]))[: a.n]]
    report = quality_report(oracle, images, real)
    real_report = dict(confident_fraction=oracle.metrics["test"]["confident_fraction"],
                       watermark_rate=float(ref["test_watermark"].mean()), **oracle.metrics.get("reference", {}))
    training = Path(a.model) / "training.json"
    result = dict(model=str(a.model), steps=a.steps, sampling_seconds=round(seconds, 1), generated=report,
                  real=real_report, training=json.loads(training.read_text()) if training.exists() else None)
    result["confident_ratio"] = report["confident_fraction"] / real_report["confident_fraction"]
    text = json.dumps(result, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    if a.grid:
        save_grid(images[:100], a.grid, nrow=10, marks=oracle.judge(images[:100]).watermarked)


def cmd_make_pool(a) -> None:
    model = model_from_args(a)
    folder = EMBEDDED_MODEL_DIR if a.model == "embedded" else Path(a.model)
    pool = make_pool(model, folder if folder.is_dir() else None, n=a.n, steps=a.steps, seed=a.seed)
    save_pool(pool, a.out)
    print(f"wrote a pool of {len(pool)} images to {a.out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m censor", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="write a grid of unguided samples")
    s.add_argument("--n", type=positive_int, default=64)
    s.add_argument("--steps", type=positive_int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="grid.png")
    add_model_args(s)
    s.add_argument("--scheduler", default="ddim", choices=["ddim", "ddpm"])
    s.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity (0 = deterministic)")
    s.add_argument("--nrow", type=positive_int, default=None)
    s.add_argument("--reward", default=None, help="a saved reward folder: sample censored with it")
    s.add_argument("--adapter", default=None, help="a fine-tuned adapter folder (python -m rlhf finetune) to sample from")
    s.add_argument("--strict", action="store_true", help="with --reward: also reject or repaint what it still doubts "
                   "(the studio's strict mode)")
    s.add_argument("--strict-p", type=float, default=None, help="--strict's P(benign) threshold (default: the one the "
                   "studio cross-fitted and cached beside the reward)")
    s.add_argument("--strict-mode", default="auto", choices=STRICT_MODES,
                   help="auto: repaint with a reward that says where (local-patch), reject otherwise")
    add_guidance_args(s)
    s.set_defaults(fn=cmd_sample)

    e = sub.add_parser("evaluate-model", help="judge a diffusion model with the oracle (quality bar)")
    e.add_argument("--model", default=str(EMBEDDED_MODEL_DIR))
    e.add_argument("--n", type=positive_int, default=2000)
    e.add_argument("--steps", type=positive_int, default=50)
    e.add_argument("--seed", type=int, default=1000)
    e.add_argument("--json", default=None, help="also write the report here")
    e.add_argument("--grid", default=None, help="also write a 10x10 grid (oracle-watermarked items framed red)")
    e.set_defaults(fn=cmd_evaluate_model)

    m = sub.add_parser("make-pool", help="pre-generate the baseline pool a labelling session starts from")
    add_model_args(m, default=str(EMBEDDED_MODEL_DIR))
    m.add_argument("--n", type=positive_int, default=1000)
    m.add_argument("--steps", type=positive_int, default=50)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--out", default=str(EMBEDDED_MODEL_DIR.parent / "pool"))
    m.set_defaults(fn=cmd_make_pool)

    register_bench(sub)
    register_training(sub)
    return p


def main(argv=None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
