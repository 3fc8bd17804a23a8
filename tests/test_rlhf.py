"""rlhf/: DDIM log-probabilities, the D3PO and DDPO losses, LoRA adapters and one update of each loop."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from censor.core.errors import CensorError
from censor.diffusion.models import build_scheduler
from rlhf.adapters import add_lora, frozen_reference, load_adapter, save_adapter
from rlhf.losses import d3po_loss, ddpo_loss, standardise_advantages
from rlhf.rollout import ddim_step_with_logprob, make_rollout_scheduler, rollout, step_log_prob
from rlhf.train import D3POConfig, DDPOConfig, preference_pairs, train_d3po, train_ddpo


@pytest.fixture
def sched():
    return make_rollout_scheduler(build_scheduler().config, 10)


def base_state(unet):
    """Base weights under their plain names, whether or not LoRA layers wrap them."""
    return {k.replace(".base_layer", ""): v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}


def lora_state(unet):
    return {k: v.detach().clone() for k, v in unet.named_parameters() if "lora_" in k}


# 1. one DDIM step's log-probability ------------------------------------------------------------

@pytest.mark.parametrize("j", [0, 4, 9])  # first, middle and last (t_prev = 0) step
def test_ddim_logprob_is_the_gaussian_of_diffusers_step(sched, j):
    torch.manual_seed(1)
    x, eps, eta = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), 0.7
    t = sched.timesteps[j]
    prev, lp = ddim_step_with_logprob(sched, eps, t, x, eta, generator=torch.Generator().manual_seed(5))

    # mean and σ from diffusers itself: its step with zero noise is the mean, its variance gives σ
    ref = DDIMScheduler.from_config(sched.config)
    ref.set_timesteps(10)
    mean = ref.step(eps, t, x, eta=eta, variance_noise=torch.zeros_like(x)).prev_sample
    prev_t = int(t) - 1000 // 10
    std = eta * ref._get_variance(int(t), prev_t).sqrt()
    expected = torch.distributions.Normal(mean, std).log_prob(prev).mean(dim=(1, 2, 3))
    assert torch.isfinite(lp).all()
    assert torch.allclose(lp, expected, atol=1e-4)
    # the drawn sample is diffusers' sample for the same generator
    drawn = ref.step(eps, t, x, eta=eta, generator=torch.Generator().manual_seed(5)).prev_sample
    assert torch.allclose(prev, drawn, atol=1e-5)
    # scoring a given action draws nothing and reproduces the value; per-sample timesteps agree too
    again, lp2 = ddim_step_with_logprob(sched, eps, t.repeat(3), x, eta, prev_sample=prev)
    assert torch.equal(again, prev) and torch.allclose(lp2, lp, atol=1e-6)
    # a far-away action is less likely
    assert (ddim_step_with_logprob(sched, eps, t, x, eta, prev_sample=prev + 1.0)[1] < lp).all()


def test_rollout_shares_noise_in_groups_and_replays_exactly(tiny_model):
    unet, cfg = tiny_model.unet, tiny_model.scheduler.config
    traj = rollout(unet, cfg, seeds=[3, 4], steps=3, eta=1.0, group_size=2,
                   generator=torch.Generator().manual_seed(0))
    assert traj.xs.shape == (4, 4, 1, 28, 28) and traj.log_probs.shape == (4, 3)
    assert traj.group_ids.tolist() == [0, 0, 1, 1]
    assert torch.equal(traj.xs[0, 0], traj.xs[1, 0]) and not torch.equal(traj.xs[0, 0], traj.xs[2, 0])
    assert not torch.allclose(traj.images[0], traj.images[1])  # same x_T, different step noise
    assert traj.images.min() >= -1 and traj.images.max() <= 1
    # the same generator seed repeats the rollout
    again = rollout(unet, cfg, seeds=[3, 4], steps=3, eta=1.0, group_size=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.xs, traj.xs)
    # replaying a recorded step under the same UNet gives the recorded log-prob: PPO ratios start at 1
    s = make_rollout_scheduler(cfg, 3)
    with torch.no_grad():
        for j, t in enumerate(traj.timesteps):
            lp = step_log_prob(unet, s, traj.xs[:, j], t, traj.xs[:, j + 1], 1.0)
            assert torch.allclose(lp, traj.log_probs[:, j], atol=1e-5)
    with pytest.raises(CensorError):
        rollout(unet, cfg, seeds=[1], steps=3, eta=0.0)


# 2. D3PO loss -----------------------------------------------------------------------------------

def test_d3po_loss_ties_and_equal_policies_cost_log2():
    lw, lr_w, ll, lr_l = (torch.randn(5, requires_grad=True) for _ in range(4))
    tie = d3po_loss(lw, lr_w.detach(), ll, lr_l.detach(), preference=torch.zeros(5))
    assert math.isclose(tie.item(), math.log(2), rel_tol=1e-6)
    tie.backward()
    assert torch.count_nonzero(lw.grad) == 0 and torch.count_nonzero(ll.grad) == 0
    same = torch.randn(5)
    assert math.isclose(d3po_loss(same, same, same + 1, same + 1).item(), math.log(2), rel_tol=1e-6)


def test_d3po_step_raises_winner_over_loser_and_clamp_stops_it():
    base_w, base_l = torch.tensor([-1.0, -0.5]), torch.tensor([-0.7, -1.2])
    theta = torch.zeros(2, requires_grad=True)  # learnable log-prob offsets of winner and loser
    opt = torch.optim.SGD([theta], lr=0.1)
    margin0 = (theta[0] - theta[1]).item()
    loss = d3po_loss(base_w + theta[0], base_w, base_l + theta[1], base_l, beta=0.1, eps=0.1)
    loss.backward()
    assert theta.grad[0] < 0 < theta.grad[1]  # descent raises the winner, lowers the loser
    opt.step()
    assert (theta[0] - theta[1]).item() > margin0
    assert d3po_loss(base_w + theta[0], base_w, base_l + theta[1], base_l).item() < loss.item()
    # a winner already past the clamp (ratio > 1 + ε) gets no further push
    t = torch.tensor(0.2, requires_grad=True)
    d3po_loss(t.expand(2), torch.zeros(2), torch.zeros(2), torch.zeros(2)).backward()
    assert t.grad == 0


# 3. DDPO loss -----------------------------------------------------------------------------------

def test_ddpo_gradient_is_minus_advantage_at_ratio_one():
    old = torch.tensor([-1.0, -2.0, -0.5])
    adv = torch.tensor([2.0, -1.0, 0.5])
    new = old.clone().requires_grad_(True)
    loss, info = ddpo_loss(new, old, adv, clip_range=1e-4)
    loss.backward()
    assert torch.allclose(new.grad, -adv / 3)
    assert info["clipfrac"] == 0.0


def test_ddpo_clipping_stops_the_gradient_outside_the_range():
    old = torch.zeros(1)
    for adv, shift, stopped in [(1.0, 0.1, True), (-1.0, -0.1, True), (-1.0, 0.1, False), (1.0, -0.1, False)]:
        new = (old + shift).requires_grad_(True)
        ddpo_loss(new, old, torch.tensor([adv]), clip_range=0.01)[0].backward()
        assert (new.grad.abs().item() == 0) == stopped, (adv, shift)
    # the KL penalty enters with weight kl_beta / N
    kl = torch.tensor([0.2, 0.4], requires_grad=True)
    loss, info = ddpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), kl_ref=kl, kl_beta=0.5)
    loss.backward()
    assert torch.allclose(kl.grad, torch.full((2,), 0.25)) and info["kl_ref"] == pytest.approx(0.3)


def test_the_kl_penalty_is_the_exact_gaussian_kl_and_pulls_the_mean_home():
    """Against a Monte-Carlo estimate of E[log π − log π_ref]; its gradient moves μ towards μ_ref, which the
    per-sample estimate log π(a) − log π_ref(a) on π's own actions does not do in expectation."""
    from rlhf.losses import gaussian_kl
    from rlhf.rollout import gaussian_log_prob

    g = torch.Generator().manual_seed(0)
    mean_ref, std = torch.zeros(1, 4), torch.tensor(0.5)
    mean = torch.tensor([[0.3, -0.2, 0.1, 0.0]], requires_grad=True)
    a = mean.detach() + std * torch.randn(200_000, 4, generator=g)
    mc = (gaussian_log_prob(a, mean.detach().expand_as(a), std) - gaussian_log_prob(a, mean_ref.expand_as(a), std)).mean()
    kl = gaussian_kl(mean, mean_ref, std)
    assert kl.item() == pytest.approx(mc.item(), rel=0.05) and kl.item() == pytest.approx(0.14 / 4 / 0.5, rel=1e-6)
    kl.sum().backward()
    assert (mean.grad * mean.detach() >= 0).all() and mean.grad[0, 3] == 0  # descent moves μ towards μ_ref
    assert gaussian_kl(mean_ref, mean_ref, std).item() == 0


