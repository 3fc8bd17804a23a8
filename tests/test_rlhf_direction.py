"""rlhf/: the training loops move samples the rewarded way (issue 22), not merely "run".

A known reward, the mean brightness of the final image, on the tiny UNet: a few DDPO updates must
raise it, and so must D3PO on preferences for the brighter image of each pair. Both would fail with
a flipped loss sign or a wrong log-probability (checked by flipping them), and DDPO failed before
the last step (σ ≈ 0.01) was left out of training (``CommonConfig.min_sigma``), and again while the
per-image step noise replayed the initial noise (a 2**40 seed offset that torch truncates to 32 bits).
"""

import copy

import pytest
import torch

from rlhf.rollout import rollout
from rlhf.train import D3POConfig, DDPOConfig, train_d3po, train_ddpo

STEPS = 3


def brightness(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(1, 2, 3))


def mean_brightness(model) -> float:
    """Mean reward of 32 fixed rollouts (same x_T and step noise before and after training)."""
    traj = rollout(model.unet, model.scheduler.config, seeds=list(range(100, 132)), steps=STEPS, eta=1.0,
                   generator=torch.Generator().manual_seed(123))
    return float(brightness(traj.images).mean())


@pytest.fixture
def fresh(tiny_model):
    return copy.deepcopy(tiny_model)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ddpo_moves_brightness_the_rewarded_way(fresh, sign):
    """Both signs of the reward: a drift that ignores the reward (sign-like Adam steps on every weight
    of a random UNet drift it darker at small batches) cannot pass both."""
    before = mean_brightness(fresh)
    info = train_ddpo(fresh, lambda im: sign * brightness(im),
                      DDPOConfig(steps=STEPS, epochs=3, images=128, batch_size=128, full=True, lr=3e-4, seed=0,
                                 rollout_batch=256))
    gain = sign * (mean_brightness(fresh) - before)
    # measured (seeds 0-2) +0.14 / +0.18 / +0.14 for +brightness and +0.11 / +0.17 / +0.13 for -brightness;
    # with the step noise replaying x_T (the issue-22 defect) -0.12 and -0.14 at 256 images
    assert gain > 0.06, (gain, info["reward_mean"])
    assert info["reward_mean"][-1] > info["reward_mean"][0]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ddpo_with_a_value_baseline_moves_brightness_the_rewarded_way(fresh, sign):
    """Step j's advantage R − V(x_t): a state-dependent baseline leaves the expected gradient as it was. V here
    is what the state's brightness says (a rough value); a loop that dropped R or flipped it fails a sign."""
    before = mean_brightness(fresh)
    info = train_ddpo(fresh, lambda im: sign * brightness(im),
                      DDPOConfig(steps=STEPS, epochs=3, images=128, batch_size=128, full=True, lr=3e-4, seed=0,
                                 rollout_batch=256, baseline="value"),
                      value_fn=lambda x, t: sign * 0.5 * x.clamp(-1, 1).mean(dim=(1, 2, 3)))
    gain = sign * (mean_brightness(fresh) - before)
    assert gain > 0.06, (gain, info["reward_mean"])


def test_value_advantages_credit_the_steps_that_changed_the_expectation():
    from types import SimpleNamespace

    from censor.core.errors import CensorError
    from rlhf.train import step_advantages, value_from

    R = torch.tensor([1.0, -1.0, 0.5, -0.5])
    traj = SimpleNamespace(steps=3, xs=torch.zeros(4, 4, 1, 2, 2), timesteps=torch.tensor([900, 500, 100]))
    mean = step_advantages(R, slice(0, 4), traj, DDPOConfig(), None)
    assert mean.shape == (4, 3) and torch.equal(mean[:, 0], mean[:, 2])  # every step: the standardised reward
    known = {900: torch.zeros(4), 500: R / 2, 100: R}  # the outcome decided between t = 900 and t = 100
    adv = step_advantages(R, slice(0, 4), traj, DDPOConfig(baseline="value"), lambda x, t: known[int(t)])
    torch.testing.assert_close(adv[:, 0], R / R.std())
    torch.testing.assert_close(adv[:, 1], R / 2 / R.std())
    assert torch.equal(adv[:, 2], torch.zeros(4))  # once the value knows the outcome, no credit is left
    torch.testing.assert_close(step_advantages(R, slice(2, 4), traj, DDPOConfig(baseline="value"),
                                               lambda x, t: known[int(t)][2:])[:, 0], R[2:] / R.std())
    with pytest.raises(CensorError, match="needs a value function"):
        step_advantages(R, slice(0, 4), traj, DDPOConfig(baseline="value"), None)
    with pytest.raises(CensorError, match="time-dependent"):
        value_from(SimpleNamespace(time_dependent=False))
    with pytest.raises(CensorError, match="baseline is one of"):
        DDPOConfig(baseline="median").check()


def test_step_noise_is_independent_of_the_initial_noise():
    """torch keeps only 32 bits of a seed: step seeds must not alias the x_T seeds they derive from."""
    from censor.diffusion.steps import initial_noise
    from rlhf.run import step_seed

    seeds = [0, 5, 2**20 + 3]
    x_T = initial_noise(seeds, (1, 8, 8))
    for i, s in enumerate(seeds):
        first = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(step_seed(s, 0)))
        assert not torch.allclose(first, x_T[i])
        assert step_seed(s, 0) != step_seed(s, 1) and step_seed(s, 0) == step_seed(s, 0)
    assert abs(float(torch.corrcoef(torch.stack([x_T.flatten(), torch.cat([torch.randn(
        (1, 8, 8), generator=torch.Generator().manual_seed(step_seed(s, 0))).flatten() for s in seeds])]))[0, 1])) < 0.3


def brighter_of_each_pair(images: torch.Tensor) -> list[int]:
    """Groups of two (shared x_T): the brighter image is benign (1, preferred), the other malign (0)."""
    b = brightness(images).reshape(-1, 2)
    first = (b[:, 0] > b[:, 1]).long()
    return torch.stack([first, 1 - first], dim=1).reshape(-1).tolist()


def test_d3po_prefers_the_brighter_image_of_each_pair(fresh):
    before = mean_brightness(fresh)
    info = train_d3po(fresh, brighter_of_each_pair,
                      D3POConfig(steps=STEPS, epochs=2, groups=128, group_size=2, batch_groups=128, full=True,
                                 lr=1e-3, seed=0, rollout_batch=256))
    assert info["pairs"] == [128] * 2  # every pair gives one preference
    gain = mean_brightness(fresh) - before
    # 16 groups x 4 epochs gave +0.04 / +0.20 / -0.17 / +0.27 over seeds 0-3: too few pairs to be sure;
    # 128 x 2 gave +0.19 / +0.30 / +0.20 (seeds 0-2)
    assert gain > 0.08, gain


def test_the_near_deterministic_last_step_is_not_trained(tiny_model):
    from censor.core.errors import CensorError
    from rlhf.rollout import make_rollout_scheduler, step_sigmas
    from rlhf.run import trained_steps

    sched = make_rollout_scheduler(tiny_model.scheduler.config, 10)
    sigmas = step_sigmas(sched, 1.0)
    assert sigmas[-1] < 0.02 < 0.2 < sigmas[:-1].min()  # onto ᾱ_0: σ ≈ 0.01, the others ≥ 0.28
    assert trained_steps(sched, 1.0, 0.05).tolist() == list(range(9))
    assert trained_steps(sched, 1.0, 0.0).tolist() == list(range(10))
    with pytest.raises(CensorError, match="min_sigma"):
        trained_steps(sched, 1.0, 5.0)
