"""A job's progress callback, with an optional line of text: long loops say where they are.

``progress(fraction)`` or ``progress(fraction, desc=...)``, whichever the callback takes, so a loop can
report "member 2 of 4 · iteration 120 of 400" without breaking the many callbacks that take a fraction
only; and a job's bar is split into stretches (``part``, ``stages``) one way everywhere.

The callback is also where a job is stopped: the studio's gate raises from it at a deadline or a
Cancel (``censor.studio.space``), so every long loop must call it often.
"""

from __future__ import annotations

import inspect
from typing import Callable

Progress = Callable[..., None]  # progress(fraction) or progress(fraction, desc=None)
SEP = " · "  # between a stretch's label and what its loop reports


def takes_desc(fn) -> bool:
    """Whether ``fn`` accepts a ``desc`` keyword (or any keyword)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: a fraction only
        return False
    return any(p.name == "desc" and p.kind != p.POSITIONAL_ONLY or p.kind == p.VAR_KEYWORD for p in params)


def reporter(progress: Progress | None) -> Callable[..., None] | None:
    """``progress`` as a callable that takes ``(fraction, desc=None)``, whatever it takes itself."""
    if progress is None or takes_desc(progress):
        return progress
    return lambda fraction, desc=None: progress(fraction)


def part(progress: Progress | None, start: float, size: float, label: str | None = None) -> Progress | None:
    """The stretch [start, start + size] of ``progress``'s bar; ``label`` goes before what the stretch
    reports (or stands alone). None passes through, so a caller without a bar pays nothing."""
    report = reporter(progress)
    if report is None:
        return None

    def stretch(fraction: float, desc: str | None = None) -> None:
        report(start + size * min(max(fraction, 0.0), 1.0), desc=SEP.join(t for t in (label, desc) if t) or None)
    return stretch


def stages(progress: Progress | None, costs: dict[str, float]) -> dict[str, Progress | None]:
    """One stretch per named stage, sized by its share of the summed ``costs`` (costs of 0: no stretch)."""
    total = sum(costs.values()) or 1.0
    out, start = {}, 0.0
    for name, cost in costs.items():
        out[name] = part(progress, start, cost / total)
        start += cost / total
    return out
