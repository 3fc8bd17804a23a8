"""``python -m censor session-timing``: wall times of a default three-minute session, without a browser.

The same library calls the studio's buttons make: open a session from the pool and show its first
page (the first label grid, cold: the pool loads), label 100 images (the oracle plays the person,
marking ``--feature``), let the studio warm up as it does while a person labels (the default
baseline gallery and the drift clusters), then ``--reps`` times: train the default reward and render
the default censored gallery (``COUNT`` images, ``STEPS`` steps, automatic strength). "Last label ->
gallery" is training plus that render, the wait issue 20 holds to 30 s; medians are printed last.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np

from censor.core.settings import COUNT, DEFAULT_GUIDANCE, DEFAULT_REWARD, STEPS
from censor.eval.features import is_malign
from censor.studio.common import PAGE_SIZE
from censor.studio.core import Studio

TARGETS_S = dict(first_grid=2.0, last_label_to_gallery=30.0)  # issue 20, on the 2-core CPU, idle machine


def session_timing(feature: str = "bags", labels: int = 100, reps: int = 3, log=print) -> dict:
    """Open a session, label ``labels`` pool images as the oracle would, warm up, then ``reps`` times
    train and render with the defaults, logging each wall time; returns the medians."""
    t0 = time.perf_counter()
    studio = Studio(data_dir=tempfile.mkdtemp())
    studio.model  # noqa: B018 (loaded at start, as the app's first request does)
    log(f"model loaded in {time.perf_counter() - t0:.1f}s")
    t = time.perf_counter()
    sid = studio.open_session(None, f"{feature} is malign")
    studio.page(sid, 0)
    first_grid = time.perf_counter() - t
    log(f"first label grid (session from the pool, 25 images) in {first_grid:.2f}s")
    studio.oracle  # noqa: B018
    for page in range(-(-labels // PAGE_SIZE)):
        studio.page(sid, page)
        items = studio.store.items(sid, offset=page * PAGE_SIZE, limit=PAGE_SIZE)
        verdict = is_malign(studio.oracle.judge(np.stack([it["image"] for it in items])), feature)
        for it, bad in zip(items, verdict):
            if bad:
                studio.click(sid, it["item"])
    log(studio.counts_text(sid))
    t = time.perf_counter()
    studio.warm_up(wait=True)
    log(f"warm-up while labelling (default baseline, drift clusters) {time.perf_counter() - t:.1f}s")
    r, g = DEFAULT_REWARD, DEFAULT_GUIDANCE  # the studio's defaults, automatic strength included
    waits = []
    for rep in range(reps):
        t = time.perf_counter()
        info = studio.train(sid, r.method, r.kind, r.members, r.iterations, r.alpha)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        res = studio.censored_gallery(sid, g.kind, g.weight, g.backward_steps, g.recurrence, STEPS, 0, COUNT,
                                      feature=feature, auto=True)
        gallery_s = time.perf_counter() - t
        waits.append(train_s + gallery_s)
        o = res["oracle"]
        log(f"rep {rep + 1}: last label -> gallery {train_s + gallery_s:.1f}s = train {train_s:.1f}s "
            f"(reward alone {info['train_seconds']:.1f}s) + gallery {COUNT} x {STEPS} steps {gallery_s:.1f}s "
            f"(ω {res['settings']['weight']:g}); oracle {o['baseline']['malign']}/{o['baseline']['n']} -> "
            f"{o['censored']['malign']}/{o['censored']['n']} malign, tv {o['censored']['tv']:.2f}, "
            f"drift {res['drift']['censored']['tv']:.2f} (chance {res['drift']['censored']['chance']:.2f})")
    medians = dict(first_grid=first_grid, last_label_to_gallery=statistics.median(waits))
    log("medians: " + ", ".join(f"{k} {v:.1f}s (target ≤ {TARGETS_S[k]:g}s)" for k, v in medians.items()))
    return medians
