"""Issue 19, items 2, 3 and 9: one person cannot stall the others, fill the disk or break a session
with an uploaded bundle (item caps, per-session ranking locks and bounded ranking, disk quotas,
sessions only on the first label, expiry and cleanup sweeps, checked and linear session import)."""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

import censor.labels.active as active
import censor.studio.resources as resources
from censor.core.errors import CensorError
from censor.labels.pool import Pool
from censor.studio.common import MAX_ROUND, MAX_SESSION_ITEMS, RANK_CANDIDATES, RANK_REFERENCE, RANKER_CACHE_SESSIONS
from censor.studio.core import Studio

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def studio(tmp_path, tiny_model, fixture_images):
    pool = Pool(fixture_images["images"][:60], np.arange(60), {})
    s = Studio(model=tiny_model, data_dir=tmp_path / "data", pool=pool)
    s.store  # opened (and swept) before a test looks at the data directory
    return s


def _images(fixture_images, n):
    return np.resize(fixture_images["images"], (n, 28, 28)).astype(np.uint8)


def _bundle(path, images, items):
    """A session bundle holding ``images`` and the given item entries (no reward)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("session.json", json.dumps(dict(info=dict(instructions="", model="m"), items=items)))
        z.writestr("images.safetensors", save({"images": np.asarray(images, np.uint8)}))
    return path


def _sessions_in_db(data):
    with sqlite3.connect(Path(data) / "sessions.db") as db:
        return db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]


def _dirs(data):
    return sorted(p.name for p in Path(data).iterdir() if p.is_dir())


def _session_with(studio, images, viewed=0):
    sid = studio.open_session(None)
    studio.click(sid, 0)  # kept on disk
    ids = studio.store.add_items(sid, images, range(len(images)), round_=2)
    studio.store.mark_viewed(sid, ids[:viewed])
    return sid


# ---- item 2: one user can stall everyone ---------------------------------------------------
def test_items_per_session_are_capped_for_adding_and_importing(studio, fixture_images, tmp_path):
    sid = studio.open_session(None)
    with pytest.raises(CensorError, match=f"at most {MAX_SESSION_ITEMS} images"):
        studio.send_to_labelling(sid, _images(fixture_images, MAX_SESSION_ITEMS), list(range(MAX_SESSION_ITEMS)))
    assert studio.store.counts(sid).total == 60
    n = MAX_SESSION_ITEMS + 1
    items = [dict(seed=i, round=1, state=0, viewed=False) for i in range(n)]
    before = _sessions_in_db(studio.data_dir)
    with pytest.raises(CensorError, match=f"at most {MAX_SESSION_ITEMS}"):
        studio.import_session(_bundle(tmp_path / "big.zip", _images(fixture_images, n), items))
    assert _sessions_in_db(studio.data_dir) == before
    assert not [d for d in _dirs(studio.data_dir) if d.startswith((".import-", "tmp"))]


def test_one_sessions_ranking_does_not_hold_up_another(studio, fixture_images, monkeypatch):
    a = _session_with(studio, _images(fixture_images, 40))
    b = _session_with(studio, _images(fixture_images, 40))
    for sid in (a, b):
        studio.set_informative_first(sid, True)
    release, started = threading.Event(), threading.Event()
    real_rank = active.rank

    def slow_rank(*args, **kwargs):
        if threading.current_thread().name == "ranks-a":
            started.set()
            release.wait(60)  # session a's ranking takes as long as the test wants
        return real_rank(*args, **kwargs)

    monkeypatch.setattr(active, "rank", slow_rank)
    ta = threading.Thread(target=studio.label_order, args=(a,), name="ranks-a")
    ta.start()
    assert started.wait(60)
    done = []
    tb = threading.Thread(target=lambda: done.append(studio.page(b, 0)), name="pages-b")
    tb.start()
    tb.join(20)
    finished_while_a_ranked = bool(done)
    release.set()
    ta.join(60)
    tb.join(60)
    assert finished_while_a_ranked, "session b's page waited for session a's ranking"


def test_ranking_cost_is_bounded_and_caches_are_evicted(studio, fixture_images, monkeypatch):
    total = RANK_REFERENCE + 2 * RANK_CANDIDATES
    sid = _session_with(studio, _images(fixture_images, total), viewed=RANK_REFERENCE + 100)
    studio.set_informative_first(sid, True)
    sizes = []
    real_rank = active.rank

    def recording_rank(embedding, labelled, *args, **kwargs):
        lab = np.asarray(labelled)
        sizes.append((int((~lab).sum()), int(lab.sum())))
        return real_rank(embedding, labelled, *args, **kwargs)

    monkeypatch.setattr(active, "rank", recording_rank)
    order = studio.label_order(sid)
    every = [it["item"] for it in studio.store.items(sid, limit=10**6)]
    assert sorted(order) == sorted(every)  # every item exactly once
    assert sum(c for c, _ in sizes) <= RANK_CANDIDATES  # candidates ranked in one call
    assert max(r for _, r in sizes) <= RANK_REFERENCE  # the labelled images coverage is measured against
    # pages further on rank the next candidates: nothing is left out for good
    later = studio.page(sid, (RANK_REFERENCE + 100 + RANK_CANDIDATES) // 25 + 1)
    assert later
    # per-session caches stay bounded
    for _ in range(RANKER_CACHE_SESSIONS + 2):
        other = _session_with(studio, _images(fixture_images, 5))
        studio.set_informative_first(other, True)
        studio.label_order(other)
    assert len(studio.ranker._features) <= RANKER_CACHE_SESSIONS


# ---- item 3: disk fills without limit ------------------------------------------------------
def test_a_page_view_puts_nothing_on_disk_and_the_first_label_keeps_the_session(studio):
    before_db, before_dirs = _sessions_in_db(studio.data_dir), _dirs(studio.data_dir)
    sid = studio.open_session(None)
    grid = studio.page(sid, 0)
    assert studio.open_session(sid) == sid  # a reload resumes it
    assert studio.counts_text(sid).startswith("viewed 25 ")
    assert _sessions_in_db(studio.data_dir) == before_db and _dirs(studio.data_dir) == before_dirs
    assert studio.click(sid, grid[3]["id"]) == "malign"
    assert _sessions_in_db(studio.data_dir) == before_db + 1 and sid in _dirs(studio.data_dir)
    again = Studio(model=studio.model, data_dir=studio.data_dir, pool=studio.pool)
    assert again.open_session(sid) == sid  # on disk now: a restart keeps it, views and label included
    assert again.counts_text(sid) == "viewed 25 · malign 1 · target 100 (benign 24 · unsure 0)"


def test_disk_quotas_per_session_and_in_total(tmp_path, tiny_model, fixture_images, monkeypatch):
    pool = Pool(fixture_images["images"][:60], np.arange(60), {})
    monkeypatch.setattr(resources, "MAX_SESSION_BYTES", 100_000)
    studio = Studio(model=tiny_model, data_dir=tmp_path / "a", pool=pool)
    sid = studio.open_session(None)
    studio.click(sid, 0)
    with pytest.raises(CensorError, match="at most 0 MB of storage|storage"):
        studio.send_to_labelling(sid, _images(fixture_images, 200), list(range(200)))
    assert studio.store.counts(sid).total == 60
    monkeypatch.setattr(resources, "MAX_TOTAL_BYTES", 1)
    full = Studio(model=tiny_model, data_dir=tmp_path / "b", pool=pool)
    sid = full.open_session(None)  # a page view still works: it is not on the disk
    assert len(full.page(sid, 0)) == 25
    with pytest.raises(CensorError, match="storage is full"):
        full.click(sid, 0)
    assert _sessions_in_db(tmp_path / "b") == 0


def test_the_sweep_expires_idle_sessions_and_removes_leftovers(studio, tmp_path):
    data = studio.data_dir
    old, fresh = studio.open_session(None), studio.open_session(None)
    for sid in (old, fresh):
        studio.click(sid, 0)
    with sqlite3.connect(data / "sessions.db") as db:
        db.execute("UPDATE sessions SET touched=? WHERE id=?", (time.time() - 31 * 86400, old))
    (data / ("x" * 24)).mkdir()  # a session folder the database does not know (a killed import)
    for stale in (".import-abc", "tmpk3j_x8a2"):
        (data / stale / "bundle").mkdir(parents=True)
    (data / "bundles" / "tok12345").mkdir(parents=True)
    restarted = Studio(model=studio.model, data_dir=data, pool=studio.pool)
    restarted.store  # the sweep runs when the store opens
    assert not restarted.store.exists(old) and restarted.store.exists(fresh)
    assert _dirs(data) == sorted(["bundles", fresh])
    assert (data / "bundles" / "tok12345").is_dir()  # a recent imported gallery stays


KILLED_IMPORT = """
import os, sys
from types import SimpleNamespace
import numpy as np
from censor.labels.pool import Pool
from censor.studio.core import Studio
studio = Studio(model=SimpleNamespace(image_shape=(1, 28, 28)), data_dir=sys.argv[1],
                pool=Pool(np.zeros((1, 28, 28), np.uint8), np.arange(1), {}))
