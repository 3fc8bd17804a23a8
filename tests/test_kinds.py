"""One rule picks the guidance kind a reward can take (censor/sampling/kinds.py)."""

from types import SimpleNamespace

import pytest

from censor.core.errors import CensorError
from censor.sampling.kinds import kind_for

NOISY = SimpleNamespace(time_dependent=True, kind="ddpm-encoder")
CLEAN = SimpleNamespace(time_dependent=False, kind="resnet18")


def test_a_time_dependent_reward_keeps_any_kind():
    for kind in ("time", "particles", "universal", "manifold"):
        assert kind_for(NOISY, kind, switch=False) == (kind, None)


def test_a_clean_image_reward_is_switched_to_universal_and_says_so():
    kind, note = kind_for(CLEAN, "time", switch=True)
    assert kind == "universal" and "resnet18 reward scores clean images" in note and "instead of time" in note
    assert kind_for(CLEAN, "particles", switch=True)[0] == "universal"
    for kind in ("universal", "manifold"):  # kinds that judge x̂0 stay, with nothing to report
        assert kind_for(CLEAN, kind, switch=True) == (kind, None)
    with pytest.raises(CensorError, match="use universal or manifold guidance, not time"):
        kind_for(CLEAN, "time", switch=False)
