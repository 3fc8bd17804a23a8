"""Repaint: redraw only where the reward finds the malign part (issue 21), keep the rest exactly."""

import numpy as np
import pytest
import torch

from censor.core.data import to_model_range, to_uint8
from censor.core.errors import CensorError
from censor.core.watermark import GLYPH, stamp
from censor.rewards.ensemble import RewardEnsemble
from censor.rewards.training import train_reward
from censor.sampling.thresholds import benign_scores
from censor.sampling.repaint import REPAINT_DEFAULTS, malign_masks, repaint, repaint_flagged, repaint_seed

G = GLYPH.shape[0]


class CornerReward(torch.nn.Module):
    """A reward that calls an image malign when its top-left 3x3 corner is bright: no position map,
    so the masks come from the gradient."""

    def forward(self, x, t=None):
        return 3.0 - 2.0 * (x[:, 0, :3, :3] + 1).mean((1, 2))


def corner_reward(size: int) -> RewardEnsemble:
    return RewardEnsemble("resnet18", [CornerReward()], (1, size, size), {}).eval()


def test_repaint_keeps_the_outside_exactly_and_redraws_the_inside(tiny_model):
    x0 = to_model_range(np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8))
    mask = torch.zeros(3, 1, 28, 28)
    mask[:, :, :9, :9] = 1
    out = repaint(tiny_model, x0, mask, [5, 6, 7], steps=5, harmonize=1)
    torch.testing.assert_close(out[..., 9:, :], x0[..., 9:, :], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[..., :, 9:], x0[..., :, 9:], rtol=0, atol=1e-6)
    assert (out[..., :9, :9] - x0[..., :9, :9]).abs().mean() > 0.1
    # each image its own noise streams: the same image alone, the same draw; another attempt, another
    alone = repaint(tiny_model, x0[1:2], mask[1:2], [6], steps=5, harmonize=1)
    torch.testing.assert_close(alone, out[1:2], rtol=0, atol=1e-5)
    again = repaint(tiny_model, x0[1:2], mask[1:2], [6], steps=5, harmonize=1, attempt=1)
    assert (again - alone).abs().max() > 0.1
    with pytest.raises(CensorError, match="fraction of the schedule"):
        repaint(tiny_model, x0, mask, [5, 6, 7], steps=5, start=0)


def test_repaint_seeds_never_replay_an_image_seed():
    """torch keeps 32 bits of a seed: offsets like seed + 2**40 would replay the x_T stream."""
    seeds = {repaint_seed(s, a) for s in range(50) for a in range(3)}
    assert len(seeds) == 150 and all(0 <= s < 2**32 for s in seeds) and not seeds & set(range(1000))


@pytest.fixture(scope="module")
def stamp_reward(fixture_images, tiny_model):
    """A local-patch reward trained on real images, half stamped in random corners."""
    rng = np.random.default_rng(0)
    clean = fixture_images["clean"][:240]
    marked = rng.random(len(clean)) < 0.5
    images = clean.copy()
    for i in np.where(marked)[0]:
        images[i] = stamp(clean[i], int(rng.integers(4)), tuple(int(v) for v in rng.integers(0, 3, 2)), 1.0)
    return train_reward(images, (~marked).astype(int), kind="local-patch", diffusion=tiny_model, members=2,
                        alpha=1.0, iterations=400, batch_size=32)


def test_masks_of_a_position_map_cover_the_stamp_and_little_else(fixture_images, stamp_reward):
    clean = fixture_images["clean"][300:340]
    where = [(c, (1, 1)) for c in range(4)] * 10
    marked = np.stack([stamp(im, c, o, 1.0) for im, (c, o) in zip(clean, where)])
    mask = malign_masks(stamp_reward, to_model_range(marked))[:, 0]
    ring = np.zeros((len(marked), 28, 28), bool)
    for i, (c, _) in enumerate(where):
        top = 1 if c in (0, 1) else 28 - G - 1
        left = 1 if c in (0, 2) else 28 - G - 1
        ring[i, top:top + G, left:left + G] = GLYPH > 0
    covered, share = (mask.numpy() > 0)[ring].mean(), float(mask.mean())
    assert covered > 0.6 and share < 0.25, (covered, share)  # most of the glyph, a corner region, not the garment
    assert covered > 3 * share  # where the stamp is: a mask that ignored it would cover ``share`` of the glyph
    scores = benign_scores(stamp_reward, marked)
    assert np.median(scores) < 0.5  # the reward does see these stamps


