"""The simulated labeller and a miniature benchmark run (tiny model, real fixture images as the pool)."""

import json

import numpy as np
import pytest

from censor.bench.censoring import BenchConfig, markdown_rows, run_bench
from censor.core.errors import CensorError
from censor.eval.oracle import load_oracle, load_reference
from censor.labels.labeller import SimulatedLabeller
from censor.labels.pool import Pool


def test_labeller_follows_the_oracle_and_flips_on_request(fixture_images):
    oracle = load_oracle()
    images, truth = fixture_images["images"], (fixture_images["labels"] != 8).astype(int)
    honest = SimulatedLabeller(oracle, "bags").label(images)
    assert (honest == truth).mean() > 0.97  # the oracle is right about bags on real images
    sloppy = SimulatedLabeller(oracle, "bags", flip_rate=0.2, seed=1)
    noisy = sloppy.label(images)
    assert 0.15 < (noisy != honest).mean() < 0.25 and sloppy.viewed == 500
    wm = SimulatedLabeller(oracle, "watermark").label(images)
    assert (wm == ~fixture_images["watermark"]).mean() > 0.98
    with pytest.raises(CensorError, match="unknown feature"):
        SimulatedLabeller(oracle, "hats")


def test_bench_config_validation():
    with pytest.raises(CensorError, match="unknown method"):
        BenchConfig(method="magic")
    with pytest.raises(CensorError, match="positive"):
        BenchConfig(budget=0)
    assert BenchConfig(guidance="universal").reward == "resnet18"
    assert BenchConfig().reward == "ddpm-encoder"


@pytest.mark.parametrize("method", ["ensemble", "imitation"])
def test_miniature_bench_runs_and_reports(tmp_path, fixture_images, tiny_model, method):
    """Everything a bench row needs is measured and written; the numbers are consistent with each other."""
    bags = np.where(fixture_images["labels"] == 8)[0][:20]
    rest = np.where(fixture_images["labels"] != 8)[0][:100]
    idx = np.concatenate([bags, rest])
    pool = Pool(fixture_images["images"][idx], np.arange(len(idx)), {})  # 1 in 6 malign
    cfg = BenchConfig(feature="bags", budget=40, method=method, members=2, iterations=3, batch_size=8,
                      n=24, steps=2, seeds=2, rounds=2, weight=0.5)
    result = run_bench(cfg, tiny_model, load_oracle(), pool, load_reference(), out_dir=tmp_path, log=lambda *_: None,
                       cache_dir=tmp_path / "cache")
    runs = result["runs"]
    assert len(runs) == 2 and all(r["n"] == 12 for r in runs)  # n is the total, split over the seeds
    assert runs[0]["viewed"] == (40 if method == "ensemble" else 80)
    assert result["censored"]["n"] == 24 and result["baseline"]["n"] == 24
    lo, hi = result["censored"]["ci_pct"]
    assert lo <= result["censored"]["malign_pct"] <= hi
    saved = json.loads((tmp_path / f"{cfg.name}.json").read_text())
    assert saved["name"] == cfg.name and (tmp_path / f"{cfg.name}.png").stat().st_size > 0
    assert cfg.name in markdown_rows([result])
    # the fields every bench JSON carries (faithful-censoring issue)
    assert saved["feature"] == "bags" and saved["dominance"] == "benign"
    c = saved["censored"]
    for key in ("malign_pct", "ci_pct", "tv", "tv_floor", "recall_ratio", "confident", "time_ratio"):
        assert key in c, key
    assert 0 <= c["tv"] <= 1 and 0 <= c["tv_floor"] <= 1 and abs(sum(c["class_shares"]) - 1) < 1e-3
    assert all(0 <= r["drift"]["tv"] <= 1 and "chance" in r["drift"] for r in runs)
    assert " | " + f"{c['tv']:.3f} ({c['tv_floor']:.3f})" + " | " in markdown_rows([result])


def test_zero_weight_bench_censors_disjoint_seeds_into_its_own_baseline(tmp_path, fixture_images, tiny_model):
    """Each labelling seed censors its own slice of the baseline's seeds: at ω = 0 the censored
    gallery is the baseline image for image, so malign %, class shares and tv match exactly."""
    pool = Pool(fixture_images["images"][:120], np.arange(120), {})
    cfg = BenchConfig(feature="bags", budget=60, members=2, iterations=2, batch_size=8, n=12, steps=2, seeds=3,
                      weight=0.0)
    result = run_bench(cfg, tiny_model, load_oracle(), pool, load_reference(), log=lambda *_: None,
                       cache_dir=tmp_path / "cache")
    b, c = result["baseline"], result["censored"]
    assert c["n"] == b["n"] == 12 and c["malign_pct"] == b["malign_pct"]
    assert c["class_shares"] == b["class_shares"]
    from censor.eval.metrics import tv_distance

    shares = np.array(b["class_shares"])
    target = np.where(np.arange(10) == 8, 0.0, shares)  # the baseline without its bags, renormalised
    if target.sum() > 0:
        assert c["tv"] == pytest.approx(tv_distance(shares, target / target.sum()), abs=1e-3)