store = studio.store
kill = lambda sql: os.kill(os.getpid(), 9) if sql.lstrip().upper().startswith("INSERT INTO ITEMS") else None
store._db.set_trace_callback(kill)
studio.import_session(sys.argv[2])
"""


def test_an_import_killed_midway_leaves_nothing_after_a_restart(studio, fixture_images, tmp_path):
    data = studio.data_dir
    keep = studio.open_session(None)
    studio.click(keep, 0)
    items = [dict(seed=i, round=1 + i % 3, state=i % 3, viewed=True) for i in range(30)]
    bundle = _bundle(tmp_path / "s.zip", _images(fixture_images, 30), items)
    proc = subprocess.run([sys.executable, "-c", KILLED_IMPORT, str(data), str(bundle)], cwd=ROOT,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    restarted = Studio(model=studio.model, data_dir=data, pool=studio.pool)
    restarted.store
    assert _sessions_in_db(data) == 1 and restarted.store.exists(keep)
    assert _dirs(data) == [keep]


# ---- item 9 (parts): bounded rounds, checked and linear import, durable commits ------------
def test_rounds_are_bounded_on_import_and_when_sending_a_gallery(studio, fixture_images, tmp_path):
    before = _sessions_in_db(studio.data_dir)
    items = [dict(seed=1, round=2**63 - 1, state=0, viewed=True)]
    with pytest.raises(CensorError, match=f"between 0 and {MAX_ROUND}"):
        studio.import_session(_bundle(tmp_path / "r.zip", _images(fixture_images, 1), items))
    assert _sessions_in_db(studio.data_dir) == before
    items = [dict(seed=1, round=MAX_ROUND, state=0, viewed=True)]
    sid = studio.import_session(_bundle(tmp_path / "m.zip", _images(fixture_images, 1), items))
    with pytest.raises(CensorError, match=f"between 0 and {MAX_ROUND}"):
        studio.send_to_labelling(sid, _images(fixture_images, 2), [1, 2])
    assert studio.store.counts(sid).total == 1


def test_an_item_without_viewed_is_refused_before_any_session_exists(studio, fixture_images, tmp_path):
    before, dirs = _sessions_in_db(studio.data_dir), _dirs(studio.data_dir)
    items = [dict(seed=1, round=1, state=1, viewed=True), dict(seed=2, round=2, state=0)]
    with pytest.raises(CensorError, match="viewed flag"):
        studio.import_session(_bundle(tmp_path / "v.zip", _images(fixture_images, 2), items))
    assert _sessions_in_db(studio.data_dir) == before and _dirs(studio.data_dir) == dirs


def test_session_import_is_one_transaction_and_linear(studio, fixture_images, tmp_path):
    def timed(n):
        items = [dict(seed=i, round=i, state=i % 3, viewed=bool(i % 2)) for i in range(n)]
        bundle = _bundle(tmp_path / f"{n}.zip", _images(fixture_images, n), items)
        commits = []
        studio.store._db.set_trace_callback(lambda sql: commits.append(sql) if sql.strip() == "COMMIT" else None)
        t = time.perf_counter()
        sid = studio.import_session(bundle)
        took = time.perf_counter() - t
        studio.store._db.set_trace_callback(None)
        return sid, took, len(commits), items

    _, small, _, _ = timed(MAX_SESSION_ITEMS // 4)
    sid, large, commits, items = timed(MAX_SESSION_ITEMS)  # single-item rounds
    assert commits <= 2  # the session and all its items in one transaction
    got = studio.store.items(sid, limit=10**6)
    assert [(it["seed"], it["round"], it["state"], it["viewed"]) for it in got] == \
        [(it["seed"], it["round"], it["state"], it["viewed"]) for it in items]
    assert large < 12 * small + 1.0, (small, large)  # 4x the items: linear is ~4x, quadratic 16x


def test_commits_are_durable_across_power_loss(studio):
    (mode,), = studio.store._db.execute("PRAGMA synchronous").fetchall()
    assert mode == 2  # FULL: the WAL is synced on every commit, before the click is acknowledged

