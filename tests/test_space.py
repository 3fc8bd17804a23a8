"""Issue 19, the studio on a shared public Space: a restart keeps every browser's session, one client
cannot take the queue, shared links cannot carry Markdown or HTML, Gradio's cache is swept.

The browser half (a kill -9 and restart under a real browser, a planted phishing link) is in
tests/test_browser.py; here the Studio API and the app in-process, with the tiny model.
"""

import json
import stat
import threading
import time
import zipfile

import numpy as np
import pytest
import requests

from censor.core.errors import CensorError
from censor.labels.pool import Pool
from censor.studio.common import DELETE_CACHE, JOB_TIME_LIMIT_S, SECRET_ENV, SECRET_FILE, inert
from censor.studio.core import Studio
from censor.studio.space import JobGate, browser_secret

PHISH = "0\n\n# [Your session expired: log in again](https://phish.example/login)\n<img src=x onerror=alert(1)>"


@pytest.fixture
def studio(tmp_path, tiny_model, fixture_images):
    pool = Pool(fixture_images["images"][:40], np.arange(40), {})
    return Studio(model=tiny_model, data_dir=tmp_path / "data", pool=pool)


# ---- 1. a restart keeps the browser's session: a key that outlives the process -----------------

def test_browser_secret_is_made_once_private_and_kept(tmp_path):
    first = browser_secret(tmp_path / "data", environ={})
    path = tmp_path / "data" / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 16
    assert browser_secret(tmp_path / "data", environ={}) == first  # the next launch reads the same key
    assert [p.name for p in path.parent.iterdir()] == [SECRET_FILE]  # no temporary file left
    assert browser_secret(tmp_path / "other", environ={SECRET_ENV: "s" * 32}) == "s" * 32  # a Space's secret wins
    with pytest.raises(CensorError, match=f"{SECRET_ENV} must hold at least 16"):
        browser_secret(tmp_path / "other", environ={SECRET_ENV: "short"})


def test_two_launches_on_one_data_folder_share_the_browser_key(studio):
    from app import build_app

    keys = []
    for _ in range(2):  # as a restart builds the app again
        demo = build_app(studio)
        keys.append(next(b.secret for b in demo.blocks.values() if type(b).__name__ == "BrowserState"))
    assert keys[0] == keys[1] == (studio.data_dir / SECRET_FILE).read_text().strip()


# ---- 3 (part). Gradio's cache is swept ------------------------------------------------------------

def test_gradio_cache_is_swept(studio):
    import app

    assert DELETE_CACHE[0] <= 3600 and DELETE_CACHE[1] <= 86400
    for built in (app.build_app(studio), app.demo):
        assert built.delete_cache == DELETE_CACHE


# ---- 4. one client cannot take the queue -----------------------------------------------------------

HEAVY = ("on_train", "on_censor", "on_compare", "generate", "on_bundle_upload")


def test_one_client_flooding_heavy_jobs_is_refused_and_others_still_answer(studio):
    """One browser posts 40 /generate jobs as fast as it can (as in issue 19, where they filled the
    queue in 0.44 s and the next person's click got HTTP 503). Now only its first is queued; the
    rest are refused at the door, and another browser's label click answers at once."""
    from gradio_client import Client

    from app import QUEUE, build_app

    release, started = threading.Event(), threading.Event()

    def slow(n, steps, seed, progress=None):
        started.set()
        release.wait(60)
        return []

    studio.fresh_gallery = slow
    demo = build_app(studio)
    demo.queue(**QUEUE).launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        url = demo.local_url.rstrip("/")
        fn = next(d["id"] for d in demo.config["dependencies"] if d["api_name"] == "generate")
        t0 = time.time()
        answers = [requests.post(f"{url}/gradio_api/queue/join", timeout=30,
                                 json=dict(data=[2, 5, 0], fn_index=fn, session_hash="flood")) for _ in range(40)]
        flood_s = time.time() - t0
        codes = [a.status_code for a in answers]
        assert codes[0] == 200 and codes[1:] == [400] * 39, codes  # before: 33 queued, then 503
        assert "already have a job queued or running" in answers[1].json()["detail"]
        assert started.wait(30)  # its one job runs and holds its place until it ends

        other = Client(url, verbose=False)
        t0 = time.time()
        sid = other.predict(None, api_name="/on_load")[0]
        grid = next(c["id"] for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "label-grid")
        click = next(d["id"] for d in demo.config["dependencies"] if any(list(t) == [grid, "click"] for t in d["targets"]))
        ev = requests.post(f"{url}/gradio_api/queue/join", timeout=10,
                           json=dict(data=[None, None], event_data={"item": 0}, fn_index=click,
                                     session_hash=other.session_hash)).json()["event_id"]
        with requests.get(f"{url}/gradio_api/queue/data", params={"session_hash": other.session_hash},
                          stream=True, timeout=60) as stream:
            for line in stream.iter_lines():
                msg = json.loads(line[5:]) if line.startswith(b"data:") else {}
                if msg.get("msg") == "process_completed" and msg.get("event_id") == ev:
                    assert msg["success"], msg
                    break
        wait_s = time.time() - t0
        print(f"\nflood of 32 joins in {flood_s:.2f} s; another browser's load + click answered in {wait_s:.2f} s")
        assert wait_s < 10 and studio.store.counts(sid).malign == 1
        # a second job from the flooding browser is refused while its first still runs
        again = requests.post(f"{url}/gradio_api/queue/join", timeout=30,
                              json=dict(data=[2, 5, 0], fn_index=fn, session_hash="flood"))
        assert again.status_code == 400
    finally:
        release.set()
        demo.close()


