"""Session storage: click cycle, counts, persistence across reopen and a killed writer, isolation."""

import subprocess
import sys

import numpy as np
import pytest

from censor.core.errors import CensorError
from censor.labels.sessions import BENIGN, MALIGN, UNSURE, SessionStore


@pytest.fixture
def store(tmp_path):
    return SessionStore(tmp_path / "data")


def test_click_cycle_counts_and_training_data(store, fixture_images):
    sid = store.create("embedded", "mark bags")
    ids = store.add_items(sid, fixture_images["images"][:10], seeds=range(10))
    assert ids == list(range(10))
    store.mark_viewed(sid, ids[:6])
    assert [store.cycle(sid, 0) for _ in range(4)] == [MALIGN, UNSURE, BENIGN, MALIGN]
    store.set_state(sid, 1, UNSURE)
    c = store.counts(sid)
    assert (c.viewed, c.malign, c.unsure, c.benign, c.total) == (6, 1, 1, 4, 10)
    images, labels = store.training_data(sid)
    assert len(images) == 5 and labels.tolist() == [0, 1, 1, 1, 1]
    np.testing.assert_array_equal(images[0], fixture_images["images"][0])
    # clicking an image you never paged to counts it as viewed
    store.cycle(sid, 9)
    assert store.counts(sid).viewed == 7


def test_labels_survive_reopening_and_a_killed_process(tmp_path, fixture_images):
    root = tmp_path / "data"
    store = SessionStore(root)
    sid = store.create("embedded")
    store.add_items(sid, fixture_images["images"][:5], seeds=range(5))
    code = (f"from censor.labels.sessions import SessionStore; import os; s = SessionStore({str(root)!r}); "
            f"s.cycle({sid!r}, 2); s.cycle({sid!r}, 4); os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    again = SessionStore(root)
    states = [it["state"] for it in again.items(sid)]
    assert states == [BENIGN, BENIGN, MALIGN, BENIGN, MALIGN]


def test_sessions_are_isolated_and_ids_unguessable(store, fixture_images):
    a, b = store.create("embedded"), store.create("embedded")
    assert a != b and len(a) >= 20
    store.add_items(a, fixture_images["images"][:3], seeds=[1, 2, 3])
    store.cycle(a, 0)
    assert store.counts(b).total == 0 and store.items(b) == []
    for bad in ("", "../etc", "x" * 10, a[:-1] + "!"):
        with pytest.raises(CensorError, match="unknown session"):
            store.counts(bad)
    with pytest.raises(CensorError, match="no image 7"):
        store.cycle(a, 7)


def test_undo_puts_back_exactly_what_the_last_mark_changed(tmp_path):
    """A click and a whole-page mark are one action each; undo restores states and viewed flags."""
    store = SessionStore(tmp_path)
    sid = store.create("m", pending=True)
    store.add_items(sid, np.zeros((6, 28, 28), np.uint8), list(range(6)))
    assert store.undo(sid) == [] and not store.can_undo(sid)  # a pending session has no marks
    store.mark_viewed(sid, [0, 1, 2])
    store.cycle(sid, 1)  # malign; puts the session on disk
    store.set_states(sid, [0, 1, 2, 4], UNSURE)  # item 4 was never shown
    before_undo = [(it["state"], it["viewed"]) for it in store.items(sid)]
    assert before_undo[:5] == [(UNSURE, True), (UNSURE, True), (UNSURE, True), (BENIGN, False), (UNSURE, True)]
    assert sorted(store.undo(sid)) == [0, 1, 2, 4]
    assert [(it["state"], it["viewed"]) for it in store.items(sid)][:5] == [
        (BENIGN, True), (MALIGN, True), (BENIGN, True), (BENIGN, False), (BENIGN, False)]
    assert store.undo(sid) == [1] and store.counts(sid).malign == 0
    assert store.undo(sid) == [] and not store.can_undo(sid)
    with pytest.raises(CensorError, match="no image 99"):
        store.set_states(sid, [0, 99], MALIGN)
    assert store.counts(sid).malign == 0  # nothing of a refused action was applied


def test_undo_history_is_bounded_and_goes_with_the_session(tmp_path):
    from censor.labels.marks import UNDO_DEPTH

    store = SessionStore(tmp_path)
    sid = store.create("m")
    store.add_items(sid, np.zeros((2, 28, 28), np.uint8), [0, 1])
    for _ in range(UNDO_DEPTH + 5):
        store.cycle(sid, 0)
    (n,), = store._q("SELECT COUNT(DISTINCT action) FROM history WHERE session_id=?", (sid,))
    assert n == UNDO_DEPTH
    store.delete(sid)
    assert store._q("SELECT COUNT(*) FROM history")[0][0] == 0
