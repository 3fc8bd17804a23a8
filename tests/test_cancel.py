"""Issue 20: every long job shows where it is and stops on Cancel. The gate's ``cancel`` reaches a running
job from another thread through its progress callback (the only place a worker thread can be stopped),
frees the browser's place at once and never carries over to its next job; the long loops (training,
the held-out check, strict mode's threshold) call that callback often and say what they are doing."""

import threading
import time

import numpy as np
import pytest

from censor.core.errors import CensorError, JobCancelled
from censor.core.progress import part, reporter
from censor.labels.pool import Pool
from censor.rewards.validation import held_out_accuracy
from censor.sampling.thresholds import STRICT_FILE
from censor.studio.core import Studio
from censor.studio.space import JobGate

WAIT_S = 120  # generous: the machine is shared; a working cancel lands in well under a second


@pytest.fixture
def studio(tmp_path, tiny_model, fixture_images):
    """A session with 40 viewed labels (8 malign): enough for the held-out check and strict mode."""
    studio = Studio(model=tiny_model, data_dir=tmp_path / "data", pool=Pool(fixture_images["images"][:40],
                                                                             np.arange(40), {}))
    sid = studio.open_session(None, "mark bags")
    items = studio.page(sid, 0) + studio.page(sid, 1)
    for it in items[::5]:
        studio.click(sid, it["id"])
    return studio, sid


class Watcher:
    """The app's side of a job's progress: records (time, fraction, desc); once a desc contains ``pause_at``
    it signals ``reached`` and waits for the test thread to cancel, so the cancel lands mid-loop."""

    def __init__(self, pause_at: str | None = None):
        self.calls, self.pause_at = [], pause_at
        self.reached, self.cancelled = threading.Event(), threading.Event()

    def __call__(self, fraction, desc=None):
        self.calls.append((time.perf_counter(), fraction, desc))
        if self.pause_at and self.pause_at in (desc or "") and not self.reached.is_set():
            self.reached.set()
            assert self.cancelled.wait(WAIT_S)


def run_job(gate, client, fn, watcher):
    """``fn(tick)`` as the app runs a heavy job (reserved, then inside the gate) in a worker thread."""
    out = {}

    def work():
        try:
            gate.reserve(client)
            with gate.job(client, watcher) as tick:
                out["result"] = fn(tick)
        except Exception as e:  # noqa: BLE001 (the test reads it)
            out["error"] = e
    thread = threading.Thread(target=work)
    thread.start()
    return thread, out


def cancel_when_reached(gate, client, watcher, thread) -> int:
    """Cancel from this (another) thread once the job reached its pause; returns progress calls until then."""
    assert watcher.reached.wait(WAIT_S), "the job never reported the stage it was to be cancelled in"
    seen = len(watcher.calls)
    assert gate.cancel(client) is True
    watcher.cancelled.set()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    return seen


def test_cancel_with_nothing_running_or_queued_says_so():
    gate = JobGate()
    assert gate.cancel("a") is False
    with gate.job("a") as tick:
        tick(1.0)
    assert gate.cancel("a") is False  # the job is over: nothing to stop, and nothing is remembered
    with gate.job("a") as tick:
        tick(1.0)


def test_cancel_stops_training_mid_member_frees_the_place_and_does_not_leak(studio):
    studio, sid = studio
    gate = JobGate()
    watcher = Watcher(pause_at="member 2 of 2 · iteration 5 of")
    thread, out = run_job(gate, "a", lambda tick: studio.train(sid, "ensemble", "ddpm-encoder", 2, 300, 0.1,
                                                               progress=tick), watcher)
    seen = cancel_when_reached(gate, "a", watcher, thread)
    assert isinstance(out.get("error"), JobCancelled), out
    assert str(out["error"]) == "cancelled; nothing was saved from this run"
    assert len(watcher.calls) == seen  # the very next check raised: nothing ran on after the cancel
    assert not studio.has_reward(sid)  # nothing of the run was saved
    # the place is free at once, and the next job of the same browser runs to the end
    again = Watcher()
    thread, out = run_job(gate, "a", lambda tick: studio.train(sid, "ensemble", "ddpm-encoder", 2, 20, 0.1,
                                                               progress=tick), again)
    thread.join(WAIT_S)
    assert "error" not in out and studio.has_reward(sid) and out["result"]["members"] == 2
    assert again.calls[-1][1] == pytest.approx(1.0)
    assert gate.cancel("a") is False


