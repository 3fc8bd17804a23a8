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
        info = train_distil(tuned[level], targets(level), DistilConfig(target="images", steps=30, batch_size=16, lr=1e-3, ema=0.0))
        assert info["losses"][-1] < info["losses"][0]
    gap = mean_brightness(tuned[0.8]) - mean_brightness(tuned[-0.8])
    # measured +0.47 / +0.44 / +0.43 (training seeds 0-2, 32 samples); an inert loop gives 0, a flipped one < 0
    assert gap > 0.2, gap
    assert not tuned[0.8].unet.training and not any(p.requires_grad for p in tuned[0.8].unet.parameters())


def test_the_anchor_holds_the_weights_near_the_start(tiny_model):
    def drift(anchor: float) -> float:
        m = copy.deepcopy(tiny_model)
        train_distil(m, targets(0.8), DistilConfig(target="images", steps=10, batch_size=8, lr=1e-3, anchor=anchor, ema=0.0))
        return sum(float((p - q).abs().sum()) for p, q in zip(m.unet.parameters(), tiny_model.unet.parameters()))

    assert drift(100.0) < 0.5 * drift(0.0)


def test_the_moving_average_lags_behind_the_last_weights(tiny_model):
    moved = {}
    for ema in (0.0, 0.9):
        m = copy.deepcopy(tiny_model)
        train_distil(m, targets(0.8), DistilConfig(target="images", steps=10, batch_size=8, lr=1e-3, ema=ema))
        moved[ema] = sum(float((p - q).abs().sum()) for p, q in zip(m.unet.parameters(), tiny_model.unet.parameters()))
    assert 0 < moved[0.9] < 0.8 * moved[0.0]  # 0.9**10 = 35% of θ_0 is still in the average


def test_a_full_distil_saves_and_reloads_as_safetensors(tmp_path, fresh, tiny_model):
    train_distil(fresh, targets(0.8), DistilConfig(target="images", steps=2, batch_size=4, lr=1e-3, ema=0.0))
    folder = save_adapter(fresh.unet, tmp_path / "distil", dict(method="distil"))
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.json", "adapter.safetensors"]
    loaded = copy.deepcopy(tiny_model)
    load_adapter(loaded.unet, folder)
    assert torch.equal(sample(loaded, SEEDS[:2], steps=2), sample(fresh, SEEDS[:2], steps=2))


def test_lora_distil_trains_the_adapter_only(fresh, tiny_model):
    cfg = DistilConfig(target="images", steps=2, batch_size=4, full=False, lora_target="attention+convs")
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
        train_distil(fresh, targets(0.8), DistilConfig(target="images", steps=50, batch_size=2), progress=progress)
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


# ---- target "steps": the student regresses the censored sampler's own steps ----------------------------------

class Bright:
    """log r(x) = log sigmoid(0.05 · pixel sum), at every t: a reward whose guidance brightens images."""

    time_dependent, kind = True, "analytic"

    def log_prob(self, x, t=None):
        return torch.nn.functional.logsigmoid(0.05 * x.flatten(1).sum(1))


def bright_guidance(recurrence: int = 0):
    from censor.sampling.guidance import Guidance
    from censor.sampling.pieces import TimeGuidance

    return Guidance([TimeGuidance(Bright(), 10.0)], recurrence=recurrence)


