"""A miniature guidance-vs-fine-tuning comparison: tiny UNet, real fixture images as the pool."""

import json

import numpy as np
import pytest

from censor.core.errors import CensorError
from censor.eval.oracle import load_oracle, load_reference
from censor.labels.pool import Pool
from rlhf.__main__ import main as rlhf_main
from rlhf.compare import METHODS, CompareConfig, run_compare
from rlhf.configs import DDPOConfig, DistilConfig


def read_json(path):
    return json.loads(path.read_text())


def test_every_method_is_judged_on_the_same_footing(tmp_path, fixture_images, tiny_model):
    bags = np.where(fixture_images["labels"] == 8)[0][:20]
    rest = np.where(fixture_images["labels"] != 8)[0][:100]
    idx = np.concatenate([bags, rest])
    pool = Pool(fixture_images["images"][idx], np.arange(len(idx)), {})
    cfg = CompareConfig(feature="bags", budget=14, seeds=1, n=6, steps=2, train_steps=2, members=2, epochs=1,
                        ddpo_images=4, d3po_group_size=7, distil=DistilConfig(images=6, steps=2, batch_size=4))
    result = run_compare(cfg, tiny_model, load_oracle(), pool, load_reference(), out_dir=tmp_path,
                         cache_dir=tmp_path / "cache", log=lambda *_: None)
    rows = result["methods"]
    assert list(rows) == list(METHODS)
    assert all(r["n"] == 6 for r in rows.values())
    assert rows["baseline"]["labels"] == 0 and rows["censored"]["labels"] == 14 and rows["rlhf"]["labels"] == 14
    assert rows["d3po"]["labels"] == 14  # two groups of 7 sharing x_T, every image labelled
    assert rows["d3po+censored"]["labels"] == 28  # both budgets were spent
    assert rows["distil"]["labels"] == 14 and rows["distil"]["train_s"] > rows["censored"]["train_s"]
    if result["baseline_recall"] > 0:  # a random tiny UNet may have zero recall against real images
        assert rows["baseline"]["recall_ratio"] == pytest.approx(1.0)
    for r in rows.values():
        assert r["ci_pct"][0] <= r["malign_pct"] <= r["ci_pct"][1]
    saved = json.loads((tmp_path / "compare_bags_b14.json").read_text())
    assert saved["machine"] and set(saved["methods"]) == set(METHODS)
    assert (tmp_path / "compare_bags_b14.png").read_bytes()[:4] == b"\x89PNG"
    assert "| d3po+censored |" in (tmp_path / "compare_bags_b14.md").read_text()
    # a grid to look at: two rows of 10 per method (6 of 20 images here, the rest black), linked from the table
    from PIL import Image

    from censor.gallery.grid import grid

    with Image.open(tmp_path / "compare_bags_b14_grid.png") as im:
        assert im.size == grid(np.zeros((20 * len(METHODS), 28, 28), np.uint8), nrow=10).size
        cells = np.asarray(im.convert("L"))
    assert cells.std() > 0  # not all black: the galleries are in it
    assert "[Grid](compare_bags_b14_grid.png)" in (tmp_path / "compare_bags_b14.md").read_text()
    # judged by the shared GalleryJudge: tv with its floor, and sampling time against unguided
    assert saved["feature"] == "bags" and saved["dominance"] == "benign"
    floor = saved["baseline"]["tv_floor"]
    assert floor is not None and 0 <= floor <= 1
    for r in saved["methods"].values():
        assert {"malign_pct", "ci_pct", "tv", "tv_floor", "recall_ratio", "confident", "time_ratio"} <= set(r)
        assert 0 <= r["tv"] <= 1 and r["tv_floor"] == floor and r["time_ratio"] > 0
    assert rows["baseline"]["time_ratio"] == pytest.approx(1.0)
    assert all(0 <= run["tv"] <= 1 and len(run["class_shares"]) == 10 for rs in saved["runs"].values() for run in rs)
    table = (tmp_path / "compare_bags_b14.md").read_text()
    assert "| tv (floor) |" in table and f"({floor:.3f})" in table
    # rows saved before tv was measured still load, as "n/a"
    from rlhf.compare import markdown_table

    for r in saved["methods"].values():
        r.pop("tv"), r.pop("tv_floor")
    method_lines = [line for line in markdown_table(saved).splitlines() if line.startswith("| ") and "malign" not in line]
    assert len(method_lines) == len(METHODS) and all(line.split("|")[3].strip() == "n/a" for line in method_lines)