def test_every_heavy_event_is_gated_and_never_shares_a_slot_with_clicks(studio):
    from app import build_app

    demo = build_app(studio)
    fns = list(demo.fns.values())
    heavy = [f for f in fns if f.name in HEAVY]
    assert sorted(f.name for f in heavy) == sorted(HEAVY)
    assert all(f.validator is not None and f.validator.__name__ == "one_job_each" for f in heavy)
    assert all(f.validator is None for f in fns if f.name not in HEAVY)  # clicks are never refused by the gate
    light_slots = {f.concurrency_id for f in fns if f.name not in HEAVY}
    assert not light_slots & {f.concurrency_id for f in heavy}
    assert demo.api_open is False  # nobody skips the queue (and its check) by a direct POST


def test_a_heavy_job_stops_at_its_time_limit(studio):
    now = [0.0]
    gate = JobGate(time_limit=60, clock=lambda: now[0])
    assert JobGate().time_limit == JOB_TIME_LIMIT_S <= 3600
    seen = []
    with pytest.raises(CensorError, match="ran past the time limit of 1 minutes"):
        with gate.job("a", seen.append) as tick:
            tick(0.5)
            now[0] = 61
            tick(0.6)
    assert seen == [0.5]
    with gate.job("a") as tick:  # its place was given back: the next job runs
        tick(1.0)
    # through the real sampler: the deadline is checked at every denoising step
    gate = JobGate(time_limit=0)
    with pytest.raises(CensorError, match="time limit"):
        with gate.job("b") as tick:
            studio.fresh_gallery(2, 5, 0, progress=tick)


def test_the_apps_heavy_jobs_run_under_the_gates_time_limit(studio):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from app import QUEUE, build_app

    demo = build_app(studio, gate=JobGate(time_limit=0))
    demo.queue(**QUEUE).launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        with pytest.raises(AppError, match="ran past the time limit"):
            client.predict(2, 5, 0, api_name="/generate")
        sid = client.predict(None, api_name="/on_load")[0]
        for it in studio.page(sid, 0)[:2]:
            studio.click(sid, it["id"])
        with pytest.raises(AppError, match="ran past the time limit"):
            client.predict("ensemble", "half-unet", 1, 10, 0.5, api_name="/on_train")
    finally:
        demo.close()


def test_the_gate_counts_queued_and_running_jobs_per_client():
    now = [0.0]
    gate = JobGate(per_client=1, queued_expiry=120, clock=lambda: now[0])
    gate.reserve("a")
    with pytest.raises(CensorError, match="already have a job"):
        gate.reserve("a")
    gate.reserve("b")  # another client is not affected
    with gate.job("a"):
        with pytest.raises(CensorError, match="already have a job"):
            gate.reserve("a")
        with pytest.raises(CensorError, match="already have a job"):
            with gate.job("a"):  # a job that skipped the queue's check is checked when it starts
                pass
    gate.reserve("a")  # done: a new one may queue
    now[0] = 500  # a queued job whose browser left (Gradio dropped it) stops counting
    gate.reserve("a")


# ---- 7. shared links carry no Markdown or HTML, and show only what reproduced -------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_model, fixture_images):
    """A studio with one rendered gallery (3 images) and the entries of its bundle (made once)."""
    tmp = tmp_path_factory.mktemp("space")
    studio = Studio(model=tiny_model, data_dir=tmp / "data", pool=Pool(fixture_images["images"][:40], np.arange(40), {}))
    sid = studio.open_session(None)
    for it in studio.page(sid, 0)[:3]:
        studio.click(sid, it["id"])
    studio.train(sid, "ensemble", "half-unet", members=2, iterations=10, alpha=0.5)
    result = studio.censored_gallery(sid, "time", 2.0, 0, 0, steps=5, seed=3, count=3)
    _, path = studio.export_gallery(sid, result)
    (studio.store.root / "bundles").mkdir()
    z = zipfile.ZipFile(path)
    return studio, result, {name: z.read(name) for name in z.namelist()}


def _zip(path, entries: dict):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def _with(entries: dict, **changes) -> dict:
    m = json.loads(entries["manifest.json"])
    for key, value in changes.items():
        if key.startswith("settings_"):
            m["settings"][key[len("settings_"):]] = value
        else:
            m[key] = value
    return {**entries, "manifest.json": json.dumps(m)}


def _no_markup(text: str) -> None:
    for bad in ("phish.example/", "](", "<img", "\n#"):
        assert bad not in text, text


