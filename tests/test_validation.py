"""The studio's held-out check of a freshly trained reward (censor/rewards/validation.py)."""

import numpy as np
import pytest
import torch

import censor.rewards.validation as validation
from censor.rewards.validation import balanced_accuracy, held_out_accuracy


class AllBenign:
    time_dependent = True

    def benign_prob(self, x, t):
        return torch.ones(len(x))


def test_held_out_check_is_balanced_so_all_benign_scores_one_half(tiny_model, monkeypatch):
    monkeypatch.setattr(validation, "train_reward", lambda *a, **k: AllBenign())
    labels = np.array([0] * 10 + [1] * 30)
    images = np.zeros((40, 28, 28), dtype=np.uint8)
    # plain accuracy would read ~75% for a reward that never calls anything malign
    assert held_out_accuracy(images, labels, kind="ddpm-encoder", diffusion=tiny_model, iterations=10,
                             alpha=0.1) == 0.5


def test_held_out_check_needs_enough_labels_of_each_class(monkeypatch):
    calls = []
    monkeypatch.setattr(validation, "train_reward", lambda *a, **k: calls.append(k) or AllBenign())
    images = np.zeros((40, 28, 28), dtype=np.uint8)
    for labels in (np.array([0] * 5 + [1] * 24), np.array([0] * 4 + [1] * 36), np.array([1] * 40)):
        assert held_out_accuracy(images[:len(labels)], labels, kind="half-unet", diffusion=None, iterations=10,
                                 alpha=0.1) is None
    assert calls == []  # refused before any training
    held_out_accuracy(images, np.array([0] * 5 + [1] * 35), kind="half-unet", diffusion=None, iterations=60,
                      alpha=0.3)
    # one member, half the iterations; no benign-score table (the check's reward only scores); no boxes given
    assert calls == [dict(kind="half-unet", diffusion=None, members=1, alpha=0.3, iterations=30, progress=None,
                          score_table=False, bank=None, boxes=None)]


def test_balanced_accuracy_is_the_mean_of_the_class_hit_rates():
    labels = np.array([0, 0, 0, 0, 1, 1])
    assert balanced_accuracy(np.array([0, 0, 0, 1, 1, 0]), labels) == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert balanced_accuracy(np.ones(6, int), labels) == 0.5
    assert balanced_accuracy(np.array([1, 1]), np.array([1, 1])) == 1.0  # one class present: its hit rate


def test_a_shared_feature_bank_trains_the_same_reward_and_the_check_sees_only_its_split(tiny_model, fixture_images):
    """The Train tab encodes the labels once (``feature_bank``): the final reward trained on it equals
    one that built its own bank, and the held-out check trains on the rows of its training split only."""
    from censor.rewards.training import feature_bank, train_reward
    images, labels = fixture_images["images"][:40], (fixture_images["labels"][:40] != 8).astype(int)
    labels[:5] = 0
    kw = dict(kind="ddpm-encoder", diffusion=tiny_model, members=2, iterations=4, batch_size=8, score_table=False)
    bank = feature_bank(images, "ddpm-encoder", tiny_model)
    own, shared = train_reward(images, labels, **kw), train_reward(images, labels, bank=bank, **kw)
    x = torch.linspace(-1, 1, 2 * 28 * 28).reshape(2, 1, 28, 28)
    t = torch.tensor([0, 500])
    assert torch.equal(own.benign_prob(x, t), shared.benign_prob(x, t))
    sub = bank.subset([3, 7])
    assert all(torch.equal(s, b[[3, 7]]) for s, b in zip(sub.taps, bank.taps))
    with pytest.raises(Exception, match="feature bank of 2 images"):
        train_reward(images, labels, bank=sub, **kw)
    seen = []
    real = validation.train_reward
    validation.train_reward = lambda im, lab, **k: seen.append((len(lab), len(k["bank"].taps[0]))) or real(im, lab, **k)
    try:
        validation.held_out_check(images, labels, kind="ddpm-encoder", diffusion=tiny_model, iterations=4, alpha=0.1,
                                  bank=bank)
    finally:
        validation.train_reward = real
    assert seen == [(32, 32)]  # 80% of 40: the test fifth's views are not in the bank it trains on