def test_distilling_steps_and_a_value_baseline_run_in_a_comparison(tmp_path, fixture_images, tiny_model):
    """The comparison's other two routes: RLHF's advantages from the reward's value of each x_t, and a distil
    that regresses the censored sampler's recorded steps."""
    bags = np.where(fixture_images["labels"] == 8)[0][:20]
    rest = np.where(fixture_images["labels"] != 8)[0][:100]
    idx = np.concatenate([bags, rest])
    pool = Pool(fixture_images["images"][idx], np.arange(len(idx)), {})
    cfg = CompareConfig(feature="bags", budget=14, seeds=1, n=4, steps=2, train_steps=2, members=2, epochs=1,
                        ddpo_images=4, ddpo_baseline="value", methods=("baseline", "rlhf", "distil"),
                        distil=DistilConfig(target="steps", images=6, steps=2, batch_size=4, drop=0.5))
    log = []
    result = run_compare(cfg, tiny_model, load_oracle(), pool, load_reference(), cache_dir=tmp_path / "cache",
                         log=log.append)
    assert list(result["methods"]) == ["baseline", "rlhf", "distil"]
    assert result["config"]["ddpo_baseline"] == "value" and result["config"]["distil"]["target"] == "steps"
    assert any("distil: 3 censored" in line for line in log)  # the reward left out half of the 6 trajectories


def test_bad_settings_are_refused_before_any_work(capsys):
    with pytest.raises(CensorError, match="unknown method"):
        CompareConfig(methods=("baseline", "magic"))
    with pytest.raises(CensorError, match="two D3PO groups"):
        CompareConfig(budget=10)
    assert rlhf_main(["compare", "--feature", "hats"]) == 2
    assert "unknown feature" in capsys.readouterr().err


