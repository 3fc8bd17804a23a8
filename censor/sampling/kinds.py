"""Which guidance kind a reward can steer with: the one rule the CLI's ``sample`` and the studio use.

Time and particle guidance read r(x_t, t) along the trajectory, so they need a time-dependent reward.
A clean-image reward (``resnet18``) scores x̂0 only: universal (or manifold) guidance.
"""

from __future__ import annotations

from censor.core.errors import CensorError

NEEDS_TIME = ("time", "particles")  # guidance kinds that score noisy x_t


def kind_for(reward, kind: str, *, switch: bool) -> tuple[str, str | None]:
    """The kind to guide ``reward`` with when ``kind`` was asked for, and a note when it differs.

    ``switch``: whoever asked may be given universal guidance instead (the CLI with no ``--guidance``,
    the studio, whose readout shows the note); otherwise a kind the reward cannot take is refused.
    """
    if reward.time_dependent or kind not in NEEDS_TIME:
        return kind, None
    if not switch:
        raise CensorError(f"a {reward.kind} reward scores clean images: use universal or manifold guidance, "
                          f"not {kind}")
    return "universal", f"a {reward.kind} reward scores clean images: universal guidance instead of {kind}"
