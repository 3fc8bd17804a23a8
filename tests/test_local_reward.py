"""The local-patch reward: a time-dependent r(x_t, t) that sees a small mark anywhere in the image."""

import math

import numpy as np
import pytest
import torch

from censor.bench.fewshot import auc
from censor.core.data import to_model_range
from censor.core.watermark import GLYPH, stamp
from censor.rewards.architectures import REGISTRY, TIME_DEPENDENT, build_member
from censor.rewards.ensemble import RewardEnsemble, load_reward
from censor.rewards.training import train_reward

G = GLYPH.shape[0]


def _stamp_all(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The watermark's own stamp, in a random corner with a random offset and opacity."""
    return np.stack([stamp(im, int(rng.integers(4)), tuple(int(v) for v in rng.integers(0, 3, 2)),
                           float(rng.uniform(0.55, 1.0))) for im in images])


def _at(top: int, left: int, size: int = 28) -> torch.Tensor:
    """A black image with the glyph at (top, left), in the model's [-1, 1] range, [1, 1, H, W]."""
    im = np.zeros((size, size), np.uint8)
    im[top:top + G, left:left + G] = (255 * GLYPH).astype(np.uint8)
    return to_model_range(im[None])


@pytest.fixture(scope="module")
def synthetic(fixture_images):
    """Clean real images, half of them stamped: train on 240, judge on 200 others."""
    rng = np.random.default_rng(0)
    clean = fixture_images["clean"][:440]
    marked = rng.random(len(clean)) < 0.5
    images = clean.copy()
    images[marked] = _stamp_all(clean[marked], rng)
    return images, (~marked).astype(int)  # label 1 = benign


@pytest.fixture(scope="module")
def trained(synthetic, tiny_model):
    images, labels = synthetic
    return train_reward(images[:240], labels[:240], kind="local-patch", diffusion=tiny_model, members=1,
                        alpha=1.0, iterations=200, batch_size=32)


def _randomise_film(member: torch.nn.Module) -> None:
    """FiLM starts as the identity (zero init); give it weights so t matters before any training."""
    torch.manual_seed(1)
    torch.nn.init.normal_(member.time[-1].weight, std=0.5)


def test_kind_builds_round_trips_and_reads_t(tmp_path, tiny_model):
    assert TIME_DEPENDENT["local-patch"] and REGISTRY["local-patch"].lr > 3e-4
    members = [build_member("local-patch", tiny_model) for _ in range(2)]
    for m in members:
        _randomise_film(m)
    reward = RewardEnsemble("local-patch", members, (1, 28, 28), {}).eval()
    reward.save(tmp_path / "r")
    back = load_reward(tmp_path / "r", tiny_model)
    x, t = _at(3, 3).repeat(4, 1, 1, 1), torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(back.log_prob(x, t), reward.log_prob(x, t))
    logits = reward.logits(x, t)[0]
    assert (logits[0] - logits[3]).abs() > 1e-3  # the same image at another noise level scores otherwise


def test_pooling_is_a_smooth_max_over_positions(tiny_model):
    """logit = b − τ·(logsumexp(s/τ) − log HW): a mean-normalised soft max of the patch scores."""
    m = build_member("local-patch", tiny_model).eval()
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 300, 900])
    s = m.malign_map(x, t).flatten(1)
    tau = m.temperature
    expected = m.bias - tau * (torch.logsumexp(s / tau, 1) - math.log(s.shape[1]))
    torch.testing.assert_close(m(x, t), expected)
    assert (m.bias - m(x, t) <= s.amax(1) + 1e-5).all()  # never above the hard max


def test_training_separates_marked_from_clean(synthetic, trained):
    images, labels = synthetic
    x = to_model_range(images[240:])
    p0 = trained.benign_prob(x, torch.zeros(len(x), dtype=torch.long)).numpy()
    assert auc(p0, labels[240:] == 1) > 0.9


def test_a_mark_anywhere_lowers_the_score_and_shifts_keep_it(trained):
    blank = trained.logits(_at(0, 0) * 0 - 1, torch.zeros(1, dtype=torch.long))[0, 0]
    t0 = torch.zeros(1, dtype=torch.long)
    score = {where: float(trained.logits(_at(*where), t0)[0, 0])
             for where in [(1, 1), (3, 3), (20, 20), (1, 20), (11, 11)]}
    gap = float(blank) - score[(1, 1)]
    assert gap > 1.0  # the mark in one corner makes the image malign
    for where in [(20, 20), (1, 20), (11, 11)]:  # the opposite corner, another corner, the middle
        assert float(blank) - score[where] > 0.5 * gap, (where, score, float(blank))
    assert abs(score[(3, 3)] - score[(1, 1)]) < 0.3 * gap  # shifted by 2 px: about the same score


def test_gradient_reaches_the_mark(trained):
    x = _at(20, 20).requires_grad_(True)
    for t in (0, 200):
        (g,) = torch.autograd.grad(trained.log_prob(x, torch.tensor([t])).sum(), x)
        assert torch.isfinite(g).all()
        at_mark, far = g[0, 0, 20:27, 20:27].abs().mean(), g[0, 0, 1:8, 1:8].abs().mean()
        assert at_mark > 0 and at_mark > 5 * far, (t, float(at_mark), float(far))