def test_sweep_runs_every_feature_resumably_and_checks_targets(tmp_path, fixture_images, tiny_model, monkeypatch):
    from censor.bench import sweep
    from censor.core.settings import DEFAULT_GUIDANCE

    pool = Pool(fixture_images["images"][:120], np.arange(120), {})
    base = BenchConfig(budget=40, members=2, iterations=2, batch_size=8, n=8, steps=2, seeds=1, rounds=2)
    args = (DEFAULT_GUIDANCE, tiny_model, load_oracle(), pool, load_reference(), tmp_path, base)
    results = sweep.run_sweep(*args, features=["bags", "not-footwear"], log=lambda *_: None)
    assert [r["feature"] for r in results] == ["bags", "not-footwear"]
    assert [r["config"]["method"] for r in results] == ["ensemble", "imitation"]
    text = (tmp_path / "summary.md").read_text()
    assert "| [bags](./bags_" in text and "| malign |" in text and "| benign |" in text
    assert len(json.loads((tmp_path / "summary.json").read_text())) == 2
    monkeypatch.setattr(sweep, "run_bench", lambda *a, **k: pytest.fail("a finished feature was rerun"))
    again = sweep.run_sweep(*args, features=["bags", "not-footwear"], log=lambda *_: None)
    assert [r["name"] for r in again] == [r["name"] for r in results]


def test_sweep_verdict_reads_the_targets():
    from censor.bench.sweep import verdict

    row = dict(dominance="benign", baseline=dict(confident=0.7, tv_floor=0.04),
               censored=dict(malign_pct=0.5, ci_pct=[0.1, 1.2], tv=0.055, tv_floor=0.04, recall_ratio=0.97,
                             confident=0.72))
    v = verdict(row)
    assert v["all"] and v["tv_bar"] == pytest.approx(0.06)  # max(0.05, 1.5 × floor)
    worse = dict(row, censored=dict(row["censored"], tv=0.2, ci_pct=[0.1, 1.6]))
    v = verdict(worse)
    assert not v["all"] and not v["tv"] and not v["malign"] and v["recall"]
    malign = dict(row, dominance="malign", censored=dict(row["censored"], recall_ratio=0.91, tv=0.07, ci_pct=[0.1, 3.0]))
    v = verdict(malign)
    assert v["all"] and v["confident"] is None  # the upper bound and confident are benign-dominant targets


def test_a_budget_without_malign_examples_is_reported_not_crashed(fixture_images, tiny_model):
    no_bags = fixture_images["images"][fixture_images["labels"] != 8][:60]
    pool = Pool(no_bags, np.arange(60), {})
    cfg = BenchConfig(feature="bags", budget=30, members=2, iterations=2, n=12, steps=2, seeds=1)
    result = run_bench(cfg, tiny_model, load_oracle(), pool, load_reference(), log=lambda *_: None)
    assert result["runs"][0]["no_reward"] and result["runs"][0]["malign_labels"] == 0
    assert result["censored"]["malign_pct"] == result["baseline"]["malign_pct"]


def test_the_baseline_is_sampled_once_per_model_and_reused(tmp_path, tiny_model, monkeypatch):
    from censor.bench import harness as bench

    first = bench.cached_baseline(tiny_model, 6, 2, tmp_path)
    assert len(list(tmp_path.glob("baseline_*_n6_s2.safetensors"))) == 1
    monkeypatch.setattr(bench, "sample", lambda *a, **k: pytest.fail("the cached baseline was sampled again"))
    again = bench.cached_baseline(tiny_model, 6, 2, tmp_path)
    assert again.dtype == np.uint8 and np.array_equal(first, again)


def test_auc_handles_ties_and_orders():
    from censor.bench.fewshot import auc

    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5


