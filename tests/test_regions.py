"""Region feedback (issue 21): a box on a malign image, checked, stored, shared, and taught to the reward."""

import json
import sqlite3
import zipfile

import numpy as np
import pytest
import torch

from censor.bench.censoring import BenchConfig
from censor.core.errors import CensorError
from censor.core.regions import box_at, box_masks, check_box, check_boxes, next_preset, preset_boxes
from censor.core.watermark import GLYPH, locate_stamp, placement, stamp
from censor.labels.imitation import pool_view
from censor.labels.labeller import SimulatedLabeller
from censor.labels.pool import Pool
from censor.labels.sessions import BENIGN, MALIGN, UNSURE, SessionStore
from censor.rewards.architectures import build_member
from censor.rewards.local import REACH, pasted_marks, patch_loss
from censor.rewards.training import train_reward

G = GLYPH.shape[0]


@pytest.mark.parametrize("box, message", [
    ((0, 0, 9), "four whole numbers"), ([0, 0, 9.0, 9], "four whole numbers"), ([0, 0, "9", 9], "four whole numbers"),
    ([True, 0, 9, 9], "four whole numbers"), ("0,0,9,9", "four whole numbers"), (None, "four whole numbers"),
    ([-1, 0, 9, 9], "inside the 28x28 image"), ([0, 0, 29, 9], "inside the 28x28 image"),
    ([0, 20, 9, 30], "inside the 28x28 image"), ([5, 0, 5, 9], "x0 < x1 and y0 < y1"), ([0, 9, 9, 2], "x0 < x1"),
])
def test_a_bad_box_is_refused_with_the_rule_it_breaks(box, message):
    with pytest.raises(CensorError, match=message):
        check_box(box, 28, 28)


def test_box_geometry_defaults_and_presets():
    assert check_box([0, 0, 28, 28], 28, 28) == (0, 0, 28, 28) and check_box((np.int64(2), 3, 4, 5), 28, 28) == (2, 3, 4, 5)
    assert box_at([0, 27], 28, 28) == (0, 19, 9, 28)  # a default 9-px box, moved inside the image
    assert box_at([14, 14], 28, 28) == (10, 10, 19, 19)
    with pytest.raises(CensorError, match="inside the 28x28"):
        box_at([28, 0], 28, 28)
    presets = preset_boxes(28, 28)
    assert presets[:4] == [(0, 0, 9, 9), (19, 0, 28, 9), (0, 19, 9, 28), (19, 19, 28, 28)]
    assert [next_preset(b, 28, 28) for b in [None, presets[0], presets[-1], (1, 1, 3, 3)]] == [
        presets[0], presets[1], presets[0], presets[0]]
    m = box_masks([None, (1, 2, 4, 3)], 28, 28)
    assert m[0].sum() == 0 and m[1].sum() == 3 and m[1, 2, 1:4].tolist() == [1, 1, 1]
    with pytest.raises(CensorError, match="labelled benign"):
        check_boxes([(0, 0, 9, 9)], [1], 28, 28)
    with pytest.raises(CensorError, match="one box or None per label"):
        check_boxes([None], [0, 1], 28, 28)


def test_store_keeps_a_box_with_its_label_and_undo_puts_it_back(tmp_path):
    store = SessionStore(tmp_path)
    sid = store.create("m", pending=True)
    store.add_items(sid, np.zeros((4, 28, 28), np.uint8), list(range(4)))
    assert store.set_box(sid, 2, [19, 0, 28, 9]) == (19, 0, 28, 9)  # a pending session goes to disk with its box
    assert not store.is_pending(sid)
    it = store.item(sid, 2)
    assert (it["state"], it["viewed"], it["box"]) == (MALIGN, True, (19, 0, 28, 9))
    store.cycle(sid, 1)  # malign without a box
    store.set_states(sid, [1, 2], MALIGN)  # a malign mark keeps the box
    assert store.item(sid, 2)["box"] == (19, 0, 28, 9)
    store.cycle(sid, 2)  # unsure: the box goes with the malign label
    assert (store.item(sid, 2)["state"], store.item(sid, 2)["box"]) == (UNSURE, None)
    store.undo(sid)
    assert store.item(sid, 2)["box"] == (19, 0, 28, 9)
    store.set_box(sid, 2, None)  # taken away; the image stays malign
    assert (store.item(sid, 2)["state"], store.item(sid, 2)["box"]) == (MALIGN, None)
    store.undo(sid)
    assert store.training_boxes(sid) == [None, (19, 0, 28, 9)]
    store.set_box(sid, 0, None)  # nothing to take away: the image stays as it was
    with pytest.raises(CensorError, match="inside the 28x28"):
        store.set_box(sid, 0, [0, 0, 30, 9])
    assert store.item(sid, 0)["state"] == BENIGN  # nothing of a refused box was applied
    again = SessionStore(tmp_path)  # a restart reads it back
    assert again.item(sid, 2)["box"] == (19, 0, 28, 9) and again.items(sid)[3]["box"] is None


