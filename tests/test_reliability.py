"""Issue 7, a public studio: no lost labels, isolated users, bounded work, hostile inputs refused.

The first two tests run the real ``python app.py`` (no browser: gradio_client, plus plain HTTP to the
Gradio queue for label clicks, whose event data gradio_client cannot send). The rest drive the
Studio API, or the app in-process, with the tiny model. Cases that other files already prove are
listed in docs/reliability.md instead of being repeated here.
"""

import io
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from conftest import ROOT
from PIL import Image
from safetensors.torch import load_file, save_file

from censor.core.errors import CensorError
from censor.gallery import bundles
from censor.gallery.bundles import safe_extract
from censor.labels.pool import Pool
from censor.labels.sessions import BENIGN, MALIGN, SessionStore
from censor.rewards.ensemble import load_reward
from censor.rewards.taps import eps_and_taps, unet_taps
from censor.sampling.loop import seeds_for
from censor.studio.common import LIMITS, MAX_TRAIN_LABELS
from censor.studio.core import Studio

NAN, INF = float("nan"), float("inf")


# ---- the real app over HTTP ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``python app.py`` on a data directory, as a Space runs it (its own process, its own queue)."""

    def __init__(self, data_dir: Path):
        port = _free_port()
        env = dict(os.environ, CENSOR_DATA_DIR=str(data_dir), GRADIO_SERVER_PORT=str(port),
                   GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
        self.log = data_dir.parent / f"app_{port}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        started = time.time()
        while time.time() - started < 90:
            if self.proc.poll() is not None:
                raise RuntimeError("app.py exited:\n" + self.log.read_text())
            try:
                self.config = requests.get(self.url + "/config", timeout=2).json()
                break
            except (requests.RequestException, ValueError):
                time.sleep(0.3)
        else:
            self.kill()
            raise RuntimeError("app.py did not start in 90 s:\n" + self.log.read_text())

    def fn_index(self, elem_id: str, event: str) -> int:
        """The queue index of an event the page triggers (label clicks have no public API name)."""
        comp = next(c["id"] for c in self.config["components"] if c.get("props", {}).get("elem_id") == elem_id)
        return next(d["id"] for d in self.config["dependencies"] if [comp, event] in d["targets"])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no shutdown hooks, no flushing
        self.proc.wait(10)


def join(url: str, session_hash: str, fn_index: int, data: list, event_data=None) -> str:
    """Put one event in the Gradio queue exactly as the page does; returns its event id."""
    r = requests.post(f"{url}/gradio_api/queue/join", timeout=10,
                      json=dict(data=data, event_data=event_data, fn_index=fn_index, session_hash=session_hash))
    r.raise_for_status()
    return r.json()["event_id"]


def completions(url: str, session_hash: str, event_ids):
    """Yield each event's ``process_completed`` message as the server sends it (its acknowledgement)."""
    pending = set(event_ids)
    with requests.get(f"{url}/gradio_api/queue/data", params={"session_hash": session_hash}, stream=True,
                      timeout=120) as stream:
        for line in stream.iter_lines():
            if not line.startswith(b"data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("msg") == "process_completed" and msg.get("event_id") in pending:
                pending.discard(msg["event_id"])
                yield msg
                if not pending:
                    return
    raise AssertionError(f"stream closed with {len(pending)} events unanswered")


def click(server: AppServer, session_hash: str, item: int) -> dict:
    ev = join(server.url, session_hash, server.fn_index("label-grid", "click"), [None, None], {"item": item})
    msg = next(completions(server.url, session_hash, [ev]))
    assert msg["success"], msg
    return msg


def test_acknowledged_clicks_survive_sigkill_mid_burst(tmp_path):
    from gradio_client import Client

    data = tmp_path / "data"
    server = AppServer(data)
    sent, acked = [], []
    try:
        client = Client(server.url, verbose=False)
        sid = client.predict(None, api_name="/on_load")[0]
        fn = server.fn_index("label-grid", "click")
        items = iter(range(0, 200, 3))  # spread over several pages
        kill_after = 22  # in the middle of the 5th batch: the rest of it is queued or running
        while server.proc.poll() is None:
            batch = [next(items) for _ in range(5)]
            ids = {join(server.url, client.session_hash, fn, [None, None], {"item": i}): i for i in batch}
            sent += batch
            for msg in completions(server.url, client.session_hash, ids):
                assert msg["success"], msg
                acked.append(ids[msg["event_id"]])
                if len(acked) == kill_after:
                    server.kill()
                    break
    finally:
        server.kill()
    assert len(acked) == 22 and len(sent) == 25  # killed with clicks sent but not acknowledged

    again = AppServer(data)  # a restart on the same storage, as after a Space restart
    try:
        client = Client(again.url, verbose=False)
        resumed, grid, counts = client.predict(sid, api_name="/on_load")[:3]
        assert resumed == sid  # the browser's stored id resumes the same session
        malign = int(counts.split("malign ")[1].split(" ")[0])
        assert len(acked) <= malign <= len(sent)
        page0 = {it["id"]: it["state"] for it in (grid if isinstance(grid, dict) else json.loads(grid))["items"]}
        assert all(page0[i] == "malign" for i in acked if i in page0)
        states = {it["item"]: it["state"] for it in SessionStore(data).items(sid)}
        assert [i for i in acked if states[i] != MALIGN] == []  # every acknowledged click is stored
        assert all(states[i] == BENIGN for i in states if i not in sent)  # and nothing else changed
    finally:
        again.kill()


def _gallery(files) -> np.ndarray:
    """28x28 images back from the app's 112x112 display gallery (nearest 4x upscaling, webp-compressed)."""
    return np.stack([np.asarray(Image.open(f["image"]).convert("L"), dtype=np.int16)[::4, ::4] for f in files])


def test_eight_concurrent_sessions_are_isolated(tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    server = AppServer(tmp_path / "data")
    n_sessions = 8
    barrier = threading.Barrier(n_sessions)

    def session(k):
        c = Client(server.url, verbose=False)
        sid, grid = c.predict(None, api_name="/on_load")[:2]
        ids = [it["id"] for it in (grid if isinstance(grid, dict) else json.loads(grid))["items"]]
        barrier.wait(60)  # everyone labels, trains and samples at the same time
        for item in ids[: k + 1]:  # session k marks k + 1 images malign
            click(server, c.session_hash, item)
        trained, _ = c.predict("ensemble", "ddpm-encoder", 1, 10, 0.1, api_name="/on_train")  # summary, strict
        base, censored, note = c.predict("time", 4.0, 0, 0, 5, 1000 + k, 2, "(none)", "base model",
                                         api_name="/on_censor")
        sent = c.predict(api_name="/on_send")
        bundle = c.predict(api_name="/on_session_download")[0]
        with zipfile.ZipFile(bundle) as z:
            meta = json.loads(z.read("session.json"))
            reward = json.loads(z.read("reward.json"))["info"]
            reward_hash = zlib.crc32(z.read("reward.safetensors"))
            images = load_file(z.extract("images.safetensors", tmp_path / f"s{k}"))["images"].numpy()
        return dict(sid=sid, ids=ids, trained=trained, censored=_gallery(censored), sent=sent, meta=meta,
                    reward=reward, reward_hash=reward_hash, images=images)

    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(n_sessions) as pool:
            results = list(pool.map(session, range(n_sessions), timeout=240))
        # a made-up id is not anybody's session: it gets a fresh, empty one
        stranger = Client(server.url, verbose=False).predict("A" * 24, api_name="/on_load")
        # a hostile upload through the app: refused with the library's message, nothing stored
        evil = tmp_path / "evil.zip"
        with zipfile.ZipFile(evil, "w") as z:
            z.writestr("../escape.json", "{}")
        with pytest.raises(AppError, match="refused"):
            Client(server.url, verbose=False).predict(handle_file(str(evil)), api_name="/on_bundle_upload")
    finally:
        server.kill()

    assert len({r["sid"] for r in results} | {stranger[0]}) == n_sessions + 1 and "A" * 24 not in stranger[0]
    assert "malign 0 " in stranger[2]
    for k, r in enumerate(results):
        assert f"25 labels: {k + 1} malign" in r["trained"]  # the reward saw this session's labels only
        assert r["reward"]["labels"] == 25 and r["reward"]["malign_labels"] == k + 1
        assert r["sent"][2] == f"viewed 27 · malign {k + 1} · target 100 (benign {26 - k} · unsure 0)"
        items = r["meta"]["items"]
        assert len(items) == 202 and len(r["images"]) == 202
        malign = [i for i, it in enumerate(items) if it["state"] == MALIGN]
        assert malign == sorted(r["ids"][: k + 1])
        # the gallery sent to labelling is the one this session rendered: its seeds, its images
        assert [it["seed"] for it in items[200:]] == seeds_for(2, 1000 + k)
        own = np.abs(r["images"][200:].astype(np.int16) - r["censored"]).mean()
        others = [np.abs(q["images"][200:].astype(np.int16) - r["censored"]).mean()
                  for q in results if q is not r]
        assert own < 6 and min(others) > 15, (own, others)
    assert len({r["reward_hash"] for r in results}) == n_sessions  # eight different rewards
    assert not (tmp_path / "escape.json").exists()


def test_shared_unet_hooks_catch_only_their_own_thread(tiny_model):
    """Time guidance reads reward features through hooks on the UNet every session shares; another
    session's forward pass running meanwhile must not land in this one's features."""
    unet = tiny_model.unet
    x, other = torch.randn(2, 1, 28, 28), torch.randn(3, 1, 28, 28)
    _, alone = eps_and_taps(unet, x, 10)
    done = []

    def meanwhile(module, args):  # another session's reward training runs while our pass is under way
        if not done:
            done.append(1)
            t = threading.Thread(target=unet_taps, args=(unet, other, torch.tensor([5])))
            t.start()
            t.join()

    hook = unet.conv_in.register_forward_pre_hook(meanwhile)
    try:
        _, feats = eps_and_taps(unet, x, 10)
    finally:
        hook.remove()
    assert done and len(feats) == len(alone)
    for a, b in zip(feats, alone):
        torch.testing.assert_close(a, b)


# ---- bounded work -------------------------------------------------------------------------------

@pytest.fixture
def studio(tmp_path, tiny_model, fixture_images):
    pool = Pool(fixture_images["images"][:40], np.arange(40), {})
    return Studio(model=tiny_model, data_dir=tmp_path / "data", pool=pool)


BAD = {"members": [0, 9, NAN, INF, None, "5"], "iterations": [9, 2001, 10**9, NAN, -INF],
       "alpha": [0, 1.5, NAN, INF], "weight": [-0.1, 50.1, 1e9, NAN, INF], "backward": [-1, 21, NAN],
       "recurrence": [-1, 5, INF], "steps": [4, 101, NAN, INF], "count": [0, 65, 10**6, NAN],
       "seed": [-1, 2**32, 10**30, NAN]}


def test_every_limit_is_tested_and_matches_the_ui(studio):
    assert set(BAD) == set(LIMITS)
    from app import QUEUE, build_app

    demo = build_app(studio)
    sliders = {c["props"]["label"]: (c["props"]["minimum"], c["props"]["maximum"])
               for c in demo.config["components"] if c["type"] == "slider"}
    ui = {"members": "ensemble size K", "iterations": "iterations", "alpha": "α (benign class weight)",
          "weight": "weight ω (used when automatic strength is off)", "backward": "backward steps", "recurrence": "recurrence", "steps": "steps",
          "count": "images"}
    assert {name: sliders[label] for name, label in ui.items()} == {name: LIMITS[name] for name in ui}
    # the public app's queue: a concurrency limit per event and a bounded waiting line
    assert QUEUE["default_concurrency_limit"] == 1 and 1 <= QUEUE["max_size"] <= 100
    import app

    for built in (demo, app.demo):  # what build_app returns, and the module's demo that `python app.py` launches
        assert (built._queue.default_concurrency_limit, built._queue.max_size) == (1, QUEUE["max_size"])


@pytest.mark.parametrize("name, value", [(n, v) for n, vs in BAD.items() for v in vs])
def test_out_of_range_numbers_are_refused(studio, name, value):
    sid = studio.open_session(None)
    for it in studio.page(sid, 0)[:2]:
        studio.click(sid, it["id"])
    train = dict(members=2, iterations=10, alpha=0.5)
    gallery = dict(weight=1.0, backward=0, recurrence=0, steps=5, seed=0, count=2)
    with pytest.raises(CensorError, match=f"{name} must be between {LIMITS[name][0]} and {LIMITS[name][1]}"):
        if name in train:
            studio.train(sid, "ensemble", "half-unet", **{**train, name: value})
        else:
            studio.censored_gallery(sid, "time", **{**gallery, name: value})
    assert not studio.reward_dir(sid).exists() and studio.store.counts(sid).malign == 2


def test_fresh_gallery_label_count_and_comparison_are_bounded(studio):
    from censor.studio.rlhf import COMPARE_LIMITS, run_comparison

    for n, steps, seed, match in [(0, 5, 0, "1 to 256"), (257, 5, 0, "1 to 256"), (NAN, 5, 0, "1 to 256"),
                                  (2, 101, 0, "steps must be"), (2, INF, 0, "steps must be"),
                                  (2, NAN, 0, "steps must be"), (2, 5, -1, "seed must be"),
                                  (2, 5, 10**20, "seed must be")]:
        with pytest.raises(CensorError, match=match):
            studio.fresh_gallery(n, steps, seed)
    for name, bad in (("budget", 13), ("budget", NAN), ("seeds", 4), ("seeds", INF), ("n", 10**6), ("n", NAN)):
        args = {**dict(budget=70, seeds=1, n=60), name: bad}
        lo, hi = COMPARE_LIMITS[name]
        with pytest.raises(CensorError, match=f"{name} must be between {lo} and {hi}"):
            run_comparison(studio, "unused", "bags", ["censored"], **args)
    # reward training keeps features of every label: more than MAX_TRAIN_LABELS is refused up front
    sid = studio.store.create("tiny")
    ids = studio.store.add_items(sid, np.zeros((MAX_TRAIN_LABELS + 1, 28, 28), np.uint8), range(MAX_TRAIN_LABELS + 1))
    studio.store.mark_viewed(sid, ids)
    studio.store.set_state(sid, 0, MALIGN)
    with pytest.raises(CensorError, match=f"at most {MAX_TRAIN_LABELS}"):
        studio.train(sid, "ensemble", "ddpm-encoder", 1, 10, 0.1)


def test_a_full_queue_says_busy(studio):
    """Gradio refuses a join beyond max_size with HTTP 503 "Queue is full"; its page shows
    "This application is currently busy. Please try again." (from the installed frontend)."""
    import gradio

    from app import QUEUE, build_app

    release = threading.Event()

    def slow(n, steps, seed, progress=None):
        release.wait(30)
        return []

    studio.fresh_gallery = slow
    demo = build_app(studio)
    demo.queue(**{**QUEUE, "max_size": 2}).launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        url = demo.local_url.rstrip("/")
        fn = next(d["id"] for d in demo.config["dependencies"] if d["api_name"] == "generate")
        answers = [requests.post(f"{url}/gradio_api/queue/join", timeout=10,
                                 json=dict(data=[2, 5, 0], fn_index=fn, session_hash=f"s{i}")) for i in range(6)]
        codes = [a.status_code for a in answers]
        busy = [a for a in answers if a.status_code == 503]
        assert codes[:2] == [200, 200] and codes.count(200) <= 3 and busy, codes  # <= 1 running + 2 waiting
        assert "Queue is full" in busy[0].json()["detail"]
    finally:
        release.set()
        demo.close()
    frontend = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"
    assert any("This application is currently busy" in p.read_text(errors="ignore") for p in frontend.glob("*.js"))


# ---- crash hygiene ------------------------------------------------------------------------------

def test_failed_training_and_sampling_report_and_leave_the_session_usable(studio, monkeypatch):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    import censor.studio.galleries
    import censor.studio.training
    from app import build_app

    demo = build_app(studio)
    demo.queue().launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        sid = client.predict(None, api_name="/on_load")[0]
        for it in studio.page(sid, 0)[:3]:
            studio.click(sid, it["id"])
        before = studio.store.counts(sid)

        def boom(*a, **k):
            raise RuntimeError("simulated crash inside the job")

        with monkeypatch.context() as m:
            m.setattr(censor.studio.training, "train_reward", boom)
            with pytest.raises(AppError, match=r"training failed \(RuntimeError\); your labels are kept"):
                client.predict("ensemble", "half-unet", 2, 10, 0.5, api_name="/on_train")
        assert studio.store.counts(sid) == before and not studio.reward_dir(sid).exists()
        summary, strict = client.predict("ensemble", "half-unet", 2, 10, 0.5, api_name="/on_train")
        assert "Trained a half-unet reward" in summary and strict == {"__type__": "update"}  # strict left as it was
        summary, strict = client.predict("ensemble", "local-patch", 2, 10, 0.5, api_name="/on_train")
        assert "Trained a local-patch reward" in summary and strict is True  # a local mark's reward renders strict
        assert "Trained a half-unet reward" in client.predict("ensemble", "half-unet", 2, 10, 0.5, api_name="/on_train")[0]
        weights = (studio.reward_dir(sid) / "reward.safetensors").read_bytes()

        with monkeypatch.context() as m:
            m.setattr(censor.studio.galleries, "sample", boom)
            with pytest.raises(AppError, match=r"sampling failed \(RuntimeError\)"):
                client.predict("time", 1.0, 0, 0, 5, 0, 2, "(none)", "base model", api_name="/on_censor")
        assert studio.store.counts(sid) == before
        assert (studio.reward_dir(sid) / "reward.safetensors").read_bytes() == weights
        base, censored, _ = client.predict("time", 1.0, 0, 0, 5, 0, 2, "(none)", "base model", api_name="/on_censor")
        assert len(base) == len(censored) == 2
        client.predict(api_name="/lambda")  # next page: the session still answers
        assert studio.store.counts(sid).viewed == 25 + 15
    finally:
        demo.close()


# ---- hostile or broken uploads ------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_model, fixture_images):
    """A studio with one labelled, trained session and its two good bundles (made once)."""
    tmp = tmp_path_factory.mktemp("hostile")
    pool = Pool(fixture_images["images"][:40], np.arange(40), {})
    studio = Studio(model=tiny_model, data_dir=tmp / "data", pool=pool)
    sid = studio.open_session(None, "mark bags")
    for it in studio.page(sid, 0)[:3]:
        studio.click(sid, it["id"])
    studio.train(sid, "ensemble", "half-unet", members=2, iterations=10, alpha=0.5)
    result = studio.censored_gallery(sid, "time", 2.0, 0, 0, steps=5, seed=3, count=3)
    _, gallery = studio.export_gallery(sid, result)
    session = studio.export_session(sid)
    entries = {name: zipfile.ZipFile(p).read(name) for p in (gallery,) for name in zipfile.ZipFile(p).namelist()}
    sentries = {name: zipfile.ZipFile(session).read(name) for name in zipfile.ZipFile(session).namelist()}
    return studio, sid, entries, sentries


@pytest.fixture
def intact(shared):
    """After the test: the session's labels and reward unchanged, no new session, nothing left on disk."""
    studio, sid, *_ = shared
    sessions = lambda: studio.store._q("SELECT COUNT(*) FROM sessions")[0][0]
    bundles_dir = studio.store.root / "bundles"
    state = (studio.store.counts(sid), (studio.reward_dir(sid) / "reward.safetensors").read_bytes(), sessions(),
             sorted(bundles_dir.iterdir()) if bundles_dir.exists() else [])
    yield
    assert (studio.store.counts(sid), (studio.reward_dir(sid) / "reward.safetensors").read_bytes(), sessions(),
            sorted(bundles_dir.iterdir()) if bundles_dir.exists() else []) == state
    assert [p for p in studio.store.root.iterdir() if p.name.startswith("tmp")] == []


def _zip(path: Path, entries: dict, stored=()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data, compress_type=zipfile.ZIP_STORED if name in stored else None)
    return path


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height: valid signature and IHDR, but pixel data for a few rows only."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 30)) + _chunk(b"IEND", b"")


def _png_20k() -> bytes:
    """A complete, valid 20000x20000 grey PNG (400 megapixels; ~400 kB compressed)."""
    chunk = _chunk
    comp, row, parts = zlib.compressobj(6), b"\0" * 20001, []
    for _ in range(20000):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    ihdr = (20000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _flip(data: bytes, at: int, n: int = 8) -> bytes:
    return data[:at] + bytes(b ^ 0xFF for b in data[at:at + n]) + data[at + n:]


def _other_format(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (28, 28), 200).save(buf, format=fmt)
    return buf.getvalue()


def _with_reward(entries: dict, weights: bytes) -> dict:
    """A gallery bundle whose reward file is replaced, with the manifest's hash updated to match it."""
    import hashlib

    manifest = json.loads(entries["manifest.json"])
    manifest["reward_sha256"] = hashlib.sha256(weights).hexdigest()
    return {**entries, "reward.safetensors": weights, "manifest.json": json.dumps(manifest)}


def _manifest(entries: dict, **changes) -> dict:
    m = json.loads(entries["manifest.json"])
    for key, value in changes.items():
        if key.startswith("settings_"):
            m["settings"][key[len("settings_"):]] = value
        elif value is ...:
            del m[key]
        else:
            m[key] = value
    return {**entries, "manifest.json": json.dumps(m)}


def test_huge_png_is_refused_from_its_header_before_decoding(shared, intact, tmp_path, monkeypatch):
    studio, _, entries, _ = shared
    opened = []
    real_open = bundles.Image.open
    monkeypatch.setattr(bundles.Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # even with PIL's own bomb check switched off
    huge = _png_20k()
    assert len(huge) < 1_000_000
    # stored uncompressed, so the zip's ratio check lets it through and the PNG check must act
    bundle = _zip(tmp_path / "huge.zip", {**entries, "censored_001.png": huge}, stored={"censored_001.png"})
    with pytest.raises(CensorError, match="censored_001.png is 20000x20000, expected 28x28"):
        studio.import_gallery(bundle)
    assert len(opened) == 1  # censored_000.png only: the huge one never reached PIL (no decode, so no time spent)
    # a manifest that claims the huge size is refused before any image is read
    claims = _zip(tmp_path / "claims.zip", {**_manifest(entries, image_size=[20000, 20000]),
                                            "censored_000.png": _png_header_only(20000, 20000)})
    with pytest.raises(CensorError, match="image_size"):
        studio.import_gallery(claims)
    assert len(opened) == 1


@pytest.mark.parametrize("case, data, message", [
    ("truncated", lambda png: png[: len(png) // 2], "censored_001.png is not a readable image"),
    ("corrupt", lambda png: _flip(png, png.index(b"IDAT") + 8), "not a readable image"),
    ("header only", lambda png: _png_header_only(28, 28), "not a readable image"),
    ("text renamed .png", lambda png: b"#!/bin/sh\nrm -rf /\n" * 10, "not a readable image \\(not a PNG\\)"),
    ("GIF renamed .png", lambda png: _other_format("GIF"), "not a PNG"),
    ("BMP renamed .png", lambda png: _other_format("BMP"), "not a PNG"),
    ("EPS-like renamed .png", lambda png: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n", "not a PNG"),
])
def test_broken_or_disguised_images_are_refused(shared, intact, tmp_path, case, data, message):
    studio, _, entries, _ = shared
    bundle = _zip(tmp_path / "b.zip", {**entries, "censored_001.png": data(entries["censored_001.png"])})
    with pytest.raises(CensorError, match=message):
        studio.import_gallery(bundle)


@pytest.mark.parametrize("change, message", [
    (dict(seeds="0,1,2"), "seeds must be a list of integers"),
    (dict(seeds=["0", "1", "2"]), "seeds must be a list of integers"),
    (dict(seeds=[0, 1, 2**70]), "seeds must be a list of integers"),
    (dict(seeds=[0, 1]), "image count and seeds disagree"),
    (dict(images=[3]), "'images' must map"),
    (dict(images={"censored": "3"}), "'images' must map"),
    (dict(images={"censored": 4}, seeds=[0, 1, 2, 3]), "bundle has no censored_003.png"),
    (dict(image_size=[32, 32]), "image_size"),
    (dict(image_size="28x28"), "image_size"),
    (dict(settings=...), "lacks 'settings'"),
    (dict(settings="fast"), "settings need a guidance"),
    (dict(settings_guidance="exec"), "settings need a guidance"),
    (dict(settings_weight=NAN), "weight must be between"),
    (dict(settings_weight="4"), "weight must be between"),
    (dict(settings_steps=10**6), "steps must be between"),
    (dict(settings_count=...), "count must be between"),
    (dict(settings_count=64), "count and seeds disagree"),
    (dict(settings_backward_lr=INF), "backward_lr must be between"),
    (dict(model_fingerprint="0" * 16), "another diffusion model"),
])
def test_malformed_manifests_are_refused(shared, intact, tmp_path, change, message):
    studio, _, entries, _ = shared
    changed = dict(entries)
    for key, value in change.items():
        if key.startswith("settings_") and value is ...:
            m = json.loads(changed["manifest.json"])
            del m["settings"][key[len("settings_"):]]
            changed["manifest.json"] = json.dumps(m)
        else:
            changed = _manifest(changed, **{key: value})
    with pytest.raises(CensorError, match=message):
        studio.import_gallery(_zip(tmp_path / "m.zip", changed))


def test_manifest_that_is_not_an_object_is_refused(shared, intact, tmp_path):
    studio, _, entries, _ = shared
    with pytest.raises(CensorError, match="must hold a JSON object"):
        studio.import_gallery(_zip(tmp_path / "m.zip", {**entries, "manifest.json": b"[1, 2, 3]"}))


def test_pickles_are_never_loaded(shared, intact, tmp_path):
    """Only safetensors and JSON are read: a pickle under any name is refused and never unpickled."""
    studio, _, entries, sentries = shared
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = pickle.dumps(Payload())
    for name in ("reward.bin", "pytorch_model.bin", "reward.pt", "weights.ckpt", "reward.pickle"):
        with pytest.raises(CensorError, match="refused"):
            studio.import_gallery(_zip(tmp_path / "p.zip", {**entries, name: evil}))
    torch_file = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, torch_file)
    for weights in (evil, torch_file.getvalue()):  # disguised as safetensors, hash made to match
        with pytest.raises(CensorError, match="missing or corrupt"):
            studio.import_gallery(_zip(tmp_path / "g.zip", _with_reward(entries, weights)))
        with pytest.raises(CensorError, match="missing or corrupt"):
            studio.import_session(_zip(tmp_path / "s.zip", {**sentries, "reward.safetensors": weights}))
        with pytest.raises(CensorError, match="corrupt"):
            studio.import_session(_zip(tmp_path / "i.zip", {**sentries, "images.safetensors": weights}))
    assert not marker.exists()


def test_rewards_for_another_image_size_or_with_nan_weights_are_refused(shared, intact, tmp_path):
    studio, sid, entries, sentries = shared
    meta = json.loads(sentries["reward.json"])
    wrong = json.dumps({**meta, "image_shape": [1, 32, 32]})
    with pytest.raises(CensorError, match=r"trained on \(1, 32, 32\) images"):
        studio.import_session(_zip(tmp_path / "a.zip", {**sentries, "reward.json": wrong}))
    from safetensors.numpy import save

    n = len(json.loads(sentries["session.json"])["items"])
    big = save({"images": np.random.default_rng(0).integers(0, 256, (n, 32, 32), dtype=np.uint8)})
    with pytest.raises(CensorError, match="session's images are 32x32, this model makes 28x28"):
        studio.import_session(_zip(tmp_path / "b.zip", {**sentries, "images.safetensors": big}))
    for bad in ({**meta, "members": "many"}, {**meta, "members": 0}, [meta], {**meta, "image_shape": 28}):
        with pytest.raises(CensorError, match="reward.json is malformed"):
            studio.import_session(_zip(tmp_path / "c.zip", {**sentries, "reward.json": json.dumps(bad)}))

    tensors = load_file(str(studio.reward_dir(sid) / "reward.safetensors"))
    for poison in (NAN, INF, -INF):
        name = sorted(k for k, v in tensors.items() if v.is_floating_point())[3]
        t = dict(tensors)
        t[name] = t[name].clone().reshape(-1)
        t[name][0] = poison
        t[name] = t[name].reshape(tensors[name].shape)
        folder = tmp_path / f"r{poison}"
        folder.mkdir()
        save_file(t, str(folder / "reward.safetensors"))
        (folder / "reward.json").write_bytes(sentries["reward.json"])
        with pytest.raises(CensorError, match=f"{name} holds NaN or infinite values"):
            load_reward(folder, studio.model)
        weights = (folder / "reward.safetensors").read_bytes()
        with pytest.raises(CensorError, match="NaN or infinite"):
            studio.import_gallery(_zip(tmp_path / "n.zip", _with_reward(entries, weights)))
        with pytest.raises(CensorError, match="NaN or infinite"):
            studio.import_session(_zip(tmp_path / "n.zip", {**sentries, "reward.safetensors": weights}))


@pytest.mark.parametrize("case", ["bad state", "no seed", "seed as text", "huge round", "items not a list"])
def test_malformed_session_json_is_refused(shared, intact, tmp_path, case):
    studio, _, _, sentries = shared
    meta = json.loads(sentries["session.json"])
    item = meta["items"][0]
    if case == "bad state":
        item["state"] = 7
    elif case == "no seed":
        del item["seed"]
    elif case == "seed as text":
        item["seed"] = "1"
    elif case == "huge round":
        item["round"] = 2**80
    else:
        meta["items"] = {"0": item}
    with pytest.raises(CensorError, match="session.json"):
        studio.import_session(_zip(tmp_path / "s.zip", {**sentries, "session.json": json.dumps(meta)}))


def test_corrupt_or_truncated_zips_and_bombs_are_refused(shared, intact, tmp_path, monkeypatch):
    studio, _, entries, _ = shared
    good = _zip(tmp_path / "good.zip", entries)
    raw = good.read_bytes()
    (tmp_path / "half.zip").write_bytes(raw[: len(raw) // 2])  # an upload cut short
    with pytest.raises(CensorError, match="not a zip bundle"):
        studio.import_gallery(tmp_path / "half.zip")
    # one entry's data damaged in place (the directory still lists it): a CRC or deflate error
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("censored_000.png")
    name_len, extra_len = (int.from_bytes(raw[info.header_offset + i:info.header_offset + i + 2], "little")
                           for i in (26, 28))  # from the local header, which may differ from the directory's
    (tmp_path / "damaged.zip").write_bytes(_flip(raw, info.header_offset + 30 + name_len + extra_len + 10))
    with pytest.raises(CensorError, match="bundle entry 'censored_000.png' is corrupt"):
        studio.import_gallery(tmp_path / "damaged.zip")
    # a symlink entry is written as a plain file holding the link text, never followed
    link = zipfile.ZipInfo("grid.png")
    link.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as z:
        z.writestr(link, "/etc/passwd")
    out = safe_extract(tmp_path / "link.zip", tmp_path / "out")
    assert not out["grid.png"].is_symlink() and out["grid.png"].read_bytes() == b"/etc/passwd"
    # bombs: a small entry that inflates 1000x, too many entries, too much in total
    with pytest.raises(CensorError, match="too large or too compressed"):
        safe_extract(_zip(tmp_path / "ratio.zip", {"a.json": b"0" * 2_000_000}), tmp_path / "o1")
    with pytest.raises(CensorError, match="at most 600"):
        safe_extract(_zip(tmp_path / "many.zip", {f"{i}.json": b"{}" for i in range(601)}), tmp_path / "o2")
    monkeypatch.setattr(bundles, "MAX_TOTAL_BYTES", 1_000_000)
    rnd = np.random.default_rng(0)
    with pytest.raises(CensorError, match="more than"):
        safe_extract(_zip(tmp_path / "total.zip", {f"{i}.json": rnd.bytes(400_000) for i in range(3)}), tmp_path / "o3")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