def test_advantages_are_standardised_and_clipped():
    a = standardise_advantages(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert abs(a.mean().item()) < 1e-6 and abs(a.std().item() - 1) < 1e-5
    assert standardise_advantages(torch.tensor([0.0] * 99 + [1000.0]), adv_clip=5).max().item() == 5.0
    assert torch.equal(standardise_advantages(torch.ones(4)), torch.zeros(4))


def test_unscaled_advantages_keep_the_rewards_units():
    """Under ``scale="none"`` a batch of nearly equal rewards (the malign rollouts gone) gives nearly zero
    advantages, where the std-scaled ones blow the same small differences up to unit size."""
    r = torch.tensor([-0.10, -0.12, -0.08, -0.10])
    a = standardise_advantages(r, scale="none")
    assert torch.allclose(a, r - r.mean()) and a.abs().max().item() < 0.03
    assert standardise_advantages(r).abs().max().item() > 1.0
    assert standardise_advantages(torch.tensor([0.0, -9.0]), adv_clip=5, scale="none").tolist() == [4.5, -4.5]
    with pytest.raises(CensorError, match="advantage scale"):
        DDPOConfig(adv_scale="unit").check()


def test_preference_pairs_within_groups_only():
    pairs = preference_pairs([1, 0, 0, 1, 1, -1, 0], [0, 0, 0, 1, 1, 1, 2]).tolist()
    assert sorted(pairs) == [[0, 1], [0, 2]]  # group 1: a tie and an "unsure"; group 2: one image
    with pytest.raises(CensorError):
        preference_pairs([1, 0], [0])


# 4. one update of each loop changes only the adapters --------------------------------------------

@pytest.fixture
def fresh(tiny_model):
    return copy.deepcopy(tiny_model)


def test_one_d3po_update_changes_only_lora(fresh):
    before = base_state(fresh.unet)
    seen = []
    info = train_d3po(fresh, lambda x: np.array([1, 0, 1, 0])[: len(x)],
                      D3POConfig(steps=2, epochs=1, groups=2, group_size=2, batch_groups=2),
                      progress=seen.append)
    after = fresh.unet
    assert info["pairs"] == [2] and len(info["losses"]) == 1 and np.isfinite(info["losses"][0])
    assert seen[-1] == 1.0 and info["seconds"] > 0
    for k, v in base_state(after).items():
        assert torch.equal(v, before[k]), k
    lora = lora_state(after)
    assert lora and any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at 0
    assert not any(p.requires_grad for p in after.parameters())  # handed back frozen


def test_one_ddpo_update_changes_only_lora(fresh):
    before = base_state(fresh.unet)
    info = train_ddpo(fresh, lambda x: x.mean(dim=(1, 2, 3)),
                      DDPOConfig(steps=2, epochs=1, images=4, batch_size=4, kl_beta=0.1,
                                 lora_target="attention+convs"))
    assert len(info["losses"]) == 1 and len(info["reward_mean"]) == 1
    for k, v in base_state(fresh.unet).items():
        assert torch.equal(v, before[k]), k
    lora = lora_state(fresh.unet)
    assert any("conv1" in k for k in lora)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)