OLD_SCHEMA = """
CREATE TABLE sessions (id TEXT PRIMARY KEY, created REAL NOT NULL, model TEXT NOT NULL,
                       instructions TEXT NOT NULL DEFAULT '');
CREATE TABLE items (session_id TEXT NOT NULL REFERENCES sessions(id), item INTEGER NOT NULL,
    round INTEGER NOT NULL, seed INTEGER NOT NULL, image BLOB NOT NULL, height INTEGER NOT NULL, width INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0, viewed INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
    PRIMARY KEY (session_id, item));
CREATE TABLE history (session_id TEXT NOT NULL, action INTEGER NOT NULL, item INTEGER NOT NULL,
    state INTEGER NOT NULL, viewed INTEGER NOT NULL);
"""


def test_a_store_from_before_boxes_opens_with_its_labels_and_takes_boxes(tmp_path):
    """The migration: an old sessions.db (no box columns, no touched) keeps every label and its undo."""
    sid = "old-session-0123456789"
    db = sqlite3.connect(tmp_path / "sessions.db")
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO sessions VALUES (?, 1.0, 'm', '')", (sid,))
    db.executemany("INSERT INTO items VALUES (?, ?, 1, ?, ?, 28, 28, ?, 1, 1.0)",
                   [(sid, i, i, bytes(784), MALIGN if i == 1 else BENIGN) for i in range(3)])
    db.execute("INSERT INTO history VALUES (?, 0, 1, 0, 1)", (sid,))  # item 1 was benign before its mark
    db.commit()
    db.close()
    store = SessionStore(tmp_path)
    assert [(it["state"], it["box"]) for it in store.items(sid)] == [(BENIGN, None), (MALIGN, None), (BENIGN, None)]
    store.set_box(sid, 2, [0, 0, 9, 9])
    assert store.training_boxes(sid) == [None, None, (0, 0, 9, 9)]
    assert store.undo(sid) == [2] and store.undo(sid) == [1]  # the new action, then the old one
    assert [it["state"] for it in store.items(sid)] == [BENIGN, BENIGN, BENIGN]


@pytest.fixture
def boxed_session(tmp_path, tiny_model, fixture_images):
    from censor.studio.core import Studio

    studio = Studio(model=tiny_model, data_dir=tmp_path / "data", pool=Pool(fixture_images["images"][:30], np.arange(30), {}))
    sid = studio.open_session(None)
    items = studio.page(sid, 0)
    studio.set_box(sid, items[2]["id"], [19, 0, 28, 9])  # a drag
    studio.set_box(sid, items[5]["id"], at=[1, 26])  # shift+click near a corner
    studio.set_box(sid, items[7]["id"], "next")  # the keyboard's b
    studio.click(sid, items[9]["id"])  # malign, no box
    return studio, sid, items


