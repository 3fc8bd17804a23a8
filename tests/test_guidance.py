"""Each guidance formula on tiny models: identities, a reward that prefers brightness, the NaN guard."""

from dataclasses import dataclass

import pytest
import torch

from censor.core.errors import CensorError
from censor.diffusion.steps import eps_from_x0, renoise, x0_from_eps
from censor.sampling.guidance import Guidance
from censor.sampling.loop import sample, seeds_for
from censor.sampling.pieces import BackwardGuidance, TimeGuidance, UniversalGuidance, shift_eps


@dataclass
class BrightnessReward:
    """log r(x) = log sigmoid(scale * pixel sum): prefers bright images, at every t."""

    scale: float = 0.05
    time_dependent: bool = True
    kind: str = "analytic"

    def log_prob(self, x, t=None):
        return torch.nn.functional.logsigmoid(self.scale * x.flatten(1).sum(1))


class NaNReward(BrightnessReward):
    def log_prob(self, x, t=None):
        return (x.flatten(1).mean(1) * float("nan"))


def test_x0_eps_round_trip_and_shift():
    x, eps, ab = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor(0.3)
    torch.testing.assert_close(eps_from_x0(x, x0_from_eps(x, eps, ab), ab), eps)
    g = torch.ones_like(eps)
    torch.testing.assert_close(shift_eps(eps, g, 2.0, ab), eps - 2.0 * (0.7 ** 0.5))


def test_renoise_is_the_forward_kernel():
    gen = torch.Generator().manual_seed(0)
    x_prev = torch.zeros(20000, 1, 1, 1)
    ab_t, ab_prev = torch.tensor(0.5), torch.tensor(0.8)
    out = renoise(x_prev, ab_t, ab_prev, gen)
    assert out.std().item() == pytest.approx((1 - 0.5 / 0.8) ** 0.5, rel=0.03)
    same = renoise(torch.ones(2, 1, 1, 1), ab_prev, ab_prev, gen)
    torch.testing.assert_close(same, torch.ones(2, 1, 1, 1))


def test_zero_weight_equals_unguided(tiny_model):
    seeds = seeds_for(3, 2)
    base = sample(tiny_model, seeds, steps=4)
    for piece in (TimeGuidance(BrightnessReward(), 0.0), UniversalGuidance(BrightnessReward(), 0.0)):
        torch.testing.assert_close(sample(tiny_model, seeds, steps=4, guidance=Guidance([piece])), base,
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [
    lambda r: [TimeGuidance(r, 10.0)],
    lambda r: [UniversalGuidance(r, 100.0)],  # x̂0's Jacobian is small at high noise: needs more weight
    lambda r: [TimeGuidance(r, 0.0), BackwardGuidance(r, steps=3, lr=0.05)],
])
def test_brightness_reward_makes_samples_brighter(gaussian_model, make):
    """On exact Gaussian data (mean 0, sd 0.3) every piece moves samples toward brighter pixels."""
    seeds = seeds_for(64, 0)
    base = sample(gaussian_model, seeds, steps=50)
    guided = sample(gaussian_model, seeds, steps=50, guidance=Guidance(make(BrightnessReward())))
    assert abs(base.mean()) < 0.03 and 0.25 < base.std() < 0.32  # the sampler itself is right
    assert guided.mean() > base.mean() + 0.1, (guided.mean(), base.mean())


def test_window_and_recurrence_counts(tiny_model):
    g = Guidance([TimeGuidance(BrightnessReward(), 1.0)], window=(0, 600), recurrence=2)
    sample(tiny_model, seeds_for(2, 0), steps=4, guidance=g)  # timesteps 999, 749, 499, 249
    assert g.stats["guided_steps"] == 2 * 3
    with pytest.raises(CensorError):
        Guidance([TimeGuidance(BrightnessReward(), 1.0)], window=(500, 100))


def test_nan_gradients_fall_back_to_unguided(tiny_model):
    seeds = seeds_for(2, 1)
    g = Guidance([TimeGuidance(NaNReward(), 1.0)])
    out = sample(tiny_model, seeds, steps=3, guidance=g)
    assert torch.isfinite(out).all()
    assert g.stats["nonfinite_fallbacks"] == 2 * 3
    torch.testing.assert_close(out, sample(tiny_model, seeds, steps=3), atol=1e-5, rtol=0)


def test_time_guidance_refuses_a_clean_image_reward():
    r = BrightnessReward(time_dependent=False, kind="resnet18")
    with pytest.raises(CensorError, match="universal"):
        TimeGuidance(r, 1.0)


def test_ddpm_encoder_reward_shares_the_samplers_unet_pass(tiny_model):
    """The hooked mid-block features give the same guided ε as a separate encoder pass, with one UNet call."""
    from censor.rewards.architectures import build_member
    from censor.rewards.ensemble import RewardEnsemble
    from censor.sampling.guidance import build_guidance
    from censor.sampling.pieces import StepContext

    torch.manual_seed(1)
    reward = RewardEnsemble("ddpm-encoder", [build_member("ddpm-encoder", tiny_model) for _ in range(3)]).eval()
    assert reward.reads_unet is tiny_model.unet
    x, t = torch.randn(4, 1, 28, 28), 600
    ab = tiny_model.scheduler.alphas_cumprod[t]
    piece = TimeGuidance(reward, 5.0)
    with torch.no_grad():
        eps = tiny_model.unet(x, t).sample
    shared = piece(StepContext(tiny_model.unet, x, t, ab, None))
    separate = piece(StepContext(tiny_model.unet, x, t, ab, eps))
    assert torch.allclose(shared, separate, atol=1e-5)
    assert (shared - eps).abs().max() > 1e-6  # the guidance did something

    calls = []
    hook = tiny_model.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        sample(tiny_model, seeds_for(2, 0), steps=4, guidance=build_guidance(reward, "time", 1.0))
    finally:
        hook.remove()
    assert len(calls) == 4  # one ε_θ pass per step: the reward rode along


def test_reusing_the_gradient_halves_reward_calls_and_every_1_is_unchanged(gaussian_model):
    from censor.sampling.guidance import build_guidance

    class Counting(BrightnessReward):
        calls = 0

        def log_prob(self, x, t=None):
            Counting.calls += 1
            return super().log_prob(x, t)

    seeds = seeds_for(3, 0)
    plain = sample(gaussian_model, seeds, steps=10, guidance=build_guidance(BrightnessReward(), "time", 2.0))
    Counting.calls = 0
    same = sample(gaussian_model, seeds, steps=10, guidance=build_guidance(Counting(), "time", 2.0, every=1))
    assert Counting.calls == 10 and torch.allclose(plain, same)
    Counting.calls = 0
    reused = sample(gaussian_model, seeds, steps=10, batch_size=2,
                    guidance=build_guidance(Counting(), "time", 2.0, every=2))
    assert Counting.calls == 10  # 5 per batch of the two batches: a fresh gradient on every other step
    unguided = sample(gaussian_model, seeds, steps=10)
    assert reused.mean() > unguided.mean() + 0.05  # still pushes towards brightness
    with pytest.raises(CensorError, match="only supported for time"):
        build_guidance(BrightnessReward(), "universal", 1.0, every=2)
