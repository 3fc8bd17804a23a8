"""Reward training and storage on real fixture images."""

import numpy as np
import pytest
import torch

from censor.core.data import to_model_range
from censor.core.errors import CensorError
from censor.rewards.ensemble import load_reward
from censor.rewards.training import augment, bootstrap_indices, check_labels, train_reward


def test_bootstrap_keeps_every_malign_label():
    labels = np.array([0] * 7 + [1] * 43)
    subsets = bootstrap_indices(labels, 5, np.random.default_rng(0))
    assert len(subsets) == 5
    for idx in subsets:
        assert set(np.where(labels == 0)[0]) <= set(idx)
        assert len(idx) == 50 and (labels[idx] == 1).sum() == 43
    assert len({tuple(sorted(i)) for i in subsets}) > 1  # members see different benign draws
    np.testing.assert_array_equal(bootstrap_indices(labels, 1, np.random.default_rng(0))[0], np.arange(50))


def test_bad_label_sets(fixture_images):
    im = fixture_images["images"][:4]
    with pytest.raises(CensorError, match="no labels"):
        check_labels(im[:0], np.array([]))
    with pytest.raises(CensorError, match="no malign"):
        check_labels(im, np.ones(4))
    with pytest.raises(CensorError, match="no benign"):
        check_labels(im, np.zeros(4))
    with pytest.raises(CensorError, match="unsure"):
        check_labels(im, np.array([0, 1, 2, 1]))


def test_augment_keeps_background_black_and_shape(fixture_images):
    x = to_model_range(fixture_images["images"][:8])
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert y[:, :, 0, 0].max() < -0.9  # the corner stays background
    assert not torch.allclose(x, y)


def test_vflip_moves_a_top_corner_stamp_to_the_bottom_and_leaves_other_kinds_views_alone(fixture_images):
    """Local marks are flipped top to bottom too (a stamp labelled in a top corner is shown in a bottom one);
    the other kinds draw exactly the views they did, and only local-patch asks for the flip."""
    from censor.core.watermark import stamp
    from censor.rewards.architectures import REGISTRY

    img = stamp(np.zeros((28, 28), np.uint8), 0, (0, 0), 1.0)  # a ring in the top-left corner, nothing else
    x = to_model_range(np.repeat(img[None], 64, 0))
    plain = augment(x, torch.Generator().manual_seed(3), max_degrees=0.0, max_shift=0.0)
    flipped = augment(x, torch.Generator().manual_seed(3), max_degrees=0.0, max_shift=0.0, vflip=True)
    bottom = lambda y: (y[:, 0, 14:] > 0).flatten(1).any(1)  # noqa: E731
    assert not bottom(plain).any() and 10 < int(bottom(flipped).sum()) < 54
    same = ~bottom(flipped)
    assert torch.allclose(flipped[same], plain[same], atol=1e-5)  # an unflipped view is the view without vflip
    assert torch.allclose(flipped[~same], plain[~same].flip(-2), atol=1e-5)  # the glyph is symmetric top to bottom
    assert [k for k, v in REGISTRY.items() if v.vflip] == ["local-patch"]


def test_reward_learns_bags_from_fixture_labels(fixture_images, tiny_model):
    """A half-UNet from scratch separates bags from the rest on held-out real images."""
    images, labels = fixture_images["images"], (fixture_images["labels"] != 8).astype(int)
    train, test = slice(0, 300), slice(300, 500)
    r = train_reward(images[train], labels[train], kind="half-unet", diffusion=tiny_model, members=1,
                     alpha=0.3, iterations=150, batch_size=32)
    p = r.prob(to_model_range(images[test]), torch.zeros(200, dtype=torch.long)).numpy()
    acc = ((p > 0.5) == labels[test]).mean()
    assert acc > 0.85, acc
    assert r.info["malign_labels"] == int((labels[train] == 0).sum())


def test_save_load_round_trip_and_mismatches(tmp_path, fixture_images, tiny_model):
    from censor.diffusion.models import DiffusionModel, build_scheduler, build_unet

    im, lab = fixture_images["images"][:20], np.array([0, 1] * 10)
    r = train_reward(im, lab, kind="ddpm-encoder", diffusion=tiny_model, members=2, iterations=3, batch_size=8)
    r.save(tmp_path / "r")
    back = load_reward(tmp_path / "r", tiny_model)
    x, t = to_model_range(im[:4]), torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(back.log_prob(x, t), r.log_prob(x, t))
    assert len(r.optimizer_states) == 2 and "optimizer" not in (tmp_path / "r" / "reward.json").read_text()
    other = DiffusionModel(build_unet(block_out_channels=(32, 32, 32), attention_head_dim=8), build_scheduler())
    with pytest.raises(CensorError, match="another diffusion model"):
        load_reward(tmp_path / "r", other)
    big = DiffusionModel(build_unet(sample_size=32, block_out_channels=(32, 32, 32), attention_head_dim=8),
                         build_scheduler())
    with pytest.raises(CensorError, match="trained on"):
        load_reward(tmp_path / "r", big)
    with pytest.raises(CensorError, match="missing or corrupt"):
        load_reward(tmp_path / "nothing")


def test_imitation_round_continues_training(fixture_images, tiny_model):
    im, lab = fixture_images["images"][:20], np.array([0, 1] * 10)
    r1 = train_reward(im, lab, kind="half-unet", diffusion=tiny_model, members=2, iterations=3, batch_size=8)
    before = [p.clone() for p in r1.members[0].parameters()]
    r2 = train_reward(fixture_images["images"][:30], np.array([0, 1, 1] * 10), kind="half-unet",
                      diffusion=tiny_model, members=2, iterations=3, batch_size=8, resume=r1)
    assert r2.info["rounds"] == 2 and r2.info["iterations"] == 6 and r2.info["labels"] == 30
    assert r2.members[0] is r1.members[0]  # same weights object, trained further
    assert any(not torch.equal(a, b) for a, b in zip(before, r2.members[0].parameters()))
    with pytest.raises(CensorError, match="same reward kind"):
        train_reward(im, lab, kind="ddpm-encoder", diffusion=tiny_model, members=2, iterations=1, resume=r1)


def test_benign_prob_is_the_geometric_mean_of_members(fixture_images, tiny_model):
    im, lab = fixture_images["images"][:20], np.array([0, 1] * 10)
    r = train_reward(im, lab, kind="half-unet", diffusion=tiny_model, members=3, iterations=2, batch_size=8)
    x, t = to_model_range(im[:5]), torch.zeros(5, dtype=torch.long)
    members = torch.stack([torch.sigmoid(m(x, t)) for m in r.members])
    torch.testing.assert_close(r.prob(x, t), members.prod(0))
    torch.testing.assert_close(r.benign_prob(x, t), members.prod(0).pow(1 / 3))