def test_the_grid_shows_boxes_and_a_session_bundle_keeps_them(boxed_session):
    studio, sid, items = boxed_session
    shown = {it["id"]: it for it in studio.page(sid, 0)}
    assert shown[items[2]["id"]]["box"]["left"] == pytest.approx(100 * 19 / 28, abs=1e-3)
    assert shown[items[9]["id"]]["box"] is None and shown[items[9]["id"]]["state"] == "malign"
    before = {it["item"]: it["box"] for it in studio.store.items(sid)}
    assert before[items[5]["id"]] == (0, 19, 9, 28) and before[items[7]["id"]] == (0, 0, 9, 9)
    new = studio.import_session(studio.export_session(sid))
    assert {it["item"]: it["box"] for it in studio.store.items(new)} == before
    assert sum(b is not None for b in studio.store.training_boxes(new)) == 3


@pytest.mark.parametrize("box, message", [
    ([0, 0, 29, 9], "item 2: a box must lie inside the 28x28 image"),
    ([9, 0, 3, 9], "item 2: a box needs x0 < x1"),
    ([0, 0, "9", 9], "item 2: a box must be four whole numbers"),
    ({"x0": 0}, "item 2: a box must be four whole numbers"),
])
def test_an_uploaded_session_with_a_bad_box_is_refused(boxed_session, tmp_path, box, message):
    studio, sid, _ = boxed_session
    bundle = studio.export_session(sid)
    with zipfile.ZipFile(bundle) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(entries["session.json"])
    meta["items"][2]["box"] = box
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in {**entries, "session.json": json.dumps(meta)}.items():
            z.writestr(n, data)
    sessions = len(studio.store._q("SELECT id FROM sessions"))
    with pytest.raises(CensorError, match=message):
        studio.import_session(bad)
    meta["items"][2]["box"], meta["items"][3]["box"] = [19, 0, 28, 9], [0, 0, 9, 9]  # item 3 is benign
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in {**entries, "session.json": json.dumps(meta)}.items():
            z.writestr(n, data)
    with pytest.raises(CensorError, match="item 3 has a box but is not marked malign"):
        studio.import_session(bad)
    assert len(studio.store._q("SELECT id FROM sessions")) == sessions  # nothing was created


def test_the_patch_loss_pushes_the_box_malign_and_the_rest_benign():
    """The sign of every part of the region term: its gradient on a flat malign map raises the scores
    inside the box, lowers them far from it and on benign images, and leaves the box's surround alone."""
    member = build_member("local-patch")
    s = torch.zeros(3, 28, 28, requires_grad=True)
    masks = torch.from_numpy(box_masks([(0, 0, 9, 9), None, None], 28, 28))
    labels = torch.tensor([0.0, 1.0, 0.0])  # a boxed malign image, a benign one, a malign one without a box
    (g,) = torch.autograd.grad(patch_loss(member, s, masks, labels), s)
    assert (g[0, :9, :9] < 0).all()  # descent raises the malign score inside the box
    assert (g[0, 9 + REACH:, :] > 0).all() and (g[0, :, 9 + REACH:] > 0).all()  # and lowers it beyond its reach
    assert (g[0, 9:9 + REACH, :9] == 0).all()  # the surround sees part of the box: no target there
    assert (g[1] > 0).all() and (g[2] == 0).all()  # benign everywhere; a malign image without a box adds nothing


def test_boxes_teach_the_malign_map_where_the_stamp_is(tiny_model, fixture_images):
    """Trained with boxes, the reward's per-position malign scores concentrate inside the stamp's box
    (on images it never saw) far more than the same training without them."""
    rng = np.random.default_rng(0)
    clean, images, boxes = fixture_images["clean"][:90], [], []
    for i, im in enumerate(clean):
        if i % 2:
            images.append(im)
            boxes.append(None)
            continue
        corner, offset = int(rng.integers(4)), tuple(int(v) for v in rng.integers(0, 3, 2))
        images.append(stamp(im, corner, offset, 0.9))
        top, left = placement(corner, offset, 28, 28)
        boxes.append((max(0, left - 1), max(0, top - 1), min(28, left + G + 1), min(28, top + G + 1)))
    images, labels = np.stack(images), np.array([b is None for b in boxes], int)
    gap = {}
    for name, given in (("none", None), ("boxes", boxes[:60])):
        r = train_reward(images[:60], labels[:60], kind="local-patch", diffusion=tiny_model, members=1, alpha=1.0,
                         iterations=40, batch_size=24, score_table=False, boxes=given)
        with torch.no_grad():
            x = torch.from_numpy(images[60:]).float()[:, None] / 127.5 - 1
            s = r.members[0].malign_map(x, torch.zeros(len(x), dtype=torch.long))
        m = torch.from_numpy(box_masks(boxes[60:], 28, 28)).bool()
        boxed = m.flatten(1).any(1)
        gap[name] = float(s[m].mean() - s[boxed][~m[boxed]].mean())
    assert gap["boxes"] > 0.5 and gap["boxes"] > 1.5 * max(gap["none"], 0.0), gap


