"""Rejection filtering (issue 9): threshold selection, the cap, reproducibility, the studio's strict
mode and a miniature rejection benchmark, on tiny models and real fixture images."""

import json

import numpy as np
import pytest
import torch
from test_browser import browser, server, studio_dir  # noqa: F401  (fixtures of the strict-mode browser test)

import censor.sampling.thresholds as thresholds
from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.sampling.loop import sample, seeds_for
from censor.sampling.rejection import reject_sample
from censor.sampling.thresholds import (
    benign_scores,
    carried_threshold,
    heldout_threshold,
    reference_images,
    stratified_folds,
    threshold_from_scores,
)


class BrightnessReward:
    """P(benign) = sigmoid(scale · mean pixel): a reward whose verdicts are known exactly."""

    time_dependent = False
    kind = "fake"
    members = [None]

    def __init__(self, scale=10.0):
        self.scale = scale

    def benign_prob(self, x, t=None):
        return torch.sigmoid(self.scale * x.flatten(1).mean(1))


def test_threshold_formula_on_known_scores():
    # few malign scores: the highest one (keep = strictly above it)
    assert threshold_from_scores([0.1, 0.5, 0.3]) == 0.5
    # 200 scores 0, 0.005, ..., 0.995: 99% recall needs 198 of them at or below τ → the 198th
    scores = np.arange(200) / 200
    tau = threshold_from_scores(scores, 0.99)
    assert tau == pytest.approx(197 / 200) and (scores <= tau).mean() >= 0.99 and (scores < tau).mean() < 0.99
    assert threshold_from_scores([4, 1, 3, 2], recall=0.5) == 2
    with pytest.raises(CensorError):
        threshold_from_scores([])


def test_folds_are_stratified_and_partition_the_labels():
    labels = np.array([0] * 7 + [1] * 30)
    folds = stratified_folds(labels, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(37))
    assert all((labels[f] == 0).sum() >= 1 and (labels[f] == 1).sum() >= 1 for f in folds)


def test_heldout_threshold_scores_every_label_out_of_fold(monkeypatch):
    """Each fold's reward is trained without the fold; the threshold is the top held-out malign score."""
    images = np.repeat(np.linspace(0, 255, 40).astype(np.uint8)[:, None, None], 28, 1).repeat(28, 2)
    labels = np.array([0] * 8 + [1] * 32)  # malign = the 8 darkest images
    seen = []

    def fake_train(imgs, labs, boxes=None, **kw):
        seen.append(len(labs))
        boxed.append(boxes)
        return BrightnessReward()

    monkeypatch.setattr(thresholds, "train_reward", fake_train)
    boxed = []
    th = heldout_threshold(images, labels, kind="resnet18", diffusion=None, folds=4, scale="folds")
    assert th["folds"] == 4 and seen == [30, 30, 30, 30]  # every fold held out 10 images
    assert boxed == [None] * 4
    boxes = [(i % 20, 0, i % 20 + 8, 8) if y == 0 else None for i, y in enumerate(labels)]  # one per label
    seen.clear()
    heldout_threshold(images, labels, kind="resnet18", diffusion=None, folds=4, boxes=boxes, scale="folds")
    # each fold trains with the boxes of its own training labels, in their order
    assert [sum(b is not None for b in bs) for bs in boxed[4:]] == [6, 6, 6, 6]
    assert all(len(bs) == 30 and set(bs) <= set(boxes) for bs in boxed[4:])
    scores = benign_scores(BrightnessReward(), images)
    assert th["threshold"] == pytest.approx(scores[:8].max())
    assert th["heldout_malign_recall"] == 1.0 and th["heldout_benign_pass"] == 1.0
    with pytest.raises(CensorError, match="at least 2 malign"):
        heldout_threshold(images, np.array([0] + [1] * 39), kind="resnet18", diffusion=None, scale="folds")


