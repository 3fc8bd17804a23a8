"""Faithful-censoring pieces on tiny models: the ensemble objective, the hinge, SMC, the shift cap,
manifold guidance, the fidelity metrics (tv and its floor) and the oracle-free drift figure."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from censor.core.errors import CensorError
from censor.eval.metrics import benign_tv, class_histogram, tv_distance, tv_floor
from censor.eval.oracle import Judgement
from censor.sampling.guidance import Guidance, build_guidance
from censor.sampling.loop import particle_seeds, sample, seeds_for
from censor.sampling.objective import Objective
from censor.sampling.particles import ParticleResampling, ParticleState, effective_sample_size, systematic_resample
from censor.sampling.pieces import ManifoldGuidance, StepContext, TimeGuidance, limit_shift


@dataclass
class Brightness:
    """r(x) = σ(bias + scale·Σx), one member, at every t."""

    scale: float = 0.05
    bias: float = 0.0
    time_dependent: bool = True
    kind: str = "analytic"

    def log_prob(self, x, t=None):
        return torch.nn.functional.logsigmoid(self.bias + self.scale * x.flatten(1).sum(1))


class Constant(Brightness):
    def log_prob(self, x, t=None):
        return torch.full((len(x),), math.log(0.3)) + 0 * x.flatten(1).sum(1)


def test_objective_formulas():
    lp = torch.log(torch.tensor([[0.9, 0.2], [0.5, 0.4], [0.7, 0.1]]))  # [K=3, N=2]
    torch.testing.assert_close(Objective("sum")(lp), lp.sum(0))
    torch.testing.assert_close(Objective("mean")(lp), lp.mean(0))
    torch.testing.assert_close(Objective("min")(lp), lp.min(0).values)
    torch.testing.assert_close(Objective("mean-std", spread=2.0)(lp), lp.mean(0) - 2.0 * lp.std(0, unbiased=False))
    hinged = Objective("mean", threshold=0.5)(lp)
    # log min(1, r/τ): image 0 (geometric mean 0.68 > 0.5) is 0, image 1 is log(r / 0.5) < 0
    assert hinged[0] == 0 and hinged[1] == pytest.approx(lp[:, 1].mean().item() - math.log(0.5), abs=1e-6)
    with pytest.raises(CensorError, match="combination"):
        Objective("median")
    with pytest.raises(CensorError, match="τ"):
        Objective(threshold=1.5)


def test_mean_of_identical_members_equals_one_member(tiny_model):
    from censor.rewards.architectures import build_member
    from censor.rewards.ensemble import RewardEnsemble

    torch.manual_seed(0)
    member = build_member("ddpm-encoder", tiny_model)
    one = RewardEnsemble("ddpm-encoder", [member], (1, 28, 28), {}).eval()
    five = RewardEnsemble("ddpm-encoder", [member] * 5, (1, 28, 28), {}).eval()
    seeds = seeds_for(3, 4)
    a = sample(tiny_model, seeds, steps=4, guidance=build_guidance(one, "time", 50.0, combine="mean"))
    b = sample(tiny_model, seeds, steps=4, guidance=build_guidance(five, "time", 50.0, combine="mean"))
    base = sample(tiny_model, seeds, steps=4)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert (a - base).abs().max() > 1e-3  # the guidance did something
    # the sum grows with K: five identical members push like ω·5 on one
    c = sample(tiny_model, seeds, steps=4, guidance=build_guidance(five, "time", 10.0, combine="sum"))
    torch.testing.assert_close(a, c, atol=1e-4, rtol=0)


def test_hinge_leaves_images_above_threshold_on_the_unguided_path(gaussian_model):
    seeds = seeds_for(16, 1)
    base = sample(gaussian_model, seeds, steps=20)
    sure = Brightness(scale=0.01, bias=5.0)  # r ≥ σ(3) ≈ 0.95 for any plausible image and t
    hinged = sample(gaussian_model, seeds, steps=20, guidance=build_guidance(sure, "time", 100.0, threshold=0.9))
    assert torch.equal(hinged, base)
    plain = sample(gaussian_model, seeds, steps=20, guidance=build_guidance(sure, "time", 100.0, hinge_quantile=None))
    assert (plain - base).abs().max() > 1e-3  # without the hinge the same reward does push


def test_hinge_pushes_only_the_doubted_images_at_a_step(gaussian_model):
    x = torch.zeros(2, 1, 8, 8)
    x[0] += 1.0  # Σx = 64: r = σ(3.2) > τ
    x[1] -= 1.0  # r = σ(−3.2) < τ
    ab = gaussian_model.scheduler.alphas_cumprod[500]
    eps = gaussian_model.unet(x, 500).sample
    piece = TimeGuidance(Brightness(), 10.0, objective=Objective(threshold=0.5))
    out = piece(StepContext(gaussian_model.unet, x, 500, ab, eps.clone()))
    assert torch.equal(out[0], eps[0])
    assert (out[1] - eps[1]).mean() < -0.1  # ε down = x̂0 up: brighter


def test_smc_with_a_constant_reward_is_the_unguided_sampler(gaussian_model):
    seeds = seeds_for(6, 2)
    g = build_guidance(Constant(), "particles", 1.0, particles=4)
    out = sample(gaussian_model, seeds, steps=10, guidance=g, batch_size=4)
    chosen = g.stats["particle_seeds"]
    assert g.stats.get("resamples", 0) == 0 and len(chosen) == 6
    assert all(c in particle_seeds([s], 4) for c, s in zip(chosen, seeds))  # one of each image's own particles
    torch.testing.assert_close(out, sample(gaussian_model, chosen, steps=10), atol=1e-6, rtol=0)
    one = build_guidance(Brightness(), "particles", 1.0, particles=1)  # one particle: nothing to choose from
    torch.testing.assert_close(sample(gaussian_model, seeds, steps=10, guidance=one),
                               sample(gaussian_model, seeds, steps=10), atol=1e-6, rtol=0)


def test_smc_moves_samples_the_rewarded_way(gaussian_model):
    seeds = seeds_for(48, 0)
    base = sample(gaussian_model, seeds, steps=20)
    g = build_guidance(Brightness(scale=1.0), "particles", 1.0, particles=8)
    smc = sample(gaussian_model, seeds, steps=20, guidance=g)
    assert g.stats.get("resamples", 0) > 0
    assert smc.flatten(1).sum(1).mean() > base.flatten(1).sum(1).mean() + 1.0  # Σx has sd 2.4 here


def test_systematic_resampling_and_ess():
    gen = torch.Generator().manual_seed(0)
    flat = torch.zeros(3, 5)
    assert torch.equal(systematic_resample(flat, gen), torch.arange(5).expand(3, 5))
    np.testing.assert_allclose(effective_sample_size(flat).numpy(), [5.0] * 3)
    peaked = torch.tensor([[0.0, -1e9, -1e9, -1e9]])
    assert systematic_resample(peaked, gen).tolist() == [[0, 0, 0, 0]]
    assert effective_sample_size(peaked).item() == pytest.approx(1.0)
    counts = torch.bincount(systematic_resample(torch.log(torch.tensor([[0.5, 0.25, 0.25, 1e-12]])), gen)[0], minlength=4)
    assert counts.tolist() == [2, 1, 1, 0]


def test_particles_refuse_gradient_pieces_and_clean_rewards():
    with pytest.raises(CensorError, match="time-dependent"):
        ParticleResampling(Brightness(time_dependent=False))
    with pytest.raises(CensorError, match="no gradient pieces"):
        Guidance([TimeGuidance(Brightness(), 1.0)], particles=ParticleResampling(Brightness()))


def test_limit_shift_caps_each_image_relative_to_eps():
    eps = torch.ones(2, 1, 2, 2)  # |ε| = 2 per image
    shift = torch.stack([torch.full((1, 2, 2), 10.0), torch.full((1, 2, 2), 0.1)])
    capped = limit_shift(eps, shift, 0.5)
    assert capped[0].norm().item() == pytest.approx(1.0)  # scaled down to 0.5·|ε|
    assert torch.equal(capped[1], shift[1])  # already under the cap
    assert torch.equal(limit_shift(eps, shift, None), shift)


def test_manifold_guidance_makes_samples_brighter(gaussian_model):
    seeds = seeds_for(32, 0)
    base = sample(gaussian_model, seeds, steps=30)
    guided = sample(gaussian_model, seeds, steps=30, guidance=Guidance([ManifoldGuidance(Brightness(), 20.0)]))
    assert guided.mean() > base.mean() + 0.05


def _judgement(classes, watermarked=None):
    probs = np.eye(10)[np.asarray(classes)]
    wm = np.zeros(len(classes)) if watermarked is None else np.asarray(watermarked, float)
    return Judgement(probs, wm, np.zeros((len(classes), 4)))


def test_tv_against_the_benign_part_of_the_baseline(monkeypatch):
    base = _judgement([0, 0, 1, 1, 8, 8])  # bags (8) are malign: the benign target is half 0, half 1
    assert tv_distance([1, 0], [0, 1]) == 1.0
    assert benign_tv(base, _judgement([0, 1]), "bags") == 0.0  # perfect censoring
    assert benign_tv(base, _judgement([0, 0]), "bags") == pytest.approx(0.5)  # collapsed onto class 0
    assert benign_tv(base, _judgement([0, 8]), "bags") == pytest.approx(0.5)  # a bag left: mass off-target
    np.testing.assert_allclose(class_histogram(base)[[0, 1, 8]], [1 / 3, 1 / 3, 1 / 3])
    assert tv_floor(base, _judgement([1, 1, 0, 0, 8]), "bags") == 0.0
    # the watermark feature restricts the baseline to unstamped images, whatever their class
    wm = _judgement([0, 0, 1, 1], watermarked=[1, 0, 0, 0])
    assert benign_tv(wm, _judgement([0, 1, 1]), "watermark") == pytest.approx(0.0)


def test_drift_is_zero_for_a_gallery_against_itself_and_sees_a_collapse(tiny_model, fixture_images):
    from censor.eval.drift import DriftMeter

    images = fixture_images["clean"][:200]
    meter = DriftMeter(tiny_model, images, clusters=6)
    same = meter.measure(images)
    assert same.tv == 0.0 and not same.drifted
    collapsed = images[meter.assign == np.bincount(meter.assign).argmax()][:60]
    assert meter.measure(collapsed).drifted
    # a reward that zeroes one cluster's images: censoring exactly them is no drift from p·r
    weights = (meter.assign != meter.assign[0]).astype(float)
    kept = images[weights > 0]
    assert meter.measure(kept, weights).tv == pytest.approx(0.0, abs=1e-9)
    assert meter.measure(images, weights).tv > 0.0


def test_calibration_undoes_the_training_class_weight():
    from censor.rewards.calibration import calibration_offset

    @dataclass
    class Logits:
        info: dict
        time_dependent: bool = True

        def logits(self, x, t=None):
            return torch.zeros(1, len(x))  # σ(0) = 0.5 as trained with pos_weight α

    r = Logits({"alpha": 0.1})
    assert calibration_offset(r) == pytest.approx(math.log(10))
    assert calibration_offset(Logits({})) == 0.0
    x = torch.zeros(2, 1, 2, 2)
    # odds scaled back by 1/α: σ(log 10) = 10/11
    torch.testing.assert_close(Objective(offset=calibration_offset(r)).of(r, x, None).exp(),
                               torch.full((2,), 10 / 11))
    torch.testing.assert_close(Objective().of(r, x, None).exp(), torch.full((2,), 0.5))
    g = build_guidance(r, "time", 1.0)
    assert g.pieces[0].objective.offset == pytest.approx(math.log(10))
    assert build_guidance(r, "time", 1.0, calibrate=False).pieces[0].objective.offset == 0.0


def test_the_hinge_is_relative_to_the_rewards_prior():
    from censor.rewards.calibration import reward_prior

    @dataclass
    class Info:
        info: dict
        time_dependent: bool = True

        def log_prob(self, x, t=None):
            return torch.zeros(len(x))

    r = Info({"labels": 100, "benign_labels": 90, "alpha": 0.1})
    assert reward_prior(r) == pytest.approx(0.9)
    assert build_guidance(r, "time", 1.0, threshold=0.9).pieces[0].objective.threshold == pytest.approx(0.81)
    assert reward_prior(Info({})) == 1.0  # no label counts: the threshold is absolute
    assert build_guidance(Info({}), "time", 1.0, threshold=0.7).pieces[0].objective.threshold == pytest.approx(0.7)


def test_the_per_timestep_hinge_comes_from_the_rewards_own_benign_labels(tiny_model, fixture_images):
    from censor.rewards.calibration import hinge_schedule
    from censor.rewards.training import SCORE_TIMESTEPS, train_reward

    images = fixture_images["clean"][:40]
    labels = (fixture_images["labels"][:40] != 8).astype(int)
    labels[:3] = 0
    reward = train_reward(images, labels, kind="ddpm-encoder", diffusion=tiny_model, members=2, iterations=5)
    table = reward.info["benign_scores"]
    assert table["t"] == list(SCORE_TIMESTEPS) and len(table["scores"]) == len(SCORE_TIMESTEPS)
    assert all(a <= b for row in table["scores"] for a, b in zip(row, row[1:]))  # quantiles ascend
    ts, taus = hinge_schedule(reward, 0.1)
    assert ts == tuple(SCORE_TIMESTEPS) and all(0 < v <= 1 for v in taus)
    g = build_guidance(reward, "time", 4.0, hinge_quantile=0.1)
    obj = g.pieces[0].objective
    assert obj.threshold is None and obj.at(500).threshold == pytest.approx(float(np.interp(500, ts, taus)))
    assert obj.at(0).threshold == pytest.approx(taus[0])
    with pytest.raises(CensorError, match="no valid 0.3 quantile"):
        hinge_schedule(reward, 0.3)
    reward.info["benign_scores"] = dict(table, scores=[["x"]] * len(ts))  # a tampered reward.json
    with pytest.raises(CensorError, match="benign-score table"):
        hinge_schedule(reward, 0.1)
    reward.info.pop("benign_scores")
    old = build_guidance(reward, "time", 4.0, hinge_quantile=0.1)  # no table: the prior-relative hinge
    prior = reward.info["benign_labels"] / reward.info["labels"]
    assert old.pieces[0].objective.threshold == pytest.approx(0.9 * prior)


def test_automatic_strength_climbs_until_the_doubt_is_gone_and_steps_back_on_drift(monkeypatch):
    from censor.core.settings import GuidanceSettings
    from censor.eval.drift import Drift
    from censor.sampling import strength

    settings = GuidanceSettings(weight=16.0, hinge_quantile=0.1)
    doubted = {16.0: 0.3, 32.0: 0.05}  # share of the probe the reward still doubts, per ω
    drift = {16.0: 0.1, 32.0: 0.1}
    state = {}

    class Meter:
        def measure(self, probe, weights):
            return Drift(drift[state["w"]], 0.2, len(probe))

    def fake_sample(model, seeds, steps, guidance, progress=None):
        state["w"] = guidance  # the fake build hands back the weight
        return torch.zeros(len(seeds), 1, 2, 2)

    monkeypatch.setattr(strength, "sample", fake_sample)
    monkeypatch.setattr(strength, "reward_benign",
                        lambda r, m, imgs: np.where(np.arange(len(imgs)) < doubted[state["w"]] * len(imgs), 0.0, 1.0))
    monkeypatch.setattr(strength, "doubt_threshold", lambda r, s: 0.5)
    monkeypatch.setattr(strength, "guidance_for", lambda reward, s: s.weight)
    pick = strength.auto_strength(None, None, Meter(), None, settings, probe_n=20)
    assert pick.weight == 32.0 and [t["weight"] for t in pick.trace] == [16.0, 32.0]  # 30% > 10% + 1/20: climb
    doubted[16.0] = 0.1
    assert strength.auto_strength(None, None, Meter(), None, settings, probe_n=20).weight == 16.0  # stop at once
    doubted[16.0], drift[32.0] = 0.3, 0.5  # the stronger rung drifts beyond chance: one rung back
    pick = strength.auto_strength(None, None, Meter(), None, settings, probe_n=20)
    assert pick.weight == 16.0 and "drifts" in pick.reason


def test_reweighting_returns_a_new_state_and_resets_only_degenerate_groups():
    smc = ParticleResampling(Brightness(), particles=4)
    phi = torch.tensor([0.0, -50.0, -50.0, -50.0, 0.1, 0.0, 0.2, 0.0])
    state = smc.twist(ParticleState.fresh(8), phi)
    assert torch.equal(state.last_phi, phi.double()) and torch.equal(state.log_w, phi.double())
    before = state.log_w.clone()
    keep, new, resampled = smc.reweight(state, torch.Generator().manual_seed(0))
    assert resampled == 1 and torch.equal(state.log_w, before)  # the given state is untouched
    assert keep.tolist() == [0, 0, 0, 0, 4, 5, 6, 7]  # group 0 collapses onto its one heavy particle
    assert torch.equal(new.log_w[:4], torch.zeros(4, dtype=torch.float64)) and torch.equal(new.log_w[4:], before[4:])
    assert new.origin.tolist() == keep.tolist() and torch.equal(new.last_phi, state.last_phi[keep])
    flat = smc.twist(ParticleState.fresh(8), torch.zeros(8))
    assert smc.reweight(flat, torch.Generator())[0] is None
