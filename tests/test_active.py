"""Active labelling (issue 8): the ranking's terms, its guarantees, and the studio toggle."""

import numpy as np
import pytest
import torch

from censor.bench.active_report import labels_to_target, summary_table
from censor.core.errors import CensorError
from censor.labels.pool import Pool
from censor.labels.ranking import ActiveWeights, EncoderFeatures, informativeness, member_probs, rank
from censor.studio.core import PAGE_SIZE, Studio


def _clusters(sizes=(50, 30, 20), seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    z = np.concatenate([c + rng.normal(size=(n, 2)) for c, n in zip(centres, sizes)]).astype(np.float32)
    which = np.repeat(np.arange(len(sizes)), sizes)
    return z, which


def test_informativeness_formula_on_a_known_reward():
    # two members; p = geometric mean; uncertainty 1 - |2p - 1|; disagreement 2 * std over members
    probs = np.array([[0.5, 0.9, 0.1, 0.8],
                      [0.5, 0.9, 0.1, 0.2]])
    u, d = informativeness(probs)
    p = np.sqrt(probs[0] * probs[1])
    assert np.allclose(u, 1 - np.abs(2 * p - 1))
    assert np.allclose(d, [0.0, 0.0, 0.0, 0.6])
    assert u[0] == pytest.approx(1.0) and u[1] == pytest.approx(0.2)


def test_uncertainty_weight_alone_picks_the_most_uncertain_first():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 8)).astype(np.float32)
    p = rng.random(40)
    order = rank(z, np.zeros(40, bool), p[None, :], ActiveWeights(uncertainty=1, disagreement=0, coverage=0, malign=0))
    assert list(order) == list(np.argsort(np.abs(2 * p - 1), kind="stable"))
    # disagreement alone: the members that disagree most come first
    probs = np.stack([p, 1 - p])
    order = rank(z, np.zeros(40, bool), probs, ActiveWeights(uncertainty=0, disagreement=1, coverage=0, malign=0), k=5)
    assert set(order) == set(np.argsort(-np.abs(p - (1 - p)))[:5])


def test_likely_malign_term_searches_for_the_rare_class():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(40, 8)).astype(np.float32)
    probs = rng.random((3, 40))
    p = np.exp(np.log(probs).mean(0))  # the ensemble's P(benign): geometric mean of its members
    order = rank(z, np.zeros(40, bool), probs, ActiveWeights(0, 0, 0, malign=1), k=6)
    assert list(order) == list(np.argsort(p, kind="stable")[:6])
    confident_malign = np.full((1, 40), 0.5)
    confident_malign[0, 7] = 0.001  # sure it is malign: not uncertain at all
    assert rank(z, np.zeros(40, bool), confident_malign, ActiveWeights(1, 0, 0, 0), k=1)[0] != 7
    assert rank(z, np.zeros(40, bool), confident_malign, ActiveWeights(1, 0, 0, malign=3), k=1)[0] == 7
    with pytest.raises(CensorError, match=">= 0"):
        ActiveWeights(malign=-1)


def test_coverage_spreads_picks_over_all_clusters():
    z, which = _clusters()
    # no labels, no reward: pure coverage; the first three picks are one per cluster
    first = rank(z, np.zeros(len(z), bool), None, k=3)
    assert set(which[first]) == {0, 1, 2}
    # the reward is unsure only inside cluster 0: uncertainty alone would stay there ...
    p = np.where(which == 0, 0.5, 0.99)[None, :]
    only_u = rank(z, np.zeros(len(z), bool), p, ActiveWeights(1, 0, 0, 0), k=6)
    assert set(which[only_u]) == {0}
    # ... the mix still visits every cluster within a page-sized batch
    mixed = rank(z, np.zeros(len(z), bool), p, ActiveWeights(1, 1, 1, 0), k=6)
    assert set(which[mixed]) == {0, 1, 2}
    assert (which[mixed] == 0).sum() >= 2  # and leans to where the reward is unsure