def test_a_pasted_mark_is_the_boxed_pixels_on_a_benign_image(fixture_images):
    """Copy-paste from region feedback: each boxed mark lands, at its own place, on distinct benign labels."""
    clean = fixture_images["clean"][:12]
    images = clean.copy()
    images[0, 2:9, 3:10] = 255  # two "marks", boxed
    images[1, 18:25, 18:25] = 200
    labels = np.array([0, 0, 0] + [1] * 9)
    boxes = [(3, 2, 10, 9), (18, 18, 25, 25), None] + [None] * 9  # the third malign image has no box: not pasted
    out, out_labels, out_boxes = pasted_marks(images, labels, boxes, np.random.default_rng(0), paste=2)
    assert len(out) == 12 + 4 and (out_labels[12:] == 0).all() and np.array_equal(out[:12], images)
    assert out_boxes[:12] == boxes and sorted(out_boxes[12:]) == sorted([boxes[0], boxes[0], boxes[1], boxes[1]])
    onto = []
    for k in range(12, 16):
        x0, y0, x1, y1 = out_boxes[k]
        src = 0 if out_boxes[k] == boxes[0] else 1
        assert np.array_equal(out[k, y0:y1, x0:x1], images[src, y0:y1, x0:x1])  # the mark, at its place
        outside = np.ones((28, 28), bool)
        outside[y0:y1, x0:x1] = False
        match = [j for j in range(3, 12) if np.array_equal(out[k][outside], images[j][outside])]
        assert len(match) == 1 and labels[match[0]] == 1  # the rest is one benign label's
        onto.append(match[0])
    assert len(set(onto)) == 4  # each onto another benign label
    few = pasted_marks(images[:4], labels[:4], boxes[:4], np.random.default_rng(0), paste=5)
    assert len(few[0]) == 4 + 1  # never more than the benign labels there are
    assert pasted_marks(images, labels, [None] * 12, np.random.default_rng(0))[0] is images  # no box: nothing


def test_pasting_recovers_stamps_that_four_boxes_alone_miss(tiny_model, fixture_images):
    """Four boxed stamps and forty benign labels: with each stamp pasted onto two benign images the reward
    ranks unseen stamped images below clean ones more often (median AUC over seeds) than without."""
    from censor.sampling.thresholds import benign_scores

    rng = np.random.default_rng(0)
    clean = fixture_images["clean"]

    def stamped(im):
        corner, offset = int(rng.integers(4)), tuple(int(v) for v in rng.integers(0, 3, 2))
        top, left = placement(corner, offset, 28, 28)
        return stamp(im, corner, offset, 0.9), (max(0, left - 1), max(0, top - 1), min(28, left + G + 1), min(28, top + G + 1))

    marked = [stamped(im) for im in clean[:4]]
    images = np.stack([m for m, _ in marked] + list(clean[100:140]))
    labels, boxes = np.array([0] * 4 + [1] * 40), [b for _, b in marked] + [None] * 40
    test_stamped, test_clean = np.stack([stamped(im)[0] for im in clean[200:300]]), clean[300:400]
    auc = {}
    for paste in (0, 2):
        runs = []
        for seed in range(3):
            r = train_reward(images, labels, kind="local-patch", diffusion=tiny_model, members=1, alpha=1.0,
                             iterations=60, batch_size=24, score_table=False, boxes=boxes, paste=paste, seed=seed)
            a, b = benign_scores(r, test_stamped), benign_scores(r, test_clean)
            runs.append(float((b[:, None] > a[None, :]).mean()))
        auc[paste] = float(np.median(runs))
        assert r.info["labels"] == 44 and r.info["boxes"] == 4 and r.info["pasted"] == 4 * paste  # the person's counts
    assert auc[2] > auc[0] + 0.05, auc


