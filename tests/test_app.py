"""The studio: a labelling session end to end through the Studio API, and the app over HTTP."""

import numpy as np
import pytest

from censor.core.errors import CensorError
from censor.labels.pool import Pool
from censor.studio.common import PAGE_SIZE
from censor.studio.core import Studio


@pytest.fixture
def studio(tmp_path, tiny_model, fixture_images):
    pool = Pool(fixture_images["images"][:60], np.arange(60), {})
    return Studio(model=tiny_model, data_dir=tmp_path / "data", pool=pool)


def test_fresh_gallery_is_deterministic(studio):
    a = studio.fresh_gallery(3, 2, seed=1)
    b = studio.fresh_gallery(3, 2, seed=1)
    assert len(a) == 3 and a[0].size == (112, 112)
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]
    with pytest.raises(CensorError, match="1 to 256"):
        studio.fresh_gallery(0, 2, 1)


def test_session_label_train_censor_and_next_round(studio):
    sid = studio.open_session(None, "mark bags")
    assert studio.open_session(sid) == sid  # a reload resumes
    assert studio.open_session("x" * 24) != sid  # an unknown id starts a new session
    first = studio.page(sid, 0)
    assert len(first) == PAGE_SIZE and first[0]["src"].startswith("data:image/png;base64,")
    assert studio.click(sid, first[0]["id"]) == "malign"
    assert studio.click(sid, first[1]["id"]) == "malign"
    assert studio.click(sid, first[1]["id"]) == "unsure"
    assert studio.counts_text(sid) == "viewed 25 · malign 1 · target 100 (benign 23 · unsure 1)"
    assert studio.suggest_method(sid)[0] == "ensemble"
    info = studio.train(sid, "ensemble", "half-unet", members=2, iterations=10, alpha=0.5)
    assert info["labels"] == 24 and info["malign_labels"] == 1 and info["held_out_accuracy"] is None
    r = studio.censored_gallery(sid, "time", 1.0, 1, 1, steps=5, seed=0, count=4, feature="bags")
    assert r["baseline"].shape == r["censored"].shape == (4, 28, 28)
    assert set(r["reward_malign"]) == {"baseline", "censored"} and r["oracle"]["censored"]["n"] == 4
    rnd = studio.send_to_labelling(sid, r["censored"], r["seeds"])
    assert rnd == 2 and studio.store.counts(sid).total == 64
    with pytest.raises(CensorError, match="weight must be between"):
        studio.censored_gallery(sid, "time", 1e9, 0, 0, steps=5, seed=0, count=4)
    with pytest.raises(CensorError, match="iterations must be between"):
        studio.train(sid, "ensemble", "half-unet", members=2, iterations=10**7, alpha=0.5)


def test_censoring_needs_a_reward_first(studio):
    sid = studio.open_session(None)
    with pytest.raises(CensorError, match="train a reward first"):
        studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=0, count=2)


def test_app_serves_a_gallery(studio):
    from gradio_client import Client

    from app import build_app

    demo = build_app(studio)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        result = client.predict(4, 5, 7, api_name="/generate")
        assert len(result) == 4
    finally:
        demo.close()


def test_censored_gallery_reports_drift_and_picks_the_strength(studio):
    sid = studio.open_session(None, "mark bags")
    first = studio.page(sid, 0)
    for item in first[:4]:
        studio.click(sid, item["id"])
    studio.train(sid, "ensemble", "half-unet", members=2, iterations=10, alpha=0.5)
    r = studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=0, count=6, auto=True)
    a = r["settings"]["auto"]
    assert a["weight"] == r["settings"]["weight"] and a["trace"] and a["reason"]
    assert [t["weight"] for t in a["trace"]] == sorted(t["weight"] for t in a["trace"])  # climbed in order
    for side in ("baseline", "censored"):
        d = r["drift"][side]
        assert 0 <= d["tv"] <= 1 and d["n"] == 6 and d["drifted"] == (d["tv"] > d["chance"])
    # every guidance field is stored, and the bundle settings rebuild the same guidance
    from censor.studio.manifest import guidance_from_settings

    g = guidance_from_settings(r["settings"])
    assert g.weight == r["settings"]["weight"] and g.combine == r["settings"]["combine"]
    manual = studio.censored_gallery(sid, "time", 2.5, 0, 0, steps=5, seed=0, count=2)
    assert manual["settings"]["weight"] == 2.5 and manual["settings"]["auto"] is None


def test_old_bundle_settings_keep_their_meaning():
    from censor.studio.manifest import check_guidance_extras, guidance_from_settings

    old = dict(guidance="time", weight=4.0, backward=0, backward_lr=0.01, recurrence=0, steps=30, seed=0, count=8)
    g = guidance_from_settings(old)
    assert g.combine == "sum" and g.threshold is None  # what galleries were sampled with before the fields existed
    for bad in (dict(combine="median"), dict(threshold=2.0), dict(window=[5, 1]), dict(particles=True),
                dict(every=0), dict(max_ratio="x"), dict(calibrate=1), dict(hinge_quantile=0.33)):
        with pytest.raises(CensorError, match="manifest.json"):
            check_guidance_extras(bad)