def test_saliency_masks_find_what_a_reward_without_a_map_reads():
    x = torch.full((2, 1, 8, 8), -1.0)
    mask = malign_masks(corner_reward(8), x, grow_px=0)[:, 0]
    assert mask[:, :3, :3].all() and mask.sum() == 2 * 9


def test_repaint_flagged_clears_the_malign_ones_and_leaves_the_rest(gaussian_model):
    """The Gaussian model's samples sit near 0: a repainted bright corner comes back benign."""
    reward = corner_reward(8)
    rng = np.random.default_rng(1)
    images = rng.integers(100, 156, (6, 8, 8), dtype=np.uint8)  # mid-grey: benign
    images[:3, :3, :3] = 255  # bright corners: malign
    before = benign_scores(reward, images)
    assert (before[:3] < 0.5).all() and (before[3:] > 0.5).all()
    result = repaint_flagged(gaussian_model, reward, images, seeds=list(range(6)), threshold=0.5, steps=10)
    assert result.doubted == 3 and result.passed == 3 and result.tries == [1, 1, 1]
    assert (result.scores > 0.5).all()
    np.testing.assert_array_equal(result.images[3:], images[3:])  # passed images untouched
    changed = result.images[:3].astype(int) != images[:3].astype(int)
    outside = np.ones((8, 8), bool)
    outside[:5, :5] = False  # the corner grown by SALIENCY_GROW = 2 px
    assert changed[:, :3, :3].all() and not changed[:, outside].any()
    # a redraw the reward likes less than what was there is never kept: dark corners (benign, doubted at
    # p 0.99) would come back grey, so every image stays as it was drawn
    dark = np.zeros((3, 8, 8), np.uint8)
    kept = repaint_flagged(gaussian_model, reward, dark, seeds=[0, 1, 2], threshold=0.99, steps=10)
    assert kept.doubted == 3 and kept.passed == 0 and kept.kept_original == 3 and kept.tries == [3, 3, 3]
    np.testing.assert_array_equal(kept.images, dark)
    with pytest.raises(CensorError, match="attempts"):
        repaint_flagged(gaussian_model, reward, images, list(range(6)), 0.5, steps=10, attempts=0)


def test_uint8_round_trip_of_the_outside_is_exact(gaussian_model):
    """What the gallery shows: the kept pixels of a repainted uint8 image are the very same bytes."""
    img = np.random.default_rng(2).integers(0, 256, (1, 8, 8), dtype=np.uint8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:, 4:] = 1
    out = to_uint8(repaint(gaussian_model, to_model_range(img), mask, [3], steps=10))
    np.testing.assert_array_equal(out[0, :4], img[0, :4])
    np.testing.assert_array_equal(out[0, :, :4], img[0, :, :4])


def test_strict_mode_auto_repaints_with_a_position_map_and_rejects_otherwise(stamp_reward):
    from censor.sampling.repaint import resolve_strict_mode

    assert resolve_strict_mode("auto", stamp_reward) == "repaint"
    assert resolve_strict_mode("auto", corner_reward(8)) == "reject"
    assert resolve_strict_mode("reject", stamp_reward) == "reject"
    with pytest.raises(CensorError, match="unknown strict mode"):
        resolve_strict_mode("inpaint", stamp_reward)