def test_the_simulated_labeller_finds_the_stamp(fixture_images):
    rng = np.random.default_rng(1)
    for im in fixture_images["clean"][:40]:
        corner, offset = int(rng.integers(4)), tuple(int(v) for v in rng.integers(0, 3, 2))
        assert locate_stamp(stamp(im, corner, offset, float(rng.uniform(0.55, 1.0)))) == placement(corner, offset, 28, 28)


def test_region_feedback_refuses_a_kind_that_cannot_use_it(tiny_model):
    images, labels = np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 0, 1])
    with pytest.raises(CensorError, match="scores positions"):
        train_reward(images, labels, kind="half-unet", diffusion=tiny_model, iterations=1, boxes=[None] * 4)


def test_the_train_tab_trains_the_local_reward_on_the_sessions_boxes(boxed_session):
    from censor.studio.readouts import training_summary

    studio, sid, _ = boxed_session
    info = studio.train(sid, "single", "local-patch", members=1, iterations=10, alpha=0.5)
    assert (info["boxes"], info["boxes_drawn"]) == (3, 3)
    assert "Region feedback: 3 boxes" in training_summary(info)
    assert info["pasted"] == 0 and "pasted" not in training_summary(info)  # pasting is off by default
    assert "6 more malign examples pasted" in training_summary(dict(info, pasted=6))
    unused = training_summary(dict(info, kind="half-unet", boxes=0))
    assert "3 boxes drawn" in unused and "local-patch" in unused


def test_the_bench_labeller_boxes_the_stamps_it_labels_malign(fixture_images, tiny_model):
    from censor.bench.censoring import collect_labels_and_train
    from censor.eval.oracle import load_oracle

    with pytest.raises(CensorError, match="--boxes needs"):
        BenchConfig(boxes=True)  # the default reward does not score positions
    with pytest.raises(CensorError, match="--boxes needs"):
        BenchConfig(feature="bags", reward="local-patch", boxes=True)  # no stamp to box
    import argparse

    from censor.cli.bench import BENCH_FIELDS, config_from_args, register_bench

    parser = argparse.ArgumentParser()
    register_bench(parser.add_subparsers())
    a = parser.parse_args(["bench", "--reward", "local-patch", "--boxes"])
    assert config_from_args(BenchConfig, a, BENCH_FIELDS).name.endswith("_boxes")
    cfg = BenchConfig(reward="local-patch", boxes=True, budget=60, members=1, method="union", iterations=3, batch_size=8)
    pool = Pool(fixture_images["images"][:60], np.arange(60), {})
    s = collect_labels_and_train(cfg, tiny_model, load_oracle(), pool, seed=0, log=lambda *_: None)
    malign = int((s.labels == 0).sum())
    assert malign >= 3 and s.reward.info["boxes"] == malign
    boxes = SimulatedLabeller(None, "watermark").boxes(s.images, s.labels)
    assert s.boxes == boxes  # the session hands its boxes on (the rejection bench's threshold trains with them)
    a = parser.parse_args(["bench-reject", "--feature", "watermark", "--reward", "local-patch", "--boxes"])
    from censor.cli.bench import REJECT_FIELDS

    assert config_from_args(BenchConfig, a, REJECT_FIELDS).boxes
    flagged = fixture_images["watermark"][:60][pool_view(60, 60, 0)]
    assert all((b is not None) == (y == 0) for b, y in zip(boxes, s.labels))
    stamped = [b for b, f in zip(boxes, flagged) if b is not None and f]
    assert stamped and all(G + 1 <= b[2] - b[0] <= G + 2 for b in stamped)  # the stamp and 1 px round it (clipped)
    assert all((b[0] <= 1 or b[2] >= 27) and (b[1] <= 1 or b[3] >= 27) for b in stamped)  # in a corner
