"""``python -m censor session-timing``: wall times of a default three-minute session, without a browser.

The same library calls the studio's buttons make: open a session from the pool, label 100 images
(the oracle plays the person, marking ``--feature``), train the default reward, render the default
censored gallery (``COUNT`` images, ``STEPS`` steps, the default guidance, automatic strength).
Repeats training and gallery ``--reps`` times and prints each, so the README's wall times can be
re-measured on any machine.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from censor.core.settings import COUNT, DEFAULT_GUIDANCE, DEFAULT_REWARD, STEPS
from censor.eval.features import is_malign
from censor.studio.common import PAGE_SIZE
from censor.studio.core import Studio


def session_timing(feature: str = "bags", labels: int = 100, reps: int = 3, log=print) -> None:
    """Open a session, label ``labels`` pool images as the oracle would, then ``reps`` times train and
    render with the defaults, logging each wall time (the first line: what an app start pays)."""
    t0 = time.perf_counter()
    studio = Studio(data_dir=tempfile.mkdtemp())
    studio.model, studio.pool, studio.oracle  # noqa: B018 (load them now, as the app does at start)
    log(f"studio ready (model, pool, oracle) in {time.perf_counter() - t0:.1f}s")
    sid = studio.open_session(None, f"{feature} is malign")
    for page in range(-(-labels // PAGE_SIZE)):
        studio.page(sid, page)
        items = studio.store.items(sid, offset=page * PAGE_SIZE, limit=PAGE_SIZE)
        verdict = is_malign(studio.oracle.judge(np.stack([it["image"] for it in items])), feature)
        for it, bad in zip(items, verdict):
            if bad:
                studio.click(sid, it["item"])
    log(studio.counts_text(sid))
    r, g = DEFAULT_REWARD, DEFAULT_GUIDANCE  # the studio's defaults, automatic strength included
    for rep in range(reps):
        t = time.perf_counter()
        info = studio.train(sid, r.method, r.kind, r.members, r.iterations, r.alpha)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        res = studio.censored_gallery(sid, g.kind, g.weight, g.backward_steps, g.recurrence, STEPS, 0, COUNT,
                                      feature=feature, auto=True)
        log(f"rep {rep + 1}: train {train_s:.1f}s (reward alone {info['train_seconds']:.1f}s), "
            f"gallery {COUNT} x {STEPS} steps with automatic strength {time.perf_counter() - t:.1f}s "
            f"(ω {res['settings']['weight']:g}), oracle {res['oracle']['baseline']} -> {res['oracle']['censored']}, "
            f"drift {res['drift']['censored']['tv']:.2f} (chance {res['drift']['censored']['chance']:.2f})")