def test_inner_epochs_reuse_labels_without_new_rollouts(fresh):
    calls = []

    def label(x):
        calls.append(len(x))
        return np.array([1, 0] * len(x))[: len(x)]

    info = train_d3po(fresh, label, D3POConfig(steps=2, epochs=1, groups=2, group_size=2, batch_groups=1,
                                              inner_epochs=3))
    assert calls == [4]  # one labelling round (4 images) ...
    assert len(info["losses"]) == 2 * 3  # ... feeds 2 minibatches x 3 passes
    with pytest.raises(CensorError, match="inner_epochs"):
        DDPOConfig(inner_epochs=0).check()


def test_full_fine_tuning_flag_trains_base_weights(fresh):
    before = base_state(fresh.unet)
    info = train_ddpo(fresh, lambda x: x.mean(dim=(1, 2, 3)),
                      DDPOConfig(steps=2, epochs=1, images=2, batch_size=2, full=True, lr=1e-3, clip_range=0.2))
    assert not lora_state(fresh.unet)
    assert info["trainable_params"] == sum(v.numel() for v in fresh.unet.parameters())
    assert any(not torch.equal(v, before[k]) for k, v in base_state(fresh.unet).items())


# 5. adapters: storage and the reference ----------------------------------------------------------

@pytest.fixture
def adapted(tiny_model):
    unet = add_lora(copy.deepcopy(tiny_model.unet), rank=2, target="attention")
    torch.manual_seed(0)
    with torch.no_grad():
        for k, p in unet.named_parameters():
            if "lora_B" in k:
                p.normal_(0, 0.5)  # a non-trivial adapter
    return unet.requires_grad_(False)  # as training hands it back (autograd flags change float paths)