def test_studio_repaint_keeps_the_seeds_redraws_the_doubted_and_reproduces(tmp_path, tiny_model, fixture_images):
    from censor.labels.pool import Pool
    from censor.rewards.ensemble import load_reward
    from censor.studio.core import Studio
    from censor.studio.manifest import check_manifest

    studio = Studio(model=tiny_model, data_dir=tmp_path / "data", pool=Pool(fixture_images["images"][:60], np.arange(60), {}))
    sid = studio.open_session(None)
    for it in studio.page(sid, 0)[:4]:
        studio.click(sid, it["id"])
    studio.train(sid, "ensemble", "local-patch", members=2, iterations=10, alpha=0.5)
    reward = load_reward(studio.reward_dir(sid), studio.model)
    plain = studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=3, count=6)
    scores = benign_scores(reward, plain["censored"])
    p = float(np.median(scores))
    r = studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=3, count=6, strict=True, strict_p=p,
                                strict_mode="auto")
    s = r["strict"]
    assert s["mode"] == "repaint" and r["settings"]["strict"]["mode"] == "repaint"
    assert r["seeds"] == plain["seeds"] and len(r["censored"]) == 6 and s["doubted"] == int((scores <= p).sum())
    np.testing.assert_array_equal(r["censored"][scores > p], plain["censored"][scores > p])  # passed: untouched
    changed = (r["censored"][scores <= p] != plain["censored"][scores <= p]).any((1, 2))
    assert changed.sum() == s["doubted"] - s["kept_original"]  # a doubted image changes unless no redraw beat it
    assert "repainted" in s["summary"]
    assert "redraws each image the reward still doubts" in studio.cost_text(sid, "time", 0, 0, 5, True, "auto")
    _, bundle = studio.export_gallery(sid, r)
    back = studio.import_gallery(bundle)
    assert back["max_pixel_diff"] <= 1 and back["identical"] >= 5
    bad = dict(plain["settings"], strict=dict(threshold=p, source="user", requested=6, mode="inpaint"))
    with pytest.raises(CensorError, match="strict.mode"):
        check_manifest(dict(back["manifest"], settings=bad))
    stored = back["manifest"]["settings"]["strict"]
    assert stored["repaint"] == REPAINT_DEFAULTS  # what a bundle reproduces with, whatever the defaults become
    for broken in (dict(REPAINT_DEFAULTS, steps=0), dict(REPAINT_DEFAULTS, steps=10**6), dict(REPAINT_DEFAULTS, attempts=99),
                   dict(REPAINT_DEFAULTS, attempts=2.0), dict(REPAINT_DEFAULTS, start="0.6"),
                   dict(REPAINT_DEFAULTS, extra=1), {k: v for k, v in REPAINT_DEFAULTS.items() if k != "steps"}):
        with pytest.raises(CensorError, match="strict.repaint"):
            check_manifest(dict(back["manifest"], settings=dict(back["manifest"]["settings"], strict=dict(stored, repaint=broken))))


def test_a_bundle_without_repaint_knobs_reproduces_as_it_was_made():
    from censor.studio.manifest import repaint_options

    assert repaint_options(dict(mode="repaint", threshold=0.5), dict(steps=25)) == dict(start=0.6, attempts=2, harmonize=0, steps=25)
    assert repaint_options(dict(mode="repaint", repaint=dict(REPAINT_DEFAULTS)), dict(steps=25)) == REPAINT_DEFAULTS


def test_an_attempt_runs_the_steps_of_its_own_respacing_below_the_start(tiny_model):
    calls = []
    hook = tiny_model.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    x0 = torch.zeros(1, *tiny_model.image_shape)
    mask = torch.ones(1, 1, *x0.shape[-2:])
    try:
        repaint(tiny_model, x0, mask, [1], steps=10, start=0.6)
        assert len(calls) == 6  # 10 steps over T, those at or below 0.6 T: the cost of an attempt
        calls.clear()
        repaint(tiny_model, x0, mask, [1], steps=25, start=0.6)
        assert len(calls) == 15
    finally:
        hook.remove()


class PeakMap(torch.nn.Module):
    """A member whose malign map has one peak, at ``where``: a stand-in for members that look in different places."""

    def __init__(self, where, height=8.0):
        super().__init__()
        self.where, self.height, self.temperature = where, height, 0.5
        self.bias = torch.nn.Parameter(torch.zeros(1))

    def malign_map(self, x, t=None):
        s = torch.zeros(len(x), *x.shape[-2:])
        s[:, self.where[0], self.where[1]] = self.height
        return s


def test_each_members_region_reaches_where_the_mean_map_does_not():
    reward = RewardEnsemble("local-patch", [PeakMap((2, 2), 9.0), PeakMap((25, 25), 8.0)], (1, 28, 28), {})
    x = torch.zeros(1, 1, 28, 28)
    mean = malign_masks(reward, x, grow_px=0)[0, 0]
    each = malign_masks(reward, x, grow_px=0, each=True)[0, 0]
    assert mean[2, 2] == 1 and mean.sum() < each.sum()
    assert each[2, 2] == 1 and each[25, 25] == 1 and each.sum() == 2


def test_a_reward_of_a_local_mark_renders_strict_by_default():
    from censor.rewards.architectures import REGISTRY
    from censor.sampling.repaint import strict_by_default

    assert strict_by_default("local-patch")  # guidance cannot steer a local mark away; repaint can
    assert not any(strict_by_default(k) for k in REGISTRY if not REGISTRY[k].patches)
    assert not strict_by_default("no-such-kind")
