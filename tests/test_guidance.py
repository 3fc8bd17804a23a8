"""Each guidance formula on tiny models: identities, a reward that prefers brightness, the NaN guard."""

from dataclasses import dataclass

import pytest
import torch

from censor.core.errors import CensorError
from censor.diffusion.models import build_scheduler
from censor.diffusion.steps import (
    ddim_step,
    eps_from_x0,
    make_scheduler,
    renoise,
    step_alphas,
    step_stride,
    x0_from_eps,
)
from censor.sampling.guidance import Guidance, build_guidance
from censor.sampling.loop import sample, seeds_for
from censor.sampling.pieces import BackwardGuidance, StepContext, TimeGuidance, UniversalGuidance, shift_eps


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


def test_step_alphas_follow_the_respaced_schedule_and_end_on_final():
    ac = torch.linspace(0.99, 0.01, 1000)
    sched = make_scheduler(build_scheduler().config, "ddim", 10)
    stride = step_stride(sched)
    assert stride == 100
    ab, ab_prev = step_alphas(ac, 999, stride, torch.tensor(1.0))
    assert ab == ac[999] and ab_prev == ac[899]
    ab, ab_prev = step_alphas(ac, torch.tensor([450, 50]), stride, torch.tensor(1.0))  # one t per sample
    assert torch.equal(ab, ac[[450, 50]]) and torch.equal(ab_prev, torch.stack([ac[350], torch.tensor(1.0)]))
    # the rollouts' scheduler ends on ᾱ_0, the sampler's on the config's choice (1 here)
    rollout_sched = make_scheduler(build_scheduler().config, "ddim", 10, set_alpha_to_one=False)
    assert rollout_sched.final_alpha_cumprod == rollout_sched.alphas_cumprod[0]
    assert sched.final_alpha_cumprod == 1.0


def test_ddim_step_with_eta_0_is_diffusers_deterministic_step():
    """The one DDIM formula gives the sampler's (diffusers') x_{t-1} where the two share ᾱ_t'."""
    sched = make_scheduler(build_scheduler().config, "ddim", 10)
    torch.manual_seed(0)
    x, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for t in sched.timesteps[:-1]:
        step = ddim_step(sched, eps, t, x, 0.0, use_clipped_model_output=True)
        ref = sched.step(eps, t, x, eta=0.0, use_clipped_model_output=True)
        torch.testing.assert_close(step.mean, ref.prev_sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(step.x0, ref.pred_original_sample, atol=1e-5, rtol=0)
        assert torch.all(step.std == 0)


def test_a_piece_called_on_its_own_has_no_memory(gaussian_model):
    """Pieces are pure: calling time guidance (every > 1) twice takes two fresh gradients, and the
    step it was given is unchanged; only a carry handed back in makes it reuse one."""
    piece = TimeGuidance(BrightnessReward(), 10.0, every=5)
    ab = gaussian_model.scheduler.alphas_cumprod
    x1, x2 = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8) + 1.0
    s1 = StepContext(gaussian_model.unet, x1, 600, ab[600])
    s2 = StepContext(gaussian_model.unet, x2, 500, ab[500])
    piece(s1)
    assert s1.eps is None and s1.unguided_eps is None
    fresh = piece(s2)
    torch.testing.assert_close(fresh, TimeGuidance(BrightnessReward(), 10.0)(s2))
    # with the carry of the step at t = 600, the step at t = 500 reuses that step's gradient
    _, carry = piece.advance(s1)
    reused, carry2 = piece.advance(s2, carry)
    eps2 = gaussian_model.unet(x2, 500).sample
    torch.testing.assert_close(reused.eps, shift_eps(eps2, carry.grad, 10.0, ab[500]))
    assert carry2.since == 1 and carry2.grad is carry.grad
    # a redo of the same timestep (recurrence) takes a fresh gradient
    _, carry3 = piece.advance(s2, carry2)
    assert carry3.since == 0 and carry3.grad is not carry.grad


def test_reused_gradients_start_fresh_in_every_batch(gaussian_model):
    """The loop hands each batch fresh carries: an image is the same whatever batch it falls in."""
    seeds = seeds_for(5, 3)
    g = lambda: build_guidance(BrightnessReward(), "time", 5.0, every=3)  # noqa: E731
    together = sample(gaussian_model, seeds, steps=9, batch_size=5, guidance=g())
    torch.testing.assert_close(sample(gaussian_model, seeds, steps=9, batch_size=2, guidance=g()), together,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(sample(gaussian_model, seeds, steps=9, batch_size=1, guidance=g()), together,
                               atol=1e-6, rtol=0)