def test_reject_sample_keeps_only_passing_images_and_is_reproducible(tiny_model):
    reward = BrightnessReward()
    probe = benign_scores(reward, to_uint8(sample(tiny_model, seeds_for(8, 5), steps=2)))
    p = float(np.median(probe))  # about half the draws fail
    seen = []
    a = reject_sample(tiny_model, reward, 4, seed=5, threshold=p, steps=2, cap=40, progress=seen.append)
    b = reject_sample(tiny_model, reward, 4, seed=5, threshold=p, steps=2, cap=40)
    assert a.kept == 4 and not a.capped and a.dropped > 0
    assert a.drawn == a.kept + a.dropped and a.sampled >= a.drawn and sum(a.batches) == a.sampled
    assert a.seeds == b.seeds and np.array_equal(a.images, b.images)
    assert (a.scores > p).all() and (benign_scores(reward, a.images) > p).all()
    # seeds continue from the gallery's: kept ones are the passing draws in seed order
    drawn_seeds = seeds_for(a.drawn, 5)
    all_scores = benign_scores(reward, to_uint8(sample(tiny_model, drawn_seeds, steps=2)))
    assert a.seeds == [s for s, sc in zip(drawn_seeds, all_scores) if sc > p]
    assert a.seeds[-1] == drawn_seeds[-1]  # the last drawn image is the one that filled the gallery
    # a kept image is reproduced by its seed alone
    alone = to_uint8(sample(tiny_model, a.seeds, steps=2))
    assert np.abs(alone.astype(int) - a.images.astype(int)).max() <= 1
    assert seen and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    assert "drew" in a.summary() and "dropped" in a.summary()


def test_an_impossible_threshold_stops_at_the_cap_and_reports_it(tiny_model):
    r = reject_sample(tiny_model, BrightnessReward(), 3, seed=1, threshold=0.999999, steps=2, cap=7)
    assert r.capped and r.kept == 0 and r.drawn == r.sampled == 7 and r.dropped == 7
    assert r.images.shape[0] == 0 and "cap of 7" in r.summary()
    with pytest.raises(CensorError, match="probability"):
        reject_sample(tiny_model, BrightnessReward(), 3, seed=1, threshold=1.5, steps=2)
    with pytest.raises(CensorError, match="below the requested"):
        reject_sample(tiny_model, BrightnessReward(), 3, seed=1, threshold=0.5, steps=2, cap=2)


@pytest.fixture
def studio(tmp_path, tiny_model, fixture_images):
    from censor.labels.pool import Pool
    from censor.studio.core import Studio

    pool = Pool(fixture_images["images"][:60], np.arange(60), {})
    return Studio(model=tiny_model, data_dir=tmp_path / "data", pool=pool)


def test_studio_strict_mode_fills_the_gallery_with_passing_images(studio):
    from censor.rewards.ensemble import load_reward

    sid = studio.open_session(None)
    items = studio.page(sid, 0)
    for it in items[:4]:
        studio.click(sid, it["id"])  # 4 malign, 21 benign
    studio.train(sid, "ensemble", "half-unet", members=2, iterations=10, alpha=0.5)
    reward = load_reward(studio.reward_dir(sid), studio.model)
    plain = studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=3, count=6)
    p = float(np.median(benign_scores(reward, plain["censored"])))
    seen = []
    r = studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=3, count=6, strict=True, strict_p=p,
                                progress=seen.append)
    s = r["strict"]
    assert len(r["censored"]) == 6 and s["kept"] == 6 and not s["capped"]
    assert s["drawn"] == s["kept"] + s["dropped"] and s["dropped"] > 0 and s["threshold"] == p
    assert (benign_scores(reward, r["censored"]) > p).all()
    assert len(r["seeds"]) == 6 and r["settings"]["count"] == 6 and r["settings"]["strict"]["threshold"] == p
    assert f"drew {s['drawn']}, dropped {s['dropped']}" in s["summary"]
    # a strict gallery shares and re-imports like any other: its manifest lists the kept seeds
    _, bundle = studio.export_gallery(sid, r)
    back = studio.import_gallery(bundle)
    assert len(back["censored"]) == 6 and back["max_pixel_diff"] <= 1
    assert seen and max(seen) <= 1.0 and seen[-1] == pytest.approx(1.0)
    # the kept images are the guided images of their seeds: the plain gallery's survivors come first
    assert r["seeds"][0] in seeds_for(100, 3)
    # automatic threshold: read from beside the reward while the reward is unchanged (computed below)
    from censor.gallery.bundles import sha256

    digest = sha256(studio.reward_dir(sid) / "reward.safetensors")
    (studio.reward_dir(sid) / thresholds.STRICT_FILE).write_text(json.dumps({"reward_sha256": digest, "threshold": p,
                                                                         "scale": thresholds.THRESHOLD_SCALE}))
    auto = studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=3, count=6, strict=True)
    assert auto["strict"]["threshold"] == p and auto["strict"]["source"] == "held-out"
    assert auto["strict"]["pool_share"] is None  # a cached line without a share (written by hand above)
    assert auto["seeds"] == r["seeds"] and np.array_equal(auto["censored"], r["censored"])
    with pytest.raises(CensorError, match="probability"):
        studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=3, count=3, strict=True, strict_p=2.0)
    with pytest.raises(CensorError, match="kept no image"):
        studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=3, count=1, strict=True, strict_p=0.999999)
    # without a cache: cross-fitted on the session's labels and carried to its reward on the pool less the labelled
    (studio.reward_dir(sid) / thresholds.STRICT_FILE).unlink()
    fitted = studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=3, count=6, strict=True, strict_mode="repaint")
    cached = json.loads((studio.reward_dir(sid) / thresholds.STRICT_FILE).read_text())
    images, labels = studio.store.training_data(sid)
    ref = reference_images(studio.pool.images, images)
    assert cached["scale"] == "reference" and cached["reference_n"] == len(ref) == len(studio.pool.images) - len(labels)
    assert fitted["strict"]["pool_share"] == pytest.approx(cached["reference_share"]) and 0 < cached["reference_share"] <= 1
    assert cached["threshold"] == pytest.approx(carried_threshold(reward, cached["reference_share"], ref))
    assert fitted["settings"]["strict"]["threshold"] == cached["threshold"]  # the line the gallery was drawn with