def test_compare_refuses_to_run_once_per_accelerate_process(capsys, monkeypatch):
    """Under ``accelerate launch`` every process would run the whole benchmark and write its galleries."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for command in ("compare", "curve"):
        assert rlhf_main([command, "--feature", "bags", "--out", "/nonexistent/never-written"]) == 2
        err = capsys.readouterr().err
        assert f"`{command}` runs in one process" in err and "finetune" in err
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert rlhf_main(["compare", "--feature", "hats"]) == 2  # one process: it goes on (to the feature check)
    assert "unknown feature" in capsys.readouterr().err


def test_the_studio_tab_leaves_adapters_that_draw_a_censored_gallery(tmp_path, tiny_model, fixture_images):
    from censor.studio.core import Studio
    from censor.studio.rlhf import adapted_model, available_adapters, run_comparison

    bags = np.where(fixture_images["labels"] == 8)[0][:20]
    rest = np.where(fixture_images["labels"] != 8)[0][:100]
    idx = np.concatenate([bags, rest])
    studio = Studio(model=tiny_model, data_dir=tmp_path / "data", pool=Pool(fixture_images["images"][idx],
                                                                             np.arange(len(idx)), {}))
    sid = studio.open_session(None)
    with pytest.raises(CensorError, match="no d3po adapter"):
        adapted_model(studio, sid, "d3po")
    with pytest.raises(CensorError, match="budget must be between"):
        run_comparison(studio, sid, "bags", ["d3po"], 5000, 1, 20)
    seen = []
    r = run_comparison(studio, sid, "bags", ["baseline", "d3po"], 14, 1, 20, progress=seen.append)
    assert "| d3po |" in r["table"] and r["plot"].is_file() and r["grid"].is_file()
    assert r["curve"] is not None and r["curve"].suffix == ".png"  # bags: a curve with the CLI defaults is published
    assert "- **d3po**: " in r["table"] and "labels" in r["table"].split("- **d3po**: ")[1]  # the tab's verdict
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert available_adapters(studio, sid) == ["d3po"]

    tuned = adapted_model(studio, sid, "d3po")
    assert tuned.unet is not studio.model.unet  # the shared model is never modified
    assert not any("lora" in k for k in studio.model.unet.state_dict())
    g = studio.censored_gallery(sid, "time", 0.0, 0, 0, 5, 0, 4, tuned=("d3po", tuned))  # no reward needed at ω = 0
    assert g["settings"]["adapter"] == "d3po" and g["censored"].shape == (4, 28, 28)
    with pytest.raises(CensorError, match="cannot be bundled"):
        studio.export_gallery(sid, g)
    # a distil adapter that learned the sampler's 20 steps warns when drawn with other steps
    from censor.studio.rlhf import adapter_steps_note
    from rlhf.adapters import save_adapter

    folder = studio.session_folder(sid) / "compare" / "adapters"
    assert read_json(folder / "d3po" / "adapter.json")["config"]["steps"] == 20  # what the tab judged it at
    save_adapter(tuned.unet, folder / "distil", dict(method="distil", steps=20, distil_target="steps"))
    note = adapter_steps_note(studio, sid, "distil", 30)
    assert "learned the censored sampler's 20 steps" in note and "drawn with 30" in note
    assert adapter_steps_note(studio, sid, "distil", 20) is None and adapter_steps_note(studio, sid, "d3po", 30) is None
    save_adapter(tuned.unet, folder / "distil", dict(method="distil", steps=20, distil_target="images"))
    assert adapter_steps_note(studio, sid, "distil", 30) is None  # images: no timesteps were learned


def test_the_table_explains_its_columns_and_warns_of_a_baseline_without_the_feature():
    from rlhf.compare import markdown_table

    row = dict(malign_pct=0.0, ci_pct=[0.0, 16.1], n=20, tv=0.1, tv_floor=0.2, recall_ratio=1.0, confident=0.9,
               labels=0, train_s=0, sample_s_per_image=0.1)
    result = dict(machine="m", config=dict(feature="bags"), baseline=dict(malign=0, n=20), methods=dict(baseline=row))
    table = markdown_table(result)
    assert "malign %: the oracle's share of images showing the feature, with its 95% Wilson interval" in table
    assert table.rstrip().endswith("⚠ the baseline holds 0 bags images in 20: no method's figure can show a drop; "
                                   "raise the gallery images per method")
    enough = markdown_table(dict(result, baseline=dict(malign=5, n=20)))
    assert "⚠" not in enough and "recall vs baseline: how much" in enough


def test_clicks_on_images_that_share_x_T_become_d3po_preference_pairs(tmp_path, tiny_model, fixture_images):
    from censor.studio.core import Studio
    from censor.studio.rlhf import label_preference_pairs, preference_readout

    images = fixture_images["images"][:30]
    studio = Studio(model=tiny_model, data_dir=tmp_path / "data", pool=Pool(images, np.arange(30), {"seed": 0}))
    sid = studio.open_session(None)
    assert preference_readout(studio, "x" * 24).startswith("0 preference pairs")
    first = [it["id"] for it in studio.page(sid, 0)[:4]]  # 25 viewed pool images, one seed each: no pair
    seed_of = {it["item"]: it["seed"] for it in studio.store.items(sid)}
    a, b, c, d = (seed_of[i] for i in first)
    studio.click(sid, first[0])  # the pool's image of seed a: malign
    assert label_preference_pairs(studio, sid) == []
    assert "seed 0 (the pool's)" in preference_readout(studio, sid)
    studio.send_to_labelling(sid, images[:4], [a, b, c, d])  # a gallery drawn from the same x_T
    assert label_preference_pairs(studio, sid) == []  # not viewed yet: not labelled
    second = studio.page(sid, studio.first_page_of_round(sid, 2))  # pool images 25-29, then the gallery
    again = {it["seed"]: it["item"] for it in studio.store.items(sid, round_=2)}
    assert set(again.values()) <= {it["id"] for it in second}
    studio.click(sid, again[c])  # malign: the pool's (benign) image of seed c is preferred to it
    for _ in range(2):
        studio.click(sid, again[d])  # unsure: left out, as in training
    assert sorted(label_preference_pairs(studio, sid)) == sorted([(again[a], first[0]), (first[2], again[c])])
    assert preference_readout(studio, sid).startswith("2 preference pairs from your labels")


def test_the_plot_takes_a_zero_row(tmp_path):
    """At 0% malign the Wilson lower bound is a rounding error above the point (8.7e-17, measured)."""
    from rlhf.compare import plot

    row = dict(labels=100.0, malign_pct=0.0, ci_pct=[8.673617379884035e-17, 1.26])
    plot(dict(config=dict(feature="trousers"), methods={"distil": row}), tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_a_curve_judges_ddpo_after_each_chosen_epoch_at_its_cost(tmp_path, fixture_images, tiny_model):
    from censor.rewards.ensemble import model_fingerprint
    from rlhf.curves import CurveConfig, markdown_curve, run_curve

    bags = np.where(fixture_images["labels"] == 8)[0][:20]
    rest = np.where(fixture_images["labels"] != 8)[0][:100]
    idx = np.concatenate([bags, rest])
    pool = Pool(fixture_images["images"][idx], np.arange(len(idx)), {})
    cfg = CurveConfig(CompareConfig(feature="bags", budget=14, seeds=1, n=6, steps=2, train_steps=2, members=2,
                                    ddpo_images=4, full=True), at=(2, 1))
    before = model_fingerprint(tiny_model.unet)
    result = run_curve(cfg, tiny_model, load_oracle(), pool, load_reference(), out_dir=tmp_path,
                       cache_dir=tmp_path / "cache", log=lambda *_: None)
    assert model_fingerprint(tiny_model.unet) == before  # fine-tuning worked on a copy
    rows = result["methods"]
    assert list(rows) == ["baseline", "censored", "rlhf@1", "rlhf@2"]
    # a later point cost more fine-tuning, and every point paid the reward's seconds first
    assert rows["censored"]["train_s"] < rows["rlhf@1"]["train_s"] < rows["rlhf@2"]["train_s"]
    assert all(r["n"] == 6 and r["labels"] == (0 if k == "baseline" else 14) for k, r in rows.items())
    table = markdown_curve(result)
    assert "| rlhf@2 |" in table and "- **rlhf@1**: " in table
    assert (tmp_path / "curve_bags_b14.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "curve_bags_b14_grid.png").read_bytes()[:4] == b"\x89PNG"
    assert "top to bottom baseline, censored, rlhf@1, rlhf@2" in (tmp_path / "curve_bags_b14.md").read_text()
    with pytest.raises(CensorError, match="positive"):
        CurveConfig(at=(0, 3))


def test_a_published_curve_is_shown_only_for_the_cli_defaults(tmp_path):
    from dataclasses import asdict

    from censor.studio.rlhf import published_curve

    def write(folder, **change):
        run = dict(asdict(CompareConfig()), feature="trousers", **change)
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "curve_trousers_b100.json").write_text(json.dumps(dict(config=dict(compare=run))))
        (tmp_path / folder / "curve_trousers_b100.png").write_bytes(b"\x89PNG")

    write("0_value_baseline", ddpo_baseline="value")
    write("a_other_lr", lr=1e-3)
    assert published_curve("trousers", tmp_path) is None  # another learning rate is not what the tab runs
    (tmp_path / "b_broken").mkdir()
    (tmp_path / "b_broken" / "curve_trousers_b100.json").write_text("{not json")
    write("c_defaults")
    assert published_curve("trousers", tmp_path) == tmp_path / "c_defaults" / "curve_trousers_b100.png"
    run = json.loads((tmp_path / "c_defaults" / "curve_trousers_b100.json").read_text())
    run["config"]["compare"].pop("ddpo_baseline")  # a curve from before the value baseline existed: the batch mean
    (tmp_path / "c_defaults" / "curve_trousers_b100.json").write_text(json.dumps(run))
    assert published_curve("trousers", tmp_path) == tmp_path / "c_defaults" / "curve_trousers_b100.png"
    assert published_curve("bags", tmp_path) is None


def test_the_cli_reads_its_defaults_from_the_config():
    from rlhf.__main__ import build_parser

    p, cfg = build_parser(), CompareConfig()
    for argv in (["compare"], ["curve"]):
        a = p.parse_args(argv)
        assert (a.full, a.kl_beta, a.lr, a.ddpo_images) == (cfg.full, cfg.kl_beta, cfg.lr, cfg.ddpo_images), argv
    assert p.parse_args(["compare", "--lora"]).full is False and p.parse_args(["curve", "--lora"]).full is False
    # each command keeps its own defaults (a curve's one seed and folder do not leak into compare's)
    assert (p.parse_args(["compare"]).seeds, p.parse_args(["compare"]).out) == (3, "docs/bench")
    assert (p.parse_args(["curve"]).seeds, p.parse_args(["curve"]).out) == (1, "docs/bench/rlhf_curves")
    ddpo = cfg.ddpo(seed=3, epochs=7)
    assert (ddpo.full, ddpo.epochs, ddpo.images, ddpo.batch_size, ddpo.seed) == (cfg.full, 7, cfg.ddpo_images,
                                                                                 cfg.ddpo_images // 2, 3)
    assert cfg.d3po(seed=0).groups == cfg.budget // cfg.d3po_group_size and cfg.d3po(seed=0).lr == cfg.d3po_lr
    assert build_parser().parse_args(["compare"]).d3po_lr == cfg.d3po_lr
    a = p.parse_args(["compare"])
    assert (a.distil_target, a.ddpo_baseline) == (cfg.distil.target, cfg.ddpo_baseline)
    assert p.parse_args(["finetune", "--reward", "r", "--out", "o"]).baseline == DDPOConfig().baseline