def test_fewshot_scores_on_real_truth_and_reports_unavailable_inits(fixture_images, tiny_model):
    from censor.bench.fewshot import run_fewshot

    bags = np.where(fixture_images["labels"] == 8)[0][:20]
    rest = np.where(fixture_images["labels"] != 8)[0][:100]
    idx = np.concatenate([bags, rest])
    pool = Pool(fixture_images["images"][idx], np.arange(len(idx)), {})
    rows = run_fewshot("bags", 60, tiny_model, load_oracle(), pool, fixture_images["images"][200:400],
                       fixture_images["labels"][200:400], fixture_images["watermark"][200:400],
                       variants=(("ddpm-encoder", "random"), ("resnet18", "imagenet")), iterations=3,
                       log=lambda *_: None)
    enc, imagenet = rows
    assert {"auc_t0", "auc_t300", "auc_t600", "balanced_acc"} <= set(enc) and 0 <= enc["auc_t0"] <= 1
    assert "unavailable" in imagenet or "auc_t0" in imagenet  # offline machines cannot fetch ImageNet weights


def test_guidance_timing_interleaves_settings_and_takes_median_ratios(tiny_model, monkeypatch):
    from censor.bench import timing as bench
    from censor.rewards.architectures import build_member
    from censor.rewards.ensemble import RewardEnsemble

    reward = RewardEnsemble("ddpm-encoder", [build_member("ddpm-encoder", tiny_model)]).eval()
    clock, calls = [0.0], []
    cost = {None: 1.0, 1: 3.0, 2: 2.0}  # fake seconds per call: unguided, every 1, every 2

    def fake_sample(model, seeds, steps, guidance=None, **_):
        every = None if guidance is None else guidance.pieces[0].every
        if steps > 2:  # not the warm-up
            calls.append(every)
            clock[0] += cost[every]

    monkeypatch.setattr(bench, "sample", fake_sample)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    result = bench.time_guidance(tiny_model, reward, n=4, steps=3, reps=2, everies=(1, 2), log=lambda *_: None)
    assert calls == [None, 1, 2, None, 1, 2]  # the settings take turns inside each repetition
    assert result["ratio_median"] == {"time every 1": 3.0, "time every 2": 2.0}
    assert result["seconds"]["unguided"] == [1.0, 1.0]
    with pytest.raises(CensorError, match="positive"):
        bench.time_guidance(tiny_model, reward, reps=0)


def test_guidance_timing_really_samples(tiny_model):
    from censor.bench import timing as bench
    from censor.rewards.architectures import build_member
    from censor.rewards.ensemble import RewardEnsemble

    reward = RewardEnsemble("ddpm-encoder", [build_member("ddpm-encoder", tiny_model)]).eval()
    result = bench.time_guidance(tiny_model, reward, n=2, steps=2, reps=1, everies=(1,), log=lambda *_: None)
    assert result["median_s"]["unguided"] > 0 and result["ratio_median"]["time every 1"] > 0


def test_bench_table_reads_bench_rows_only(tmp_path):
    from censor.bench.censoring import collect

    row = dict(name="bags_x", config=dict(feature="bags"), baseline={}, censored={})
    (tmp_path / "bags_x.json").write_text(json.dumps(row))
    (tmp_path / "compare_bags_b98.json").write_text(json.dumps(dict(config={}, methods={})))
    (tmp_path / "timing.json").write_text(json.dumps([1, 2]))
    assert [r["name"] for r in collect(tmp_path)] == ["bags_x"]


def test_the_harness_slices_disjoint_seeds_and_judges_what_an_arm_keeps(tmp_path, tiny_model):
    """Each labelling seed censors its own slice of the baseline; an arm that keeps nothing (rejection)
    is judged as nothing, and pools to the whole interval instead of crashing."""
    from censor.bench.harness import GALLERY_SEED, Arm, Harness
    from censor.sampling.loop import seeds_for

    h = Harness(tiny_model, load_oracle(), load_reference(), "bags", 2, per_seed=5, slices=2, cache_dir=tmp_path)
    assert h.seeds == seeds_for(10, GALLERY_SEED) and len(h.baseline) == 10 and len(h.judges) == 2
    (s0, b0), (s1, b1) = h.gallery(0), h.gallery(1)
    assert not set(s0) & set(s1) and np.array_equal(b0, h.baseline[:5]) and np.array_equal(b1, h.baseline[5:])
    empty, judgement = h.judge(h.baseline[:0])
    assert empty["n"] == 0 and judgement is None
    assert h.pool([empty]) == dict(malign=0, n=0, malign_pct=None, ci_pct=[0.0, 100.0], tv=None, tv_floor=h.floor,
                                   recall_ratio=None, confident=None)
    runs, first = h.run(2, lambda seed: iter([("unguided", Arm(h.gallery(seed)[1], dict(cost=seed)))]))
    assert [r["seed"] for r in runs["unguided"]] == [0, 1] and [r["cost"] for r in runs["unguided"]] == [0, 1]
    pooled = h.pool(runs["unguided"])
    base = h.baseline_row()
    assert pooled["n"] == base["n"] == 10 and pooled["malign"] == base["malign"]  # the baseline, censored by nothing
    assert pooled["tv"] == pytest.approx(h.judge_all.tv(h.judge_all.base), abs=1e-9)
    other = h.for_feature("watermark")  # judged anew, nothing sampled again
    assert other.feature == "watermark" and other.baseline is h.baseline and h.feature == "bags"