def test_session_threshold_is_cross_fitted_once_per_reward(tmp_path, monkeypatch):
    images = np.repeat(np.linspace(0, 255, 30).astype(np.uint8)[:, None, None], 28, 1).repeat(28, 2)
    labels = np.array([0] * 6 + [1] * 24)
    pool = np.repeat(np.linspace(0, 255, 50).astype(np.uint8)[:, None, None], 28, 1).repeat(28, 2)
    calls = []
    monkeypatch.setattr(thresholds, "train_reward", lambda imgs, labs, **kw: calls.append(kw) or BrightnessReward(3.0))
    reward = BrightnessReward()
    reward.info = dict(alpha=0.2, iterations=40, seed=0)
    (tmp_path / "reward.safetensors").write_bytes(b"v1")
    boxes = [None] * 30
    th = thresholds.session_threshold(tmp_path, reward, images, labels, None, pool, boxes=boxes)
    assert len(calls) == 5 and calls[0]["iterations"] == 40 and calls[0]["alpha"] == 0.2
    assert sum(len(c["boxes"]) for c in calls) == 30 * 4  # each fold: its training labels' boxes (the reward's recipe)
    assert th["fold_threshold"] == pytest.approx(benign_scores(BrightnessReward(3.0), images[:6]).max())
    # carried to the session reward on the pool less the labelled images (some pool images are labelled ones)
    ref = reference_images(pool, images)
    unlabelled = sum(not (images == x).all((1, 2)).any() for x in pool)
    assert 0 < unlabelled < len(pool) and len(ref) == th["reference_n"] == unlabelled
    assert th["threshold"] == pytest.approx(carried_threshold(reward, th["reference_share"], ref))
    assert thresholds.session_threshold(tmp_path, reward, images, labels, None, pool) == th
    assert len(calls) == 5  # cached
    (tmp_path / "reward.safetensors").write_bytes(b"v2")  # retrained: computed again
    thresholds.session_threshold(tmp_path, reward, images, labels, None, pool)
    assert len(calls) == 10
    # a cache from before the threshold was carried (no scale) is recomputed, not trusted
    digest = thresholds.sha256(tmp_path / "reward.safetensors")
    (tmp_path / thresholds.STRICT_FILE).write_text(json.dumps({"reward_sha256": digest, "threshold": 0.5}))
    assert thresholds.session_threshold(tmp_path, reward, images, labels, None, pool)["scale"] == "reference"
    assert len(calls) == 15
    # a pool labelled all but a few: too few unlabelled images to read a share on, the folds' line stays
    (tmp_path / "reward.safetensors").write_bytes(b"v3")
    small = thresholds.session_threshold(tmp_path, reward, images, labels, None, pool[:thresholds.REFERENCE_MIN])
    assert small["scale"] == "folds" and small["threshold"] == th["fold_threshold"] and "reference_share" not in small


def _ramp(n, lo=0, hi=255):
    return np.repeat(np.linspace(lo, hi, n).round().astype(np.uint8)[:, None, None], 28, 1).repeat(28, 2)


def test_reference_images_leave_out_the_labelled_ones():
    pool = _ramp(20)
    ref = reference_images(pool, pool[[3, 7, 7]], n=100)
    assert len(ref) == 18 and not any((ref == pool[i]).all((1, 2)).any() for i in (3, 7))
    assert np.array_equal(reference_images(pool, pool[:0], n=5), pool[:5])  # in pool order, at most n