def test_coverage_goes_where_the_labels_are_not():
    z, which = _clusters()
    labelled = which != 2  # clusters 0 and 1 fully labelled
    labelled[np.where(which == 2)[0][:2]] = False
    order = rank(z, labelled, None, k=5)
    assert set(which[order]) == {2}


def test_never_returns_labelled_items_and_ranks_every_other_once():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(60, 4)).astype(np.float32)
    labelled = rng.random(60) < 0.4
    probs = rng.random((3, 60))
    order = rank(z, labelled, probs)
    assert sorted(order) == sorted(np.where(~labelled)[0])
    assert not labelled[order].any()
    # indices instead of a mask, and k larger than what is left
    idx = np.where(labelled)[0]
    assert list(rank(z, idx, probs, k=1000)) == list(order)
    assert len(rank(z, np.ones(60, bool), probs)) == 0


def test_deterministic_for_a_seed_and_works_with_zero_labels():
    z = np.random.default_rng(3).normal(size=(50, 6)).astype(np.float32)
    a = rank(z, np.zeros(50, bool), None, seed=7)
    b = rank(z, np.zeros(50, bool), None, seed=7)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    # exact ties (identical features, no reward) are broken by the seed, reproducibly
    flat = np.zeros((30, 3), np.float32)
    assert list(rank(flat, [], None, seed=1)) == list(rank(flat, [], None, seed=1))
    assert sorted(rank(flat, [], None, seed=1)) == list(range(30))


def test_member_probs_from_cached_taps_match_the_reward(tiny_model, fixture_images):
    from censor.core.data import to_model_range
    from censor.rewards.training import train_reward

    images = fixture_images["images"][:40]
    labels = (np.arange(40) % 4 != 0).astype(int)
    reward = train_reward(images[:12], labels[:12], kind="ddpm-encoder", diffusion=tiny_model, members=2,
                          iterations=5, batch_size=8)
    feats = EncoderFeatures(tiny_model, images)
    assert feats.embedding.shape[0] == 40 and np.isfinite(feats.embedding).all()
    cached = member_probs(reward, features=feats)
    x = to_model_range(images)
    direct = torch.sigmoid(reward.logits(x, torch.zeros(40, dtype=torch.long))).numpy()
    assert cached.shape == (2, 40)
    assert np.allclose(cached, direct, atol=2e-3)  # the cache keeps taps in float16
    order = rank(feats.embedding, np.arange(12), cached, k=10)
    assert len(order) == 10 and (order >= 12).all()