def test_draw_store_samples_only_new_seeds_and_charges_every_image(tiny_model):
    from censor.bench.reject import DrawStore
    from censor.core.data import to_uint8
    from censor.sampling.loop import sample, seeds_for

    seeds = seeds_for(6, 3)
    first = to_uint8(sample(tiny_model, seeds[:4], steps=2))
    store = DrawStore(tiny_model, 2, None, seeds[:4], first, np.full(4, 0.5))
    got = store(seeds[2:6])  # two drawn before, two new
    assert np.array_equal(got, to_uint8(sample(tiny_model, seeds[2:6], steps=2)))
    assert store.seeds == seeds and len(store.images) == 6
    assert store.charged_s == pytest.approx(1.0 + store.cost[4:].sum())
    assert np.array_equal(store(seeds[:2]), first[:2]) and len(store.images) == 6  # nothing sampled again


def test_an_imitation_round_labels_what_it_shows_and_retrains_resuming(tiny_model, fixture_images):
    from censor.labels.imitation import imitation_round, round_seeds

    one = set(round_seeds(50, 0, 2))
    assert not one & set(round_seeds(50, 1, 2)) and not one & set(round_seeds(50, 0, 3))  # per seed and round
    labeller = SimulatedLabeller(load_oracle(), "bags")
    images, labels = fixture_images["images"][:3], np.array([1, 0, 1])
    seen = {}

    def train(imgs, labs, resume):
        seen.update(n=len(imgs), labels=labs, resume=resume)
        return "retrained"

    out_images, out_labels, reward = imitation_round(
        tiny_model, labeller, "previous", None, images, labels, count=4, session_seed=0, round_=2, steps=2,
        train=train, pick=lambda gallery: gallery[:2])
    assert reward == "retrained" and seen["resume"] == "previous" and seen["n"] == 5 == len(out_images)
    assert labeller.viewed == 2 and np.array_equal(out_labels[:3], labels) and len(out_labels) == 5


def test_benchmark_options_come_from_the_config_and_reach_it():
    import argparse

    from censor.cli.bench import BENCH_FIELDS, config_from_args, register_bench
    from censor.core.settings import DEFAULT_GUIDANCE

    p = argparse.ArgumentParser()
    register_bench(p.add_subparsers())
    a = p.parse_args(["bench"])
    assert config_from_args(BenchConfig, a, BENCH_FIELDS) == BenchConfig()
    a = p.parse_args(["bench-reject", "--method", "union", "--threshold", "0.3", "--weight", "3"])
    assert a.method == "union" and a.reject_threshold == 0.3 and a.weight == 3.0 and a.steps == 25
    assert a.every == DEFAULT_GUIDANCE.every
    from censor.cli.args import guidance_from_args

    assert guidance_from_args(a).threshold is None  # the rejection threshold is not the guidance hinge
    from censor.bench.active import ActiveBenchConfig
    from censor.cli.bench import ACTIVE_FIELDS
    from censor.sampling.thresholds import THRESHOLD_SCALE

    assert a.threshold_scale == THRESHOLD_SCALE == "reference"  # both benches read the one default
    a = p.parse_args(["bench-active", "--threshold-scale", "folds", "--censor", "repaint", "--only-seed", "2"])
    cfg = config_from_args(ActiveBenchConfig, a, ACTIVE_FIELDS)
    assert cfg.threshold_scale == "folds" and a.only_seed == 2
    # a repaint cell carries its scale into the settings it is reused by, unless it is the folds' (older cells)
    assert "threshold_scale" not in cfg.cell_settings("bags")
    assert ActiveBenchConfig(censor="repaint").cell_settings("bags")["threshold_scale"] == "reference"
    with pytest.raises(SystemExit):
        p.parse_args(["bench-reject", "--threshold-scale", "pixels"])
    with pytest.raises(SystemExit):
        p.parse_args(["bench", "--method", "magic"])
