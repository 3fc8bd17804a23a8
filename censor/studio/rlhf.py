"""What the studio's fine-tuning tab calls: a comparison run inside one person's session, and the
fine-tuned models it leaves behind for the Censored gallery tab. No UI code here; it uses only the
public surface of the studio's ``Resources`` (model, oracle, pool, cache and session folders)."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from censor.core.errors import CensorError
from censor.eval.features import load_features
from censor.eval.oracle import load_reference
from censor.labels.marks import BENIGN, UNSURE
from censor.studio.common import check_range
from censor.studio.resources import Resources
from rlhf.adapters import load_adapter, read_adapter_meta
from rlhf.compare import METHODS, CompareConfig, markdown_table, run_compare
from rlhf.configs import DistilConfig
from rlhf.train import preference_pairs

# Server-side bounds (the UI shows the same): a run must finish in minutes on a 2-core CPU.
COMPARE_LIMITS = dict(budget=(14, 200), seeds=(1, 3), n=(20, 300))
COMPARE_DEFAULTS = dict(budget=70, seeds=1, n=60)  # the tab's starting values: a few minutes on a CPU
# the tab's distil: half the optimiser steps of the CLI's (the CLI's 300 trajectories / 600 steps take ~7 minutes
# on a 2-core CPU); not measured at 300 steps
STUDIO_DISTIL = DistilConfig(steps=300)
# the tab's RLHF: half the epochs and rollouts of the CLI's 10 x 64 (~1 minute instead of ~4 on a 2-core CPU);
# on bags the CLI setting's curve was still at 5.7% after 5 epochs (docs/benchmarks.md, the RLHF curves)
STUDIO_RLHF = dict(epochs=5, ddpo_images=32)
ADAPTERS = ("rlhf", "d3po", "distil")  # the methods that leave a fine-tuned model behind
CURVES_DIR = Path(__file__).resolve().parents[2] / "docs" / "bench" / "rlhf_curves"  # ``python -m rlhf curve`` runs
CURVE_KEYS = ("lr", "kl_beta", "ddpo_images", "full", "steps", "ddpo_baseline")  # what makes a published curve the CLI defaults'
CURVE_BEFORE = dict(ddpo_baseline="mean")  # what curves run before a key existed were run with


def published_curve(feature: str, curves_dir: Path = CURVES_DIR) -> Path | None:
    """The plot of a published ``rlhf curve`` run (malign % and tv against CPU minutes) on ``feature`` with
    the CLI's RLHF defaults, or None: the tab shows it beside its own short run, which has no curve."""
    defaults = asdict(CompareConfig())
    for path in sorted(Path(curves_dir).glob(f"*/curve_{feature}_b*.json")):
        try:
            run = json.loads(path.read_text())["config"]["compare"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged file is no curve
        if run.get("feature") == feature and all(run.get(k, CURVE_BEFORE.get(k)) == defaults[k] for k in CURVE_KEYS) \
                and path.with_suffix(".png").is_file():
            return path.with_suffix(".png")
    return None


def _compare_dir(studio: Resources, sid: str) -> Path:
    return studio.session_folder(sid) / "compare"


def run_comparison(studio: Resources, sid: str, feature: str, methods, budget: int, seeds: int, n: int,
                   progress: Callable[[float], None] | None = None) -> dict:
    """Run the comparison with the simulated labeller on ``feature``; returns the table and plot paths."""
    if feature not in load_features():
        raise CensorError(f"the comparison is judged by the oracle: pick one of {', '.join(load_features())}")
    if not methods:
        raise CensorError("pick at least one method")
    for name, value in (("budget", budget), ("seeds", seeds), ("n", n)):
        check_range(name, value, COMPARE_LIMITS[name])
    cfg = CompareConfig(feature=feature, budget=int(budget), seeds=int(seeds), n=int(n), steps=20, train_steps=10,
                        **STUDIO_RLHF, methods=tuple(m for m in METHODS if m in methods), distil=copy.copy(STUDIO_DISTIL))
    out = _compare_dir(studio, sid)
    result = run_compare(cfg, studio.model, studio.oracle, studio.pool, load_reference(), out_dir=out,
                         cache_dir=studio.cache_dir, log=lambda *_: None, progress=progress,
                         adapter_dir=out / "adapters")
    stem = f"compare_{cfg.feature}_b{cfg.budget}"
    return dict(table=markdown_table(result), plot=out / f"{stem}.png", grid=out / f"{stem}_grid.png",
                curve=published_curve(cfg.feature), adapters=available_adapters(studio, sid))


def available_adapters(studio: Resources, sid: str) -> list[str]:
    folder = studio.store.folder(sid) / "compare" / "adapters"  # a read (on page load): puts nothing on disk
    return [name for name in ADAPTERS if (folder / name / "adapter.json").is_file()]


def adapted_model(studio: Resources, sid: str, name: str):
    """A copy of the studio's model with this session's fine-tuned adapter on it."""
    if name not in available_adapters(studio, sid):
        raise CensorError(f"no {name} adapter in this session yet: run the comparison with {name} first")
    model = copy.deepcopy(studio.model)
    load_adapter(model.unet, _compare_dir(studio, sid) / "adapters" / name)
    return model


def adapter_steps_note(studio: Resources, sid: str, name: str, steps: int) -> str | None:
    """A warning when a distil adapter that learned the censored sampler's steps is drawn with other
    steps: DDIM at another count visits timesteps the student never learned (not measured; its benchmark
    draws at the learned count)."""
    if name != "distil" or name not in available_adapters(studio, sid):
        return None
    config = read_adapter_meta(_compare_dir(studio, sid) / "adapters" / name).get("config") or {}
    learned = config.get("steps")
    if config.get("distil_target") != "steps" or not isinstance(learned, int) or learned == int(steps):
        return None
    return (f"The distil adapter learned the censored sampler's {learned} steps; drawn with {int(steps)} it meets "
            f"timesteps it never learned. Set steps to {learned} for the gallery it was judged on.")


def label_preference_pairs(studio: Resources, sid: str) -> list[tuple[int, int]]:
    """(preferred, rejected) item ids from a session's clicks: D3PO's pairs, a viewed benign image
    over a viewed malign one drawn from the same seed, hence the same initial noise x_T.

    Pool images each have their own seed; a group forms when a censored gallery drawn with the
    pool's seeds (the Censor tab's seed = the pool's) is sent back to labelling.
    """
    items = [it for it in studio.store.items(sid, limit=1_000_000) if it["viewed"] and it["state"] != UNSURE]
    labels = [1 if it["state"] == BENIGN else 0 for it in items]  # rlhf's convention: 1 = preferred
    pairs = preference_pairs(labels, [it["seed"] for it in items])
    return [(items[w]["item"], items[l]["item"]) for w, l in pairs.tolist()]


def preference_readout(studio: Resources, sid: str) -> str:
    """The RLHF tab's line on what the session's own labels give D3PO."""
    if not studio.store.exists(sid):
        return "0 preference pairs from your labels: label some images first."
    n = len(label_preference_pairs(studio, sid))
    seed = studio.pool.meta.get("seed")
    hint = ("" if n else f" Pairs need a benign and a malign image of the same x_T: draw a censored gallery "
            f"with seed {seed} (the pool's), send it to labelling and mark it.")
    return f"{n} preference pair{'s' if n != 1 else ''} from your labels (benign ≻ malign, same x_T).{hint}"