def test_the_step_eps_reproduces_any_ddim_step_clamped_or_not(tiny_model):
    from censor.diffusion.steps import ddim_eps_between, make_scheduler

    sched = make_scheduler(tiny_model.scheduler.config, "ddim", 10)
    g = torch.Generator().manual_seed(0)
    clamped = 0
    for t in sched.timesteps:
        x, eps = torch.randn(8, 1, 28, 28, generator=g), 2 * torch.randn(8, 1, 28, 28, generator=g)
        x_prev = sched.step(eps, t, x, use_clipped_model_output=True).prev_sample
        found = ddim_eps_between(sched, int(t), x, x_prev)
        again = sched.step(found, t, x, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(again, x_prev, atol=1e-4, rtol=1e-4)
        clamped += not torch.allclose(found, eps, atol=1e-3)
    assert clamped >= 3  # the large ε pushed x̂0 past the clip range at some steps: those were inverted too


def test_recorded_steps_replay_the_guided_sampler(tiny_model):
    from censor.diffusion.steps import initial_noise, make_scheduler
    from rlhf.distil import record_steps

    seeds = SEEDS[:6]
    sched = make_scheduler(tiny_model.scheduler.config, "ddim", 5)
    step = lambda rec, j, x: sched.step(rec.eps[:, j].float(), rec.timesteps[j], x.float(),  # noqa: E731
                                        use_clipped_model_output=True).prev_sample
    rec = record_steps(tiny_model, seeds, 5, bright_guidance())
    assert rec.x.shape == (6, 5, 1, 28, 28) and rec.eps.shape == rec.x.shape and len(rec.timesteps) == 5
    torch.testing.assert_close(rec.x[:, 0].float(), initial_noise(seeds, (1, 28, 28)), atol=4e-3, rtol=1e-3)
    guided = sample(tiny_model, seeds, steps=5, guidance=bright_guidance())
    torch.testing.assert_close(rec.images, guided)  # recording changes nothing
    assert (guided - sample(tiny_model, seeds, steps=5)).abs().mean() > 0.05  # and those are not the unguided ones
    for j in range(4):  # an unguided DDIM step fed the recorded ε lands where the guided sampler went (fp16 apart)
        assert (step(rec, j, rec.x[:, j]) - rec.x[:, j + 1].float()).abs().max() < 0.02
    assert (step(rec, 4, rec.x[:, 4]).clamp(-1, 1) - guided).abs().max() < 0.02
    # with recurrence the state recorded is the renoised x_t the last pass stepped from, not the previous output
    rec = record_steps(tiny_model, seeds, 5, bright_guidance(recurrence=1))
    torch.testing.assert_close(rec.images, sample(tiny_model, seeds, steps=5, guidance=bright_guidance(recurrence=1)))
    assert (step(rec, 4, rec.x[:, 4]).clamp(-1, 1) - rec.images).abs().max() < 0.02
    assert (step(rec, 2, rec.x[:, 2]) - rec.x[:, 3].float()).abs().mean() > 0.1


def test_distilling_the_steps_moves_unguided_samples_onto_the_guided_ones(tiny_model):
    """Trained on the brightness-guided sampler's steps from some seeds, the student's *unguided* samples from
    other seeds approach what the guided sampler makes of them; a flipped or inert loop does not."""
    from rlhf.distil import record_steps

    rec = record_steps(tiny_model, list(range(900, 964)), 4, bright_guidance())
    student = copy.deepcopy(tiny_model)
    info = train_distil(student, rec, DistilConfig(target="steps", steps=60, batch_size=32, lr=3e-4, ema=0.0))
    assert info["losses"][-1] < info["losses"][0]
    held_out = list(range(2000, 2032))
    base = sample(tiny_model, held_out, steps=4)
    guided = sample(tiny_model, held_out, steps=4, guidance=bright_guidance())
    mine = sample(student, held_out, steps=4)
    gain = float(guided.mean() - base.mean())
    assert gain > 0.1, gain
    assert float(mine.mean() - base.mean()) > 0.5 * gain, (float(mine.mean()), float(base.mean()), float(guided.mean()))
    assert float((mine - guided).pow(2).mean()) < 0.6 * float((base - guided).pow(2).mean())


def test_a_distil_target_must_match_its_data(tiny_model):
    from rlhf.distil import record_steps

    with pytest.raises(CensorError, match="distil target is one of"):
        DistilConfig(target="pixels").check()
    with pytest.raises(CensorError, match="needs recorded Steps"):
        train_distil(copy.deepcopy(tiny_model), targets(0.5), DistilConfig(target="steps", steps=1))
    with pytest.raises(CensorError, match="needs images"):
        train_distil(copy.deepcopy(tiny_model), record_steps(tiny_model, SEEDS[:2], 2), DistilConfig(target="images", steps=1))