def test_carried_threshold_doubts_the_share_the_folds_doubt(monkeypatch):
    """Fold rewards and the final reward rank alike but score on different scales: the fold line,
    applied to the final reward, would doubt a different share of the model's images; the carried
    line doubts exactly the share the folds doubt, the same images."""
    images, labels = _ramp(40), np.array([0] * 8 + [1] * 32)  # malign = the 8 darkest
    reference = _ramp(200, 0, 250)
    monkeypatch.setattr(thresholds, "train_reward", lambda *a, **kw: BrightnessReward(1.0))  # folds: a soft scale
    final = BrightnessReward(20.0)  # the final reward: a sharp one, same ranking
    th = heldout_threshold(images, labels, kind="resnet18", diffusion=None, folds=4, reward=final, reference=reference)
    fold_ref = benign_scores(BrightnessReward(1.0), reference)
    share = (fold_ref <= th["fold_threshold"]).mean()
    assert 0.1 < share < 0.3 and th["reference_share"] == pytest.approx(share)
    final_ref = benign_scores(final, reference)
    doubted = final_ref <= th["threshold"]
    assert np.array_equal(doubted, fold_ref <= th["fold_threshold"])  # the same images
    uncarried = (final_ref <= th["fold_threshold"]).mean()  # the fold line on the final reward's scale
    assert not share / 2 < uncarried < 2 * share  # would doubt a share of another size altogether
    folds_only = heldout_threshold(images, labels, kind="resnet18", diffusion=None, folds=4, scale="folds")
    assert folds_only["threshold"] == th["fold_threshold"] and "reference_share" not in folds_only
    assert carried_threshold(final, 0.0, reference) == 0.0  # no share: nothing doubted
    with pytest.raises(CensorError, match="reference images"):
        heldout_threshold(images, labels, kind="resnet18", diffusion=None, folds=4, reward=final)
    with pytest.raises(CensorError, match="scale"):
        heldout_threshold(images, labels, kind="resnet18", diffusion=None, scale="pixels")


def test_carried_share_reads_every_fold_on_its_own_scale(monkeypatch):
    """Folds that rank alike but score on different scales doubt the share that one common scale gives: each
    held-out score is read as the share of the reference its own fold doubts before the folds are pooled.
    One raw line pooled over them would be set by the softest fold and doubt far more under the sharp ones."""
    images, labels = _ramp(40), np.array([0] * 8 + [1] * 32)
    reference, final = _ramp(200, 0, 250), BrightnessReward(5.0)

    def share_with(scales):
        it = iter(scales)
        monkeypatch.setattr(thresholds, "train_reward", lambda *a, **kw: BrightnessReward(next(it)))
        return heldout_threshold(images, labels, kind="resnet18", diffusion=None, folds=4, reward=final,
                                 reference=reference)

    same, mixed = share_with([1.0] * 4), share_with([0.3, 1.0, 3.0, 10.0])
    darkest_malign = (_ramp(200, 0, 250)[:, 0, 0] <= images[:8, 0, 0].max()).mean()  # what brightness alone says
    assert same["reference_share"] == pytest.approx(darkest_malign) == pytest.approx(mixed["reference_share"])
    assert mixed["threshold"] == pytest.approx(same["threshold"])
    assert mixed["pooled_line_share"] > 1.5 * mixed["reference_share"]  # the one raw line: set by the 0.3 fold
    assert len(mixed["malign_quantiles"]) == 8 and max(mixed["malign_quantiles"]) == mixed["reference_share"]