def test_sliders_start_at_the_settings_defaults_within_the_server_bounds(studio):
    """Every slider's bounds and starting value come from where the server checks and defaults live."""
    from app import build_app
    from censor.core.settings import COUNT, DEFAULT_GUIDANCE, DEFAULT_REWARD, STEPS
    from censor.studio.common import LIMITS
    from censor.studio.galleries import STRICT_P_RANGE
    from censor.studio.rlhf import COMPARE_DEFAULTS, COMPARE_LIMITS

    demo = build_app(studio)
    sliders = sorted((c["props"]["label"], c["props"]["minimum"], c["props"]["maximum"], c["props"]["value"])
                     for c in demo.config["components"] if c["type"] == "slider")
    lim = lambda name, value: (*LIMITS[name], value)  # noqa: E731
    expected = {
        "ensemble size K": lim("members", DEFAULT_REWARD.members),
        "iterations": lim("iterations", DEFAULT_REWARD.iterations),
        "α (benign class weight)": lim("alpha", DEFAULT_REWARD.alpha),
        "weight ω (used when automatic strength is off)": lim("weight", DEFAULT_GUIDANCE.weight),
        "backward steps": lim("backward", DEFAULT_GUIDANCE.backward_steps),
        "recurrence": lim("recurrence", DEFAULT_GUIDANCE.recurrence), "steps": lim("steps", STEPS),
        "DDIM steps": lim("steps", STEPS),
        "labels per method": (*COMPARE_LIMITS["budget"], COMPARE_DEFAULTS["budget"]),
        "labelling seeds": (*COMPARE_LIMITS["seeds"], COMPARE_DEFAULTS["seeds"]),
        "gallery images per method": (*COMPARE_LIMITS["n"], COMPARE_DEFAULTS["n"]),
    }
    expected = [(label, *v) for label, v in expected.items()] + [("images", *LIMITS["count"], COUNT)] * 2  # both tabs
    assert sorted(expected) == [s for s in sliders if not s[0].startswith("strict")]
    strict = [s for s in sliders if s[0].startswith("strict")]
    assert [s[1:3] for s in strict] == [STRICT_P_RANGE] and 0 <= STRICT_P_RANGE[0] < STRICT_P_RANGE[1] < 1
    for name, (lo, hi) in COMPARE_LIMITS.items():
        assert lo <= COMPARE_DEFAULTS[name] <= hi
    # the comparison takes minutes: its own queue slot, one run at a time, so labelling never waits on it
    fns = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    assert [(f.concurrency_id, f.concurrency_limit) for f in fns if f.name == "on_compare"] == [("compare", 1)]


def test_a_clean_image_reward_gets_universal_guidance_and_the_readout_says_so(studio):
    from gradio_client import Client

    from app import build_app

    sid = studio.open_session(None)
    for item in studio.page(sid, 0)[:3]:
        studio.click(sid, item["id"])
    studio.train(sid, "single", "resnet18", members=1, iterations=10, alpha=0.5)
    r = studio.censored_gallery(sid, "time", 1.0, 0, 0, steps=5, seed=0, count=2)
    assert r["settings"]["guidance"] == "universal"  # what the bundle records, so it reproduces
    assert r["guidance_note"] == "a resnet18 reward scores clean images: universal guidance instead of time"
    assert studio.censored_gallery(sid, "universal", 1.0, 0, 0, steps=5, seed=0, count=2)["guidance_note"] is None
    demo = build_app(studio)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        client.predict(sid, api_name="/on_load")
        *_, note = client.predict("time", 1.0, 0, 0, 5, 0, 2, "(none)", "base model", api_name="/on_censor")
        assert f"Guidance: {r['guidance_note']}." in note
    finally:
        demo.close()


def test_a_page_marked_at_once_left_out_and_undone(studio):
    """Issue 20: shown images count as benign unless marked; a page not really looked at can be left
    out (its unmarked images become unsure, out of training) and any mark undone."""
    sid = studio.open_session(None)
    first = studio.page(sid, 0)
    studio.click(sid, first[0]["id"])
    _, labels = studio.store.training_data(sid)
    assert len(labels) == PAGE_SIZE and (labels == 0).sum() == 1  # 24 implicit benign labels
    assert studio.mark_page(sid, 0, "leave out") == PAGE_SIZE - 1
    _, labels = studio.store.training_data(sid)
    assert list(labels) == [0]  # only the explicit mark is left to train on
    assert studio.undo(sid) == PAGE_SIZE - 1
    assert len(studio.store.training_data(sid)[1]) == PAGE_SIZE
    assert studio.mark_page(sid, 0, "malign") == PAGE_SIZE - 1
    assert studio.store.counts(sid).malign == PAGE_SIZE
    assert studio.undo(sid) == PAGE_SIZE - 1 and studio.undo(sid) == 1  # then the first click
    assert studio.store.counts(sid).malign == 0 and studio.undo(sid) == 0
    with pytest.raises(CensorError, match="'malign' or 'leave out'"):
        studio.mark_page(sid, 0, "benign")


def test_the_warm_up_leaves_the_default_baseline_ready(studio, monkeypatch):
    """Issue 20: the baseline was re-sampled on every render. The warm-up (started when a page is first
    shown) samples the default one while a person labels; the first default render then reuses it."""
    from censor.core.settings import COUNT, STEPS

    g = studio.galleries
    studio.warm_up(wait=True)
    assert g.has_baseline(studio.model, 0, COUNT, STEPS)
    first = studio._warm
    studio.warm_up(wait=True)  # once per studio: a second call starts nothing new
    assert studio._warm is first
    assert g.has_baseline(studio.model, 0, COUNT, STEPS) and not g.has_baseline(studio.model, 0, COUNT, STEPS - 1)