def _out(unet):
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return unet(x, torch.tensor([500, 20])).sample


def test_adapter_round_trip(tiny_model, adapted, tmp_path):
    save_adapter(adapted, tmp_path / "a", {"method": "test"})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter.json", "adapter.safetensors"]
    loaded = load_adapter(copy.deepcopy(tiny_model.unet), tmp_path / "a")
    assert torch.equal(_out(loaded), _out(adapted))
    assert not torch.allclose(_out(loaded), _out(tiny_model.unet), atol=1e-4)
    assert torch.equal(_out(frozen_reference(adapted)), _out(tiny_model.unet))  # π_ref = without adapter
    assert json.loads((tmp_path / "a" / "adapter.json").read_text())["config"] == {"method": "test"}


def test_bad_adapter_folders_are_refused(tiny_model, adapted, tmp_path, monkeypatch):
    def no_pickle(*a, **k):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_pickle)
    plain = lambda: copy.deepcopy(tiny_model.unet)  # noqa: E731
    with pytest.raises(CensorError, match="does not exist"):
        load_adapter(plain(), tmp_path / "nothing")
    good = save_adapter(adapted, tmp_path / "good")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really")  # torch.load is patched to fail
    (pickled / "adapter.json").write_text((good / "adapter.json").read_text())
    with pytest.raises(CensorError, match="pickle"):
        load_adapter(plain(), pickled)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter.json").write_text((good / "adapter.json").read_text())
    (corrupt / "adapter.safetensors").write_bytes(b"garbage")
    with pytest.raises(CensorError, match="corrupt"):
        load_adapter(plain(), corrupt)

    (corrupt / "adapter.safetensors").write_bytes((good / "adapter.safetensors").read_bytes())
    (corrupt / "adapter.json").write_text("{not json")
    with pytest.raises(CensorError, match="JSON"):
        load_adapter(plain(), corrupt)

    meta = json.loads((good / "adapter.json").read_text())
    (corrupt / "adapter.json").write_text(json.dumps({**meta, "rank": 3}))  # weights are rank 2
    fresh = plain()
    with pytest.raises(CensorError, match="does not fit"):
        load_adapter(fresh, corrupt)
    assert not lora_state(fresh)  # a refused adapter leaves the UNet untouched
    (corrupt / "adapter.json").write_text(json.dumps({**meta, "target": "attention+convs"}))
    with pytest.raises(CensorError, match="does not fit"):
        load_adapter(plain(), corrupt)

    other = plain()
    with torch.no_grad():
        other.conv_in.weight.add_(0.1)
    with pytest.raises(CensorError, match="another diffusion model"):
        load_adapter(other, good)


def test_on_epoch_sees_the_network_as_each_epoch_left_it(fresh):
    seen = []
    info = train_ddpo(fresh, lambda x: x.mean(dim=(1, 2, 3)), DDPOConfig(steps=2, epochs=2, images=4, batch_size=4,
                                                                         full=True),
                      on_epoch=lambda e, net, s: seen.append((e, copy.deepcopy(net.state_dict()), s)))
    assert [e for e, _, _ in seen] == [1, 2] and 0 < seen[0][2] < seen[1][2] <= info["seconds"]
    first, last = seen[0][1], seen[1][1]
    assert any(not torch.equal(first[k], last[k]) for k in first)  # the second update moved it again
    assert all(torch.equal(v, last[k]) for k, v in fresh.unet.state_dict().items())  # the last copy is the result
