"""Interleaved timing of sampling settings: ``bench-timing`` (guided vs unguided on one reward) and
the repetitions ``bench-throughput`` runs.

The settings take turns inside every repetition (A B C A B C ...), so a neighbour's load on a
shared machine hits them alike; ratios are medians over repetitions.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from censor.bench.harness import GALLERY_SEED, machine
from censor.core.errors import CensorError
from censor.core.settings import DEFAULT_GUIDANCE, GuidanceSettings
from censor.rewards.ensemble import model_fingerprint
from censor.sampling.guidance import guidance_for
from censor.sampling.loop import sample, seeds_for


def interleaved(runs: dict[str, Callable[[], object]], reps: int, log=print,
                before: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """Wall seconds of every run in ``runs``, ``reps`` times, taking turns inside each repetition
    (``before`` runs untimed ahead of each, e.g. to reset a GPU's peak-memory counter)."""
    seconds = {name: [] for name in runs}
    for rep in range(reps):
        for name, fn in runs.items():
            if before is not None:
                before()
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
        log(f"  rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in seconds.items()))
    return seconds


def time_guidance(model, reward, n: int = 64, steps: int = 25, reps: int = 5,
                  settings: GuidanceSettings = DEFAULT_GUIDANCE, everies=(1, 2, 4), log=print) -> dict:
    """Wall time of guided (``settings``, the default unless given) vs unguided sampling, same
    seeds, batch and steps, interleaved; time guidance also with its gradient reused (``everies``).
    Returns seconds and the median ratios to unguided."""
    if min(n, steps, reps) < 1:
        raise CensorError("n, steps and reps must be positive")
    seeds = seeds_for(n, GALLERY_SEED)
    guidances = {"unguided": None}
    if settings.kind == "time":
        guidances.update({f"time every {k}": guidance_for(reward, settings.with_(every=k)) for k in everies})
    else:
        guidances[settings.kind] = guidance_for(reward, settings)
    sample(model, seeds[: min(n, 4)], steps=2)  # warm-up: first-call allocations are not the method's cost
    seconds = interleaved({name: (lambda g=g: sample(model, seeds, steps=steps, guidance=g))
                           for name, g in guidances.items()}, reps, log)
    base = np.array(seconds["unguided"])
    ratios = {name: float(np.median(np.array(s) / base)) for name, s in seconds.items() if name != "unguided"}
    return dict(machine=machine(), model_fingerprint=model_fingerprint(model.unet), n=n, steps=steps, reps=reps,
                settings=settings.as_dict(), seconds={k: [round(x, 2) for x in v] for k, v in seconds.items()},
                median_s={k: float(np.median(v)) for k, v in seconds.items()}, ratio_median=ratios)
