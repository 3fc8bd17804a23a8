"""``python -m censor.session_timing``: wall times of a default three-minute session, without a browser.

The same library calls the studio's buttons make: open a session from the pool, label 100 images
(the oracle plays the person, marking ``--feature``), train the default reward, render the default
censored gallery (32 images, 30 steps, time guidance, ω 4). Repeats training and gallery
``--reps`` times and prints each, so the README's wall times can be re-measured on any machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m censor.session_timing", description=__doc__.splitlines()[0])
    p.add_argument("--feature", default="bags")
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args(argv)

    from .cli import run_cli

    def run():
        t0 = time.perf_counter()  # before the heavy imports: this is what an app start pays
        from .evaluate import is_malign
        from .defaults import ALPHA, DEFAULT_GUIDANCE, ITERATIONS, MEMBERS, REWARD_KIND, STEPS
        from .studio import PAGE_SIZE, Studio

        studio = Studio(data_dir=tempfile.mkdtemp())
        studio.model, studio.pool, studio.oracle  # noqa: B018 (load them now, as the app does at start)
        print(f"studio ready (imports, model, pool, oracle) in {time.perf_counter() - t0:.1f}s")
        sid = studio.open_session(None, f"{a.feature} is malign")
        for page in range(-(-a.labels // PAGE_SIZE)):
            studio.page(sid, page)
            items = studio.store.items(sid, offset=page * PAGE_SIZE, limit=PAGE_SIZE)
            verdict = is_malign(studio.oracle.judge(np.stack([it["image"] for it in items])), a.feature)
            for it, bad in zip(items, verdict):
                if bad:
                    studio.click(sid, it["item"])
        print(studio.counts_text(sid))
        for rep in range(a.reps):
            t = time.perf_counter()
            info = studio.train(sid, "ensemble", REWARD_KIND, MEMBERS, ITERATIONS, ALPHA)
            train_s = time.perf_counter() - t
            t = time.perf_counter()
            g = DEFAULT_GUIDANCE  # the studio's defaults, automatic strength included
            res = studio.censored_gallery(sid, g.kind, g.weight, g.backward_steps, g.recurrence, STEPS, 0, 32,
                                          feature=a.feature, auto=True)
            print(f"rep {rep + 1}: train {train_s:.1f}s (reward alone {info['train_seconds']:.1f}s), "
                  f"gallery 32 x {STEPS} steps with automatic strength {time.perf_counter() - t:.1f}s "
                  f"(ω {res['settings']['weight']:g}), oracle {res['oracle']['baseline']} -> {res['oracle']['censored']}, "
                  f"drift {res['drift']['censored']['tv']:.2f} (chance {res['drift']['censored']['chance']:.2f})")

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