def test_miniature_rejection_bench_reports_every_mode(tmp_path, fixture_images, tiny_model):
    from censor.bench.censoring import BenchConfig
    from censor.bench.reject import MODES, markdown_table, run_reject_bench
    from censor.eval.oracle import load_oracle, load_reference
    from censor.labels.pool import Pool

    bags = np.where(fixture_images["labels"] == 8)[0][:20]
    rest = np.where(fixture_images["labels"] != 8)[0][:100]
    idx = np.concatenate([bags, rest])
    pool = Pool(fixture_images["images"][idx], np.arange(len(idx)), {})
    cfg = BenchConfig(feature="bags", budget=40, method="ensemble", members=2, iterations=3, batch_size=8,
                      n=8, steps=2, seeds=1, weight=0.5)
    result = run_reject_bench(cfg, tiny_model, load_oracle(), pool, load_reference(), out_dir=tmp_path,
                              cache_dir=tmp_path / "cache", folds=2, cap_factor=3, log=lambda *_: None)
    assert set(result["modes"]) == set(MODES)
    for mode, m in result["modes"].items():
        assert m["kept"] <= 8 and m["drawn"] >= m["kept"] and m["n"] == m["kept"]
        assert m["drawn"] <= 24 and (m["kept"] == 8 or m["capped_seeds"] == 1)
        if m["n"]:
            assert m["ci_pct"][0] <= m["malign_pct"] <= m["ci_pct"][1]
    assert result["modes"]["guide"]["drawn"] == 8
    saved = json.loads((tmp_path / f"{result['name']}.json").read_text())
    assert saved["name"].startswith("reject_bags_ensemble") and (tmp_path / f"{result['name']}.png").is_file()
    assert "guide+reject" in markdown_table(result)
    from censor.bench.reject_report import combined_table, normalised_s_per_accepted

    g = result["modes"]["guide"]
    assert normalised_s_per_accepted(result, "guide") == pytest.approx(g["seconds"] / g["kept"])
    assert combined_table([result]).count("\n| |") == len(MODES)
    # the unguided draws are kept for the next run
    assert list((tmp_path / "cache").glob("reject_draws_*.safetensors"))
    # judged by the shared GalleryJudge: tv against the baseline's benign histogram, with its floor
    assert saved["feature"] == "bags" and saved["dominance"] == "benign"
    floor = result["baseline"]["tv_floor"]
    assert floor is not None and 0 <= floor <= 1
    assert list((tmp_path / "cache").glob("baseline_*_n8_s2_seed40000.safetensors"))  # the floor's gallery
    for mode, m in result["modes"].items():
        assert {"malign_pct", "ci_pct", "tv", "tv_floor", "recall_ratio", "confident", "time_ratio"} <= set(m)
        assert m["tv_floor"] == floor
        if m["n"]:
            assert 0 <= m["tv"] <= 1 and m["time_ratio"] > 0 and len(m["class_shares"]) == 10
            assert m["time_ratio"] == pytest.approx(m["s_per_accepted"] / result["baseline"]["s_per_image"])
        seed_row = result["runs"][0]["modes"][mode]
        assert seed_row["n"] == 0 or (0 <= seed_row["tv"] <= 1 and "class_shares" in seed_row)
    assert "| tv (floor) |" in markdown_table(result) and "| tv (floor) |" in combined_table([result])
    assert f"({floor:.3f})" in markdown_table(result)
    # rows saved before tv was measured still load, as "n/a"
    old = json.loads(json.dumps(saved))
    for m in old["modes"].values():
        m.pop("tv"), m.pop("tv_floor")
    old["baseline"].pop("tv_floor")
    mode_lines = [line for line in markdown_table(old).splitlines() if line.split("|")[1:2] in ([f" {m} "] for m in MODES)]
    assert len(mode_lines) == len(MODES) and all(line.split("|")[3].strip() == "n/a" for line in mode_lines)
    combined = [line for line in combined_table([old]).splitlines() if line.startswith("| | ")]
    assert len(combined) == len(MODES) and all(line.split("|")[4].strip() == "n/a" for line in combined)



def test_strict_toggle_in_the_browser_reports_draws_and_shows_progress(server, browser):
    """The Censored gallery tab's strict toggle end to end (real app and model; skipped without chromium)."""
    from test_browser import _label_two_and_train, _set_slider

    url, _ = server
    page = browser.new_page(viewport={"width": 1200, "height": 1100})
    page.goto(url)
    _label_two_and_train(page)
    page.get_by_role("tab", name="Censor", exact=True).click()
    _set_slider(page, "censor-steps", 5)
    _set_slider(page, "censor-count", 6)
    _set_slider(page, "censor-strict-p", 0.3)
    page.locator("#censor-strict input[type=checkbox]").check()
    page.locator("#censor-btn").click()
    # Gradio's progress bar, labelled by the studio's progress callback, shows while the gallery is drawn
    page.wait_for_function("Array.from(document.querySelectorAll('.progress-level, .progress-text'))"
                           ".some(e => e.innerText.includes('sampling'))", timeout=60_000)
    page.wait_for_function("document.querySelector('#censor-result').innerText.includes('Strict: drew')",
                           timeout=120_000)
    text = page.locator("#censor-result").inner_text()
    assert "threshold p=0.3" in text and "user threshold" in text, text
    drawn = int(text.split("Strict: drew ")[1].split(",")[0])
    dropped = int(text.split("dropped ")[1].split(" ")[0])
    kept = 6 if "cap of" not in text else int(text.split(" with ")[1].split(" of ")[0])
    assert drawn - dropped == kept
    page.wait_for_function(f"document.querySelectorAll('#censored img').length === {kept}", timeout=10_000)