def test_labels_to_target_and_summary():
    pts = [dict(budget=b, malign_pct=m, malign_labels=b // 10, recall_ratio=0.9)
           for b, m in ((20, 5.0), (40, 0.5), (60, 1.5), (100, 0.0))]
    assert labels_to_target(pts) == 40
    assert labels_to_target(pts[:1]) is None
    # reached and kept: 40 is a dip (60 is back above 1%), so only from 100 on
    assert labels_to_target(pts, kept=True) == 100
    assert labels_to_target(pts[:3], kept=True) is None
    assert labels_to_target(list(reversed(pts)), kept=True) == 100  # order of the points does not matter
    cells = [dict(settings=dict(feature="bags"), strategy=s, seed=k, complete=True,
                  points=[dict(p, malign_pct=p["malign_pct"] + k) for p in pts]) for s in ("random", "active") for k in (0, 1, 2)]
    table = summary_table(cells)
    assert "| bags | random | 3 |" in table
    assert "tv (floor) at 100" in table and table.count("| n/a |") == 2  # cells saved before tv: n/a
    # first hit: seed 0 at 40, seed 1 (6, 1.5, 2.5, 1) at 100, seed 2 (7, 2.5, 3.5, 2) never; median 100
    assert "| 40 / 100 / – | 100 |" in table
    # reached and kept: 100 / 100 / never; median 100
    assert "| 100 / 100 / – | 100 | 2 / 4 / 6 / 10 | 0.90× | – |" in table
    # with tv: the median over seeds at the last budget, next to the baseline's floor
    for c in cells:
        c["baseline"] = dict(tv_floor=0.05)
        for p in c["points"]:
            p["tv"] = 0.1 * (1 + c["seed"])
    assert "| 0.200 (0.050) |" in summary_table(cells)


@pytest.fixture
def studio(tmp_path, tiny_model, fixture_images):
    pool = Pool(fixture_images["images"][:60], np.arange(60), {})
    return Studio(model=tiny_model, data_dir=tmp_path / "data", pool=pool)


def _all_pages(studio, sid, total):
    ids = []
    for p in range(-(-total // PAGE_SIZE)):
        ids += [it["id"] for it in studio.page(sid, p)]
    return ids


def test_studio_toggle_reorders_pages_and_keeps_every_item_once(studio):
    import time

    sid = studio.open_session(None)
    total = studio.store.counts(sid).total
    plain = [it["item"] for it in studio.store.items(sid, limit=1000)]
    assert not studio.informative_first(sid)
    studio.set_informative_first(sid, True)
    assert studio.informative_first(sid)
    t0 = time.time()
    first = [it["id"] for it in studio.page(sid, 0)]
    assert time.time() - t0 < 60.0  # a hang guard only (a loaded machine); what bounds the cost is `candidates`
    assert first != plain[:PAGE_SIZE]
    assert studio.store.counts(sid).viewed == PAGE_SIZE
    studio.click(sid, first[0])  # a label between pages: the rest is ranked afresh
    ranked = _all_pages(studio, sid, total)
    assert sorted(ranked) == sorted(plain) and len(ranked) == total  # every item exactly once
    assert ranked[:PAGE_SIZE] == first  # pages already shown stay put
    assert [it["id"] for it in studio.page(sid, 1)] == ranked[PAGE_SIZE:2 * PAGE_SIZE]
    studio.set_informative_first(sid, False)
    assert _all_pages(studio, sid, total) == plain


def test_studio_ranks_the_gallery_sent_back_for_labelling(studio):
    sid = studio.open_session(None)
    studio.set_informative_first(sid, True)
    studio.page(sid, 0)
    for it in studio.page(sid, 0)[:3]:
        studio.click(sid, it["id"])
    studio.train(sid, "ensemble", "ddpm-encoder", members=2, iterations=10, alpha=0.5)
    gallery = studio.pool.images[:12]
    rnd = studio.send_to_labelling(sid, gallery, list(range(100, 112)))
    items = [it for it in studio.store.items(sid, limit=1000) if it["round"] == rnd]
    assert sorted(it["seed"] for it in items) == list(range(100, 112))  # all of it, reordered
    order = studio.label_order(sid)
    assert sorted(order) == sorted(it["item"] for it in studio.store.items(sid, limit=1000))
    page = studio.first_page_of_round(sid, rnd)
    assert page == 1  # right after the viewed first page: the newest round is ranked first
    assert {it["id"] for it in studio.page(sid, page)} >= {it["item"] for it in items}


@pytest.mark.parametrize("feature", ["bags", "not-footwear"])
def test_miniature_active_bench_counts_views_and_resumes(tmp_path, fixture_images, tiny_model, feature):
    """Both strategies label exactly the budget, every budget is judged, and a rerun reuses finished cells."""
    import json

    from PIL import Image

    from censor.bench.active import ActiveBenchConfig, run_active_bench
    from censor.eval.oracle import load_oracle, load_reference

    idx = np.concatenate([np.where(fixture_images["labels"] == 8)[0][:20], np.where(fixture_images["labels"] != 8)[0][:100]])
    pool = Pool(fixture_images["images"][idx], np.arange(len(idx)), {})
    cfg = ActiveBenchConfig(features=(feature,), seeds=1, budgets=(5, 10), batch=5, n=8, steps=2, members=2,
                            iterations=3, candidates=6, weights=dict(ActiveBenchConfig().weights, malign=1.0))
    log: list[str] = []
    cells = run_active_bench(cfg, tiny_model, load_oracle(), pool, load_reference(), out_dir=tmp_path,
                             cache_dir=tmp_path / "cache", log=log.append)
    assert [c["strategy"] for c in cells] == ["random", "active"]
    for c in cells:
        assert c["complete"] and c["settings"]["weights"]["malign"] == 1.0
        assert [p["budget"] for p in c["points"]] == [5, 10] == [p["viewed"] for p in c["points"]]
        assert all(p["n"] == 8 and p["ci_pct"][0] <= p["malign_pct"] <= p["ci_pct"][1] for p in c["points"])
        assert all(0 <= p["confident"] <= 1 for p in c["points"])
        # judged by the shared GalleryJudge: tv with its floor from a second unguided gallery
        assert c["feature"] == feature and c["dominance"] == ("malign" if feature == "not-footwear" else "benign")
        floor = c["baseline"]["tv_floor"]
        assert floor is not None and 0 <= floor <= 1
        for p in c["points"]:
            assert {"malign_pct", "ci_pct", "tv", "tv_floor", "recall_ratio", "confident", "time_ratio"} <= set(p)
            assert 0 <= p["tv"] <= 1 and p["tv_floor"] == floor and len(p["class_shares"]) == 10
            assert p["time_ratio"] is None or p["time_ratio"] >= 0
        saved = json.loads((tmp_path / f"{feature}_{c['strategy']}_s0.json").read_text())
        assert saved["points"] == c["points"]
        with Image.open(tmp_path / f"{feature}_{c['strategy']}_s0.png") as im:  # 5 + 5 rows over the 8 images
            assert im.size[0] > im.size[1] > 0
    assert (tmp_path / "summary.md").read_text().count(f"| {feature} |") == 2
    assert "tv (floor) at 10" in (tmp_path / "summary.md").read_text()
    log.clear()
    again = run_active_bench(cfg, tiny_model, load_oracle(), pool, load_reference(), out_dir=tmp_path,
                             cache_dir=tmp_path / "cache", log=log.append)
    assert sum("done, skipped" in line for line in log) == 2 and again == json.loads(json.dumps(cells))
    # cells from before the likely-malign term (weight 0) keep their settings key, so they stay reusable
    old = ActiveBenchConfig(weights=dict(ActiveBenchConfig().weights, malign=0.0))
    assert "malign" not in old.cell_settings("bags")["weights"]


def test_active_bench_ranks_and_trains_with_the_local_reward(tmp_path, fixture_images, tiny_model):
    """``--reward local-patch``: the ranking scores pool images with the local reward itself (it reads
    no cached encoder taps), the cell's settings name the kind, and a kind that cannot guide is refused."""
    from censor.bench.active import ActiveBenchConfig, run_active_bench
    from censor.eval.oracle import load_oracle, load_reference

    with pytest.raises(CensorError, match="time-dependent kind"):
        ActiveBenchConfig(reward="resnet18")
    assert "reward" not in ActiveBenchConfig().cell_settings("watermark")  # old cells stay reusable
    pool = Pool(fixture_images["images"][:60], np.arange(60), {})
    cfg = ActiveBenchConfig(features=("watermark",), strategies=("active",), seeds=1, budgets=(5, 10), batch=5, n=4,
                            steps=2, members=2, iterations=3, reward="local-patch")
    (cell,) = run_active_bench(cfg, tiny_model, load_oracle(), pool, load_reference(), out_dir=tmp_path,
                               cache_dir=tmp_path / "cache", log=lambda _: None)
    assert cell["settings"]["reward"] == "local-patch" and [p["viewed"] for p in cell["points"]] == [5, 10]


def test_active_bench_repaint_route_thresholds_on_the_labels_and_charges_the_repaint(tmp_path, fixture_images, tiny_model):
    """``--censor repaint``: a budget's gallery is the unguided one repainted at a threshold cross-fitted on the
    labels so far (none before two labels of each class: the gallery stays unguided), charged on top of it."""
    from censor.bench.active import ActiveBenchConfig, run_active_bench
    from censor.core.watermark import stamp
    from censor.eval.oracle import load_oracle, load_reference

    with pytest.raises(CensorError, match="censor is one of"):
        ActiveBenchConfig(censor="inpaint")
    assert "censor" not in ActiveBenchConfig().cell_settings("watermark")  # guided cells stay reusable
    rng = np.random.default_rng(0)
    images = fixture_images["images"][:60].copy()
    for i in range(0, 60, 2):  # every other pool image stamped: both classes in the first labels
        images[i] = stamp(images[i], int(rng.integers(4)), (1, 1), 1.0)
    pool = Pool(images, np.arange(60), {})
    cfg = ActiveBenchConfig(features=("watermark",), strategies=("random",), seeds=1, budgets=(2, 12), batch=2, n=6,
                            steps=2, members=2, iterations=3, reward="local-patch", censor="repaint", folds=2)
    (cell,) = run_active_bench(cfg, tiny_model, load_oracle(), pool, load_reference(), out_dir=tmp_path,
                               cache_dir=tmp_path / "cache", log=lambda _: None)
    assert cell["settings"]["censor"] == "repaint" and cell["settings"]["folds"] == 2
    first, last = cell["points"]
    assert first["threshold"] is None and first["time_ratio"] == 1.0  # 2 labels: no threshold, nothing repainted
    assert 0 <= last["threshold"] <= 1 and 0 <= last["passed"] <= last["doubted"] <= 6
    assert last["time_ratio"] > 1.0 if last["doubted"] else last["time_ratio"] >= 1.0


def test_active_bench_boxes_reach_training_and_the_threshold(tmp_path, fixture_images, tiny_model, monkeypatch):
    """``--boxes``: every reward and every cross-fitted threshold of a cell is trained with one box per label,
    a box on each malign label and none on the benign ones; boxes need the watermark and a local reward."""
    import censor.bench.active as active
    from censor.bench.active import ActiveBenchConfig, run_active_bench
    from censor.core.watermark import stamp
    from censor.eval.oracle import load_oracle, load_reference

    with pytest.raises(CensorError, match="boxes need the watermark"):
        ActiveBenchConfig(features=("bags",), reward="local-patch", boxes=True)
    seen = []
    for name in ("train_reward", "heldout_threshold"):
        real = getattr(active, name)
        monkeypatch.setattr(active, name, lambda *a, _real=real, _name=name, **k: seen.append(
            (_name, a[1] if len(a) > 1 else None, k.get("boxes"))) or _real(*a, **k))
    images = fixture_images["images"][:40].copy()
    for i in range(0, 40, 2):
        images[i] = stamp(images[i], 3, (1, 1), 1.0)
    cfg = ActiveBenchConfig(features=("watermark",), strategies=("random",), seeds=1, budgets=(8,), batch=8, n=4,
                            steps=2, members=2, iterations=2, reward="local-patch", censor="repaint", folds=2, boxes=True)
    (cell,) = run_active_bench(cfg, tiny_model, load_oracle(), Pool(images, np.arange(40), {}), load_reference(),
                               out_dir=tmp_path, cache_dir=tmp_path / "cache", log=lambda _: None)
    assert cell["settings"]["boxes"] is True
    assert {name for name, _, _ in seen} == {"train_reward", "heldout_threshold"}
    for _, labels, boxes in seen:
        assert len(boxes) == len(labels) and any(b is not None for b in boxes)
        assert all((b is None) == (lab == 1) for b, lab in zip(boxes, labels))
