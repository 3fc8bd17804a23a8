"""How often each long job of the studio hears from its progress callback: the longest stretch without a
call is how long a Cancel can take to land. Not a test (it runs minutes on the real model):

    python tests/progress_gaps.py [train] [strict] [gallery] [compare]

Sets up a default session as ``censor.studio.timing`` does (100 pool images labelled by the oracle), then
runs each job with the studio's defaults and prints its wall time, the number of calls, the largest gap
(and the text around it), and whether the fractions only rose.
"""

import re
import sys
import tempfile
import time

import numpy as np

from censor.core.settings import COUNT, DEFAULT_GUIDANCE, DEFAULT_REWARD, STEPS
from censor.eval.features import is_malign
from censor.studio.common import PAGE_SIZE
from censor.studio.core import Studio


class Recorder:
    def __init__(self):
        self.calls = [(time.perf_counter(), 0.0, "start")]

    def __call__(self, fraction, desc=None):
        self.calls.append((time.perf_counter(), fraction, desc))

    def report(self, name):
        t = [c[0] for c in self.calls] + [time.perf_counter()]
        gaps = np.diff(t)
        i = int(gaps.argmax())
        fr = [c[1] for c in self.calls]
        print(f"{name}: {t[-1] - t[0]:.1f}s, {len(self.calls) - 1} calls, max gap {gaps[i]:.2f}s after "
              f"{self.calls[i][2]!r} ({self.calls[i][1]:.3f}), monotone {all(np.diff(fr) >= -1e-9)}, "
              f"last {fr[-1]:.3f}", flush=True)
        stretch = {}  # wall time and bar share per kind of text (numbers left out)
        for (t0, f0, _), (t1, f1, d) in zip(self.calls, self.calls[1:]):
            key = re.sub(r"\d+", "#", str(d))
            s, f = stretch.get(key, (0.0, 0.0))
            stretch[key] = (s + t1 - t0, f + f1 - f0)
        for key, (s, f) in stretch.items():
            print(f"    {key}: {s:.1f}s of wall time, {f:.3f} of the bar")


def session(feature="bags", labels=100):
    studio = Studio(data_dir=tempfile.mkdtemp())
    studio.model, studio.pool, studio.oracle  # noqa: B018 (loaded at start, as the app does)
    sid = studio.open_session(None, f"{feature} is malign")
    for page in range(-(-labels // PAGE_SIZE)):
        studio.page(sid, page)
        items = studio.store.items(sid, offset=page * PAGE_SIZE, limit=PAGE_SIZE)
        for it, bad in zip(items, is_malign(studio.oracle.judge(np.stack([it["image"] for it in items])), feature)):
            if bad:
                studio.click(sid, it["item"])
    return studio, sid


if __name__ == "__main__":
    jobs = sys.argv[1:] or ["train", "strict", "gallery"]
    studio, sid = session()
    r, g = DEFAULT_REWARD, DEFAULT_GUIDANCE
    rec = Recorder()
    studio.train(sid, r.method, r.kind, r.members, r.iterations, r.alpha, progress=rec)
    rec.report(f"train ({r.method}, {r.kind}, K={r.members}, {r.iterations} iterations, 100 labels)")
    if "strict" in jobs:
        rec = Recorder()
        studio.censored_gallery(sid, g.kind, g.weight, g.backward_steps, g.recurrence, STEPS, 0, COUNT,
                                feature="bags", auto=True, strict=True, progress=rec)
        rec.report(f"strict gallery, automatic threshold and strength ({COUNT} x {STEPS} steps)")
    if "gallery" in jobs:
        rec = Recorder()
        studio.censored_gallery(sid, g.kind, g.weight, g.backward_steps, g.recurrence, STEPS, 0, COUNT,
                                feature="bags", auto=True, progress=rec)
        rec.report(f"censored gallery, automatic strength ({COUNT} x {STEPS} steps)")
    if "compare" in jobs:
        from censor.studio.rlhf import COMPARE_LIMITS, run_comparison
        from rlhf.compare import METHODS

        rec = Recorder()
        run_comparison(studio, sid, "bags", METHODS, COMPARE_LIMITS["budget"][0], 1, COMPARE_LIMITS["n"][0], progress=rec)
        rec.report("comparison (smallest: 14 labels, 20 images)")
