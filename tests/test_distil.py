"""rlhf/distil.py: fine-tuning on a sampler's images moves the model's *unguided* samples towards them.

The tiny UNet is random (its samples are saturated noise), so the test compares two copies distilled
on bright and on dark images: their fixed-seed unguided samples must differ in brightness the way the
data does. An inert loop (lr ≈ 0, no optimiser step) leaves them equal; a sign error inverts them.
"""

import copy

import pytest
import torch

from censor.core.errors import CensorError
from censor.sampling.loop import sample
from rlhf.adapters import load_adapter, save_adapter
from rlhf.compare import CompareConfig
from rlhf.configs import DistilConfig
from rlhf.distil import keep_most_benign, train_distil

SEEDS = list(range(500, 516))


def mean_brightness(model) -> float:
    return float(sample(model, SEEDS, steps=4).mean())


def targets(level: float, n: int = 32) -> torch.Tensor:
    """Images at ``level`` in [-1, 1] with a little texture, as a censored sampler's output would be."""
    g = torch.Generator().manual_seed(1)
    return (level + 0.1 * torch.randn(n, 1, 28, 28, generator=g)).clamp(-1, 1)


@pytest.fixture
def fresh(tiny_model):
    return copy.deepcopy(tiny_model)


def test_distilling_moves_unguided_samples_towards_the_data(tiny_model):
    """The same random UNet distilled on bright and on dark images: its unguided samples part ways."""
    tuned = {}
    for level in (0.8, -0.8):
        tuned[level] = copy.deepcopy(tiny_model)
        info = train_distil(tuned[level], targets(level), DistilConfig(steps=30, batch_size=16, lr=1e-3, ema=0.0))
        assert info["losses"][-1] < info["losses"][0]
    gap = mean_brightness(tuned[0.8]) - mean_brightness(tuned[-0.8])
    # measured +0.47 / +0.44 / +0.43 (training seeds 0-2, 32 samples); an inert loop gives 0, a flipped one < 0
    assert gap > 0.2, gap
    assert not tuned[0.8].unet.training and not any(p.requires_grad for p in tuned[0.8].unet.parameters())


def test_the_anchor_holds_the_weights_near_the_start(tiny_model):
    def drift(anchor: float) -> float:
        m = copy.deepcopy(tiny_model)
        train_distil(m, targets(0.8), DistilConfig(steps=10, batch_size=8, lr=1e-3, anchor=anchor, ema=0.0))
        return sum(float((p - q).abs().sum()) for p, q in zip(m.unet.parameters(), tiny_model.unet.parameters()))

    assert drift(100.0) < 0.5 * drift(0.0)


def test_the_moving_average_lags_behind_the_last_weights(tiny_model):
    moved = {}
    for ema in (0.0, 0.9):
        m = copy.deepcopy(tiny_model)
        train_distil(m, targets(0.8), DistilConfig(steps=10, batch_size=8, lr=1e-3, ema=ema))
        moved[ema] = sum(float((p - q).abs().sum()) for p, q in zip(m.unet.parameters(), tiny_model.unet.parameters()))
    assert 0 < moved[0.9] < 0.8 * moved[0.0]  # 0.9**10 = 35% of θ_0 is still in the average


def test_a_full_distil_saves_and_reloads_as_safetensors(tmp_path, fresh, tiny_model):
    train_distil(fresh, targets(0.8), DistilConfig(steps=2, batch_size=4, lr=1e-3, ema=0.0))
    folder = save_adapter(fresh.unet, tmp_path / "distil", dict(method="distil"))
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.json", "adapter.safetensors"]
    loaded = copy.deepcopy(tiny_model)
    load_adapter(loaded.unet, folder)
    assert torch.equal(sample(loaded, SEEDS[:2], steps=2), sample(fresh, SEEDS[:2], steps=2))


def test_lora_distil_trains_the_adapter_only(fresh, tiny_model):
    cfg = DistilConfig(steps=2, batch_size=4, full=False, lora_target="attention+convs")
    info = train_distil(fresh, targets(0.8), cfg)
    assert 0 < info["trainable_params"] < sum(p.numel() for p in tiny_model.unet.parameters()) / 2


class Brightness:
    """A stand-in reward: log P(benign) = the image's mean brightness."""

    def log_prob(self, x):
        return x.mean(dim=(1, 2, 3))


def test_the_reward_leaves_out_the_images_it_scores_most_malign():
    images = torch.stack([torch.full((1, 4, 4), v) for v in (0.1, -0.5, 0.9, 0.3)])
    kept = keep_most_benign(images, Brightness(), 0.5)
    assert kept[:, 0, 0, 0].tolist() == pytest.approx([0.9, 0.3])  # the two brightest, in their order
    assert keep_most_benign(images, Brightness(), 0.0) is images


def test_cancel_stops_the_fine_tune(fresh):
    calls = []

    def progress(fraction, desc=None):
        calls.append((fraction, desc))
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_distil(fresh, targets(0.8), DistilConfig(steps=50, batch_size=2), progress=progress)
    assert calls[-1] == (pytest.approx(3 / 50), "step 3 of 50")


@pytest.mark.parametrize("bad, message", [
    (dict(lr=0), "lr must be positive"), (dict(drop=1.0), "drop must be a fraction"),
    (dict(images=0), "images must be at least 1"), (dict(steps=0), "steps must be at least 1"),
    (dict(images=2, drop=0.9), "leaves none"), (dict(anchor=-1), "anchor"), (dict(ema=1.0), "ema must be"),
])
def test_bad_distil_settings_are_refused_before_any_work(bad, message, tiny_model):
    with pytest.raises(CensorError, match=message):
        CompareConfig(distil=DistilConfig(**bad))
    with pytest.raises(CensorError, match=message):
        train_distil(copy.deepcopy(tiny_model), targets(0.8), DistilConfig(**bad))


def test_the_cli_refuses_a_bad_drop(capsys):
    from rlhf.__main__ import main

    assert main(["compare", "--distil-drop", "1.5"]) == 2
    assert "drop must be a fraction" in capsys.readouterr().err