def test_cancel_lands_inside_strict_modes_held_out_threshold(studio):
    studio, sid = studio
    studio.train(sid, "ensemble", "ddpm-encoder", 2, 200, 0.1)
    gate = JobGate()
    watcher = Watcher(pause_at="held-out threshold: fold 2 of 5 · member 1 of 2 · iteration 3 of")
    thread, out = run_job(gate, "b", lambda tick: studio.censored_gallery(
        sid, "time", 2.0, 0, 0, steps=5, seed=0, count=4, strict=True, strict_p=None, progress=tick), watcher)
    seen = cancel_when_reached(gate, "b", watcher, thread)
    assert isinstance(out.get("error"), JobCancelled), out
    assert len(watcher.calls) == seen
    assert watcher.calls[-1][2].startswith("strict mode · held-out threshold: fold 2 of 5 · member 1 of 2 · iteration 3 of")
    assert not (studio.reward_dir(sid) / STRICT_FILE).exists()  # no half-made threshold is cached
    fractions = [c[1] for c in watcher.calls]
    assert fractions == sorted(fractions) and 0 < fractions[-1] < 0.5


def test_a_queued_job_cancelled_before_it_starts_is_refused_and_its_place_is_free():
    gate = JobGate(per_client=1)
    gate.reserve("a")
    assert gate.cancel("a") is True
    with pytest.raises(JobCancelled):  # Gradio did not drop it: it is refused when it starts
        with gate.job("a"):
            pytest.fail("a cancelled job ran")
    gate.reserve("a")  # the place was free at once; this new job is not touched by the old cancel
    with gate.job("a") as tick:
        tick(0.5)
    gate.reserve("a")
    assert gate.cancel("a") is True
    gate.reserve("a")  # a click after the Cancel queues at once (the cancelled one no longer counts)
    with gate.job("a") as tick:  # ... and runs: it holds the live place
        tick(0.5)


def test_the_gates_tick_forwards_text_to_callbacks_that_take_it_and_not_to_others():
    gate, both, plain = JobGate(), [], []
    with gate.job("a", lambda f, desc=None: both.append((f, desc))) as tick:
        tick(0.25, desc="member 1 of 2")
        tick(0.5)
    with gate.job("a", plain.append) as tick:
        tick(0.25, desc="member 1 of 2")
    assert both == [(0.25, "member 1 of 2"), (0.5, None)] and plain == [0.25]
    stretch = part(lambda f, desc=None: both.append((f, desc)), 0.5, 0.5, "held-out check")
    stretch(0.5, desc="iteration 3 of 10")
    assert both[-1] == (0.75, "held-out check · iteration 3 of 10")
    assert reporter(None) is None and part(None, 0, 1) is None


def test_held_out_check_reports_often_and_in_order_and_says_so(tiny_model, fixture_images):
    images, labels = fixture_images["images"][:60], np.array([0] * 12 + [1] * 48)
    calls = []
    acc = held_out_accuracy(images, labels, kind="ddpm-encoder", diffusion=tiny_model, iterations=40, alpha=0.1,
                            progress=lambda f, desc=None: calls.append((f, desc)))
    fractions = [f for f, _ in calls]
    assert len(calls) >= 20 + 32  # every iteration (half of 40) and every encoding pass (32 views)
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any("iteration 20 of 20" in d for _, d in calls) and any("encoding 48 labels" in d for _, d in calls)
    assert acc == held_out_accuracy(images, labels, kind="ddpm-encoder", diffusion=tiny_model, iterations=40,
                                    alpha=0.1)  # listening changes nothing


def test_no_long_stretch_of_training_runs_without_a_progress_call(studio):
    studio, sid = studio
    watcher = Watcher()
    start = time.perf_counter()
    studio.train(sid, "ensemble", "ddpm-encoder", 3, 300, 0.1, progress=watcher)
    stamps = [start] + [c[0] for c in watcher.calls] + [time.perf_counter()]
    gaps = np.diff(stamps)
    # relative, not absolute: the machine is shared. ~1000 calls; the longest gap is a small share of the run
    assert gaps.max() < 0.1 * (stamps[-1] - stamps[0]), (gaps.max(), stamps[-1] - stamps[0])
    descs = [c[2] for c in watcher.calls]
    assert "held-out check (1 of 2) · iteration 1 of 150" in descs
    assert "final reward (2 of 2) · member 3 of 3 · iteration 300 of 300" in descs
    assert any(d.startswith("final reward (2 of 2) · benign-score table") for d in descs)
    fractions = [c[1] for c in watcher.calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_a_job_past_its_deadline_still_stops_with_the_time_limit_message():
    now = [0.0]
    gate = JobGate(time_limit=60, clock=lambda: now[0])
    with pytest.raises(CensorError, match="time limit") as e:
        with gate.job("a") as tick:
            now[0] = 61
            tick(0.5)
    assert not isinstance(e.value, JobCancelled)