@pytest.mark.parametrize("change, message", [
    (dict(settings_seed=PHISH), "seed must be between 0 and 4294967295"),  # the link that showed a heading
    (dict(settings_seed=3.5), "seed must be a whole number"),
    (dict(settings_seed=True), "seed must be between"),
    (dict(settings_steps=5.0), "steps must be a whole number"),
    (dict(settings_guidance=PHISH), "settings need a guidance"),
    (dict(settings_combine=PHISH), "combine must be one of"),
    (dict(settings_title=PHISH), "settings has an unknown field"),
    (dict(settings_method=PHISH), "method must be 'ddim'"),
    (dict(settings_eta=0.5), "eta must be 0"),
    (dict(settings_adapter=PHISH), "adapter cannot be reproduced"),
    (dict(settings_auto={"weight": 2.0, "reason": "x" * 5000, "trace": []}), "at most 200 characters"),
    (dict(settings_strict={"threshold": PHISH, "source": "auto", "requested": 3}), "strict threshold must be"),
    (dict(note=PHISH), "unknown field"),
    (dict(model=["a"]), "model must be text"),
    (dict(conditioning={"kind": PHISH}), "conditioning must be null"),
    (dict(labels={"malign": PHISH}), "labels must map"),
    (dict(reward_info={"kind": "x" * 5000}), "at most 200 characters"),
    (dict(reward_info={"deep": [[[[[[1]]]]]]}), "nested too deep"),
    (dict(versions={"torch": 2}), "versions must map"),
])
def test_every_manifest_field_is_typed_and_refusals_never_echo_markup(bundle, tmp_path, change, message):
    studio, _, entries = bundle
    before = sorted((studio.store.root / "bundles").iterdir())
    with pytest.raises(CensorError, match=message) as e:
        studio.import_gallery(_zip(tmp_path / "b.zip", _with(entries, **change)))
    _no_markup(str(e.value))
    assert sorted((studio.store.root / "bundles").iterdir()) == before  # a refused bundle leaves nothing


def _plant(studio, entries: dict, token: str, verified=None):
    """A gallery folder as an import made before these checks left it (no record of what reproduced)."""
    folder = studio.store.root / "bundles" / token
    folder.mkdir(parents=True)
    for name, data in entries.items():
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    if verified is not None:
        (folder / "reproduced.json").write_text(json.dumps(dict(identical=verified)))
    return token


def test_a_stored_phishing_link_is_refused_and_shown_inert(bundle):
    studio, _, entries = bundle
    token = _plant(studio, _with(entries, settings_seed=PHISH), "phishlink01")
    with pytest.raises(CensorError) as e:
        studio.open_permalink(token)
    _no_markup(str(e.value))
    _no_markup(inert(PHISH))
    assert inert("[a](https://x.y)") == "\\[a\\]\\(https\\:\\/\\/x\\.y\\)" and inert("<b>") == "&lt;b&gt;"


def test_a_link_shows_only_the_uploaded_images_that_reproduced(bundle, tmp_path):
    studio, result, entries = bundle
    other = entries["censored_002.png"]
    tampered = {**entries, "censored_001.png": other}  # the uploader's image 1 is not what its seed gives
    r = studio.import_gallery(_zip(tmp_path / "t.zip", tampered))
    assert r["identical"] == 2 and r["same"] == [True, False, True]
    view = studio.open_permalink(r["token"])
    np.testing.assert_array_equal(view["censored"], result["censored"][[0, 2]])
    assert "2 of its 3 images reproduced exactly on this server; only those are shown" in \
        studio.sharing.permalink_text(r["token"], view)
    # nothing reproduced (or a folder from before the record existed): nothing shown, and it says so
    for token, verified in (("norecord01", None), ("noneagain01", [False, False, False])):
        view = studio.open_permalink(_plant(studio, entries, token, verified))
        assert len(view["censored"]) == 0
        assert "None of its 3 images reproduced on this server, so none is shown" in \
            studio.sharing.permalink_text(token, view)


def test_a_click_on_an_unknown_session_or_a_bad_item_gets_a_one_line_message(studio):
    """A click the server cannot apply (a session it never had, an item that is not a number) answers
    with a message the page shows, not Gradio's generic error."""
    from test_reliability import completions, join

    from app import QUEUE, build_app

    demo = build_app(studio)
    demo.queue(**QUEUE).launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        url = demo.local_url.rstrip("/")
        grid = next(c["id"] for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "label-grid")
        click = next(d["id"] for d in demo.config["dependencies"] if any(list(t) == [grid, "click"] for t in d["targets"]))
        errors = [next(completions(url, f"c{k}", [join(url, f"c{k}", click, [sid, 0], {"item": item})]))
                  for k, (sid, item) in enumerate([("Z" * 24, 0), (None, "x; drop table")])]
    finally:
        demo.close()
    assert [m["success"] for m in errors] == [False, False]
    texts = [m["output"].get("error") or "" for m in errors]
    assert "reload the page" in texts[0] and "reload the page" in texts[1], texts
    assert all("\n" not in t and "Traceback" not in t and str(studio.data_dir) not in t for t in texts)
