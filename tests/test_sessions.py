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
