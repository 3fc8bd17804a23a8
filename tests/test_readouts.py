"""Honest readouts (issue 20): figures with counts and intervals, warnings where they cannot be
trusted; the cached baseline; the cost of a guidance setting, held to a counted run."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from censor.core.settings import DEFAULT_GUIDANCE, MIN_BASELINE_MALIGN
from censor.eval.drift import DRIFT_MESSAGE
from censor.eval.metrics import pooled_rate, wilson_interval
from censor.labels.pool import Pool
from censor.rewards.validation import balanced_accuracy, class_hits
from censor.sampling.cost import cost_readout, evaluations, relative_cost
from censor.sampling.guidance import build_guidance
from censor.sampling.loop import sample, seeds_for
from censor.studio.readouts import gallery_readout, held_out_interval, oracle_lines, training_summary, training_warnings


# ---- training --------------------------------------------------------------------------------
def _info(labels, malign, predicted=None, truth=None):
    info = dict(kind="half-unet", members=2, labels=labels, malign_labels=malign, train_seconds=3.04,
                held_out_accuracy=None, held_out_counts=None, held_out_ci=None)
    if truth is not None:
        counts = class_hits(predicted, truth)
        info.update(held_out_accuracy=balanced_accuracy(predicted, truth), held_out_counts=counts,
                    held_out_ci=list(held_out_interval(counts)))
    return info


def test_held_out_interval_is_the_mean_of_the_class_wilson_bounds():
    counts = class_hits(np.array([0, 1, 1, 1, 1, 0]), np.array([0, 0, 1, 1, 1, 1]))
    assert counts == dict(malign_hits=1, malign_n=2, benign_hits=3, benign_n=4)
    (a, b), (c, d) = wilson_interval(1, 2), wilson_interval(3, 4)
    assert held_out_interval(counts) == pytest.approx(((a + c) / 2, (b + d) / 2))
    only_benign = dict(malign_hits=0, malign_n=0, benign_hits=3, benign_n=4)
    assert held_out_interval(only_benign) == pytest.approx(wilson_interval(3, 4))


def test_a_reward_from_twenty_labels_at_chance_is_called_untrustworthy():
    # the user's case: 20 labels, every bag marked (3), the held-out split scored at 50%
    truth = np.array([0, 1, 1, 1])
    info = _info(20, 3, np.ones(4, int), truth)
    assert info["held_out_accuracy"] == 0.5
    lo, hi = info["held_out_ci"]
    warnings = training_warnings(info)
    assert warnings == [
        "only 3 malign labels: too few examples of what to censor (fewer than 5); mark more malign images "
        "(Show most informative first brings them forward)",
        f"held-out balanced accuracy 50% [95% CI {100 * lo:.0f}–{100 * hi:.0f}%] is no better than chance (50%): "
        "label more images, above all malign ones, before trusting the reward"]
    text = training_summary(info)
    assert text.startswith("Trained a half-unet reward (2 member(s), 20 labels: 3 malign) in 3.0 s. Held-out "
                           f"balanced accuracy 50% [95% CI {100 * lo:.0f}–{100 * hi:.0f}%] (mean of the malign "
                           "and benign hit rates, on 4 held-out labels).")
    assert text.count("\n\n⚠ ") == 2 and "⚠ Held-out balanced accuracy 50%" in text


def test_enough_labels_and_a_clear_held_out_accuracy_raise_no_warning():
    truth = np.array([0] * 20 + [1] * 40)
    info = _info(300, 100, truth.copy(), truth)
    assert info["held_out_ci"][0] > 0.5 and training_warnings(info) == []
    assert "⚠" not in training_summary(info)
    few = _info(12, 9)
    assert training_warnings(few)[0].startswith("only 12 judged labels: a reward from fewer than 20")
    assert training_warnings(few)[1].startswith("only 3 benign labels")
    assert "(Too few labels for a held-out check.)" in training_summary(few)


# ---- the gallery readout ---------------------------------------------------------------------
def _side(k, n, **extra):
    return dict(pooled_rate(k, n), **extra)


def _oracle(base_k, cens_k, n=32, tv=0.08, floor=0.2, recall=0.93):
    return dict(feature="bags", tv_floor=floor, baseline=_side(base_k, n, recall=0.5, confident=0.9),
                censored=_side(cens_k, n, tv=tv, recall=0.46, recall_ratio=recall, confident=0.91))


def test_oracle_line_gives_counts_intervals_tv_recall_and_confidence():
    lines = oracle_lines(_oracle(8, 0))
    b, c = pooled_rate(8, 32)["ci_pct"], pooled_rate(0, 32)["ci_pct"]
    assert b[0] > c[1]
    assert lines[0] == (f"Oracle (bags): baseline 25% [{b[0]:.0f}–{b[1]:.0f}%] (8 of 32) → censored 0% "
                        f"[{c[0]:.0f}–{c[1]:.0f}%] (0 of 32); tv 0.08 to the baseline's benign classes (two halves "
                        "of the baseline differ by 0.20 by chance alone); recall 0.93× the baseline's; "
                        "oracle-confident 91%.")
    assert "1× = as much as the baseline" in lines[1] and len(lines) == 2  # 8 vs 0 of 32: intervals apart


def test_oracle_warns_when_the_baseline_cannot_show_a_drop_or_the_intervals_overlap():
    assert MIN_BASELINE_MALIGN == 5
    one = oracle_lines(_oracle(1, 0))
    assert one[-1] == ("⚠ The baseline holds only 1 bags image in 32: a drop to 0 cannot be told from chance; "
                       "render more images.")
    assert oracle_lines(_oracle(0, 0))[-1].startswith("⚠ The baseline holds only no bags image")  # never silent
    overlap = oracle_lines(_oracle(6, 3))
    assert overlap[-1].startswith("⚠ The two intervals overlap: this gallery does not show that censoring lowered")
    worse = oracle_lines(_oracle(6, 25, tv=0.5, floor=0.2))
    assert "holds more bags images than the baseline, beyond chance" in worse[-2]
    assert worse[-1].startswith("⚠ Tv is beyond what chance alone gives")


def test_gallery_readout_keeps_every_line_in_order_and_user_text_inert():
    drift = dict(censored=dict(tv=0.31, chance=0.2, n=32, drifted=True), baseline=dict(tv=0.1, chance=0.2, n=32,
                                                                                        drifted=False))
    result = dict(baseline=np.zeros((32, 28, 28)), censored=np.zeros((32, 28, 28)), guidance_note="switched",
                  settings=dict(auto=dict(weight=32.0, reason="the probe")), drift=drift,
                  strict=dict(summary="drew 40, dropped 8 (threshold p=0.2)", source="held-out"),
                  reward_malign=dict(baseline=0.25, censored=0.0625), oracle=_oracle(8, 0), fallbacks=3)
    text = gallery_readout(result, "[evil](http://x) <b>", tuned=True, feature="bags")
    parts = text.split("\n\n")
    assert parts[0] == r"Censored side drawn from the \[evil\]\(http\:\/\/x\) &lt;b&gt; adapter."
    assert parts[1:3] == ["Guidance: switched.", "Automatic strength: ω = 32 (the probe)."]
    assert parts[3].startswith("Fidelity (no oracle): drift of the censored gallery from the baseline reweighted "
                               "by the reward 0.31 (baseline itself 0.10; chance alone reaches 0.20 with 32 images).")
    assert parts[4] == "⚠ " + DRIFT_MESSAGE[0].upper() + DRIFT_MESSAGE[1:] + "."
    assert parts[5] == "Strict: drew 40, dropped 8 (threshold p=0.2), held-out threshold."
    carried = gallery_readout(dict(result, strict=dict(result["strict"], pool_share=0.354)), "base model", tuned=False)
    assert ("Strict: drew 40, dropped 8 (threshold p=0.2), held-out threshold (it doubts 35% of the labelling pool, "
            "as the held-out folds did).") in carried.split("\n\n")
    assert parts[6] == "Reward's estimate of malign images: baseline 25% (8 of 32) → censored 6% (2 of 32)."
    assert parts[7].startswith("Oracle (bags): baseline 25%") and parts[8].startswith("tv: distance")
    assert parts[-1] == "⚠ 3 image-steps fell back to unguided (the weight is too large)."
    plain = gallery_readout(dict(result, oracle=None, drift=None, strict=None, reward_malign=None, fallbacks=0,
                                 guidance_note=None, settings={}), "base model", tuned=False)
    assert plain == "Censored side drawn from the base model."


# ---- the cached baseline and the oracle block, through the studio ---------------------------
@pytest.fixture
def studio(tmp_path, tiny_model, fixture_images):
    from censor.studio.core import Studio

    pool = Pool(fixture_images["images"][:60], np.arange(60), {})
    return Studio(model=copy.deepcopy(tiny_model), data_dir=tmp_path / "data", pool=pool)


def test_the_baseline_is_sampled_once_per_model_seeds_and_steps(studio, monkeypatch):
    import censor.studio.galleries as galleries

    calls = []

    def counted(model, seeds, **kw):
        calls.append((id(model), tuple(seeds), kw["steps"]))
        return sample(model, seeds, **kw)

    monkeypatch.setattr(galleries, "sample", counted)
    sid = studio.open_session(None)
    tuned = ("copy", copy.deepcopy(studio.model))  # ω = 0 on a tuned model: no reward needed
    render = lambda steps, seed=0: studio.censored_gallery(sid, "time", 0.0, 0, 0, steps=steps, seed=seed, count=8,
                                                           feature="bags", tuned=tuned)
    first = render(5)
    base_calls = [c for c in calls if c[0] == id(studio.model)]
    assert len(base_calls) == 1 and len(calls) == 2
    judges = []
    real_judge = galleries.GalleryJudge
    monkeypatch.setattr(galleries, "GalleryJudge", lambda *a, **k: judges.append(1) or real_judge(*a, **k))
    second = render(5)
    assert len(calls) == 3 and calls[-1][0] == id(tuned[1])  # only the censored side was sampled
    assert np.array_equal(first["baseline"], second["baseline"]) and judges == []  # its judge was kept too
    assert second["oracle"] == first["oracle"]
    render(6)
    assert calls[-2] == (id(studio.model), tuple(seeds_for(8, 0)), 6)  # another step count misses
    with torch.no_grad():
        next(studio.model.unet.parameters()).add_(1.0)  # the same object with changed weights misses
    render(5)
    assert calls[-2][0] == id(studio.model) and len([c for c in calls if c[0] == id(studio.model)]) == 3


def test_the_oracle_block_is_the_gallery_judges(studio):
    from censor.eval.judge import GalleryJudge, half_split_floor

    sid = studio.open_session(None)
    r = studio.censored_gallery(sid, "time", 0.0, 0, 0, steps=5, seed=3, count=8, feature="bags",
                                tuned=("copy", copy.deepcopy(studio.model)))
    judge = GalleryJudge(studio.oracle, "bags", studio.reference, r["baseline"])
    o, row = r["oracle"], judge(r["censored"])
    assert o["baseline"]["malign"] == judge.base_rate.malign and o["baseline"]["n"] == 8
    assert o["censored"]["ci_pct"] == row["ci_pct"] and o["censored"]["tv"] == row["tv"]
    assert o["censored"]["recall_ratio"] == row["recall_ratio"]
    assert o["tv_floor"] == half_split_floor(judge.base, "bags")
    assert oracle_lines(o)[0].startswith(f"Oracle (bags): baseline {o['baseline']['malign_pct']:.0f}%")


# ---- cost ------------------------------------------------------------------------------------
class CountingReward:
    """log r(x) = log σ(0.05·Σx), counting the images it scores and the backward passes through it."""

    time_dependent, kind = True, "analytic"

    def __init__(self):
        self.forwards = self.backwards = 0

    def log_prob(self, x, t=None):
        self.forwards += len(x)
        out = torch.nn.functional.logsigmoid(0.05 * x.flatten(1).sum(1))
        if out.requires_grad:
            out.register_hook(lambda g: setattr(self, "backwards", self.backwards + len(g)) or g)
        return out


@pytest.mark.parametrize("kind,knobs", [
    ("time", dict(window=(0, 500), recurrence=1)),
    ("time", dict(every=3, recurrence=1)),
    ("universal", dict(backward_steps=2)),
    ("manifold", dict(recurrence=2, backward_steps=1)),
    ("particles", dict(particles=3)),
])
def test_the_cost_counts_match_a_counted_run(gaussian_model, kind, knobs):
    knobs = dict(knobs, hinge_quantile=None, threshold=None)
    reward, n, steps = CountingReward(), 2, 6
    unet = {"forwards": 0, "backwards": 0}

    def on_forward(module, args, out):
        unet["forwards"] += len(args[0])
        if out.sample.requires_grad:
            out.sample.register_hook(lambda g: unet.__setitem__("backwards", unet["backwards"] + len(g)) or g)

    hook = gaussian_model.unet.register_forward_hook(on_forward)
    try:
        sample(gaussian_model, seeds_for(n, 0), steps=steps, guidance=build_guidance(reward, kind, 2.0, **knobs))
    finally:
        hook.remove()
    e = evaluations(replace(DEFAULT_GUIDANCE, kind=kind, weight=2.0, **knobs), steps)
    assert (e.unet_forwards, e.unet_backwards, e.reward_forwards, e.reward_backwards) == (
        unet["forwards"] / n, unet["backwards"] / n, reward.forwards / n, reward.backwards / n)


def test_relative_cost_and_its_readout():
    d = DEFAULT_GUIDANCE
    assert relative_cost(d.with_(weight=0.0), 30) == 1.0
    # ddpm-encoder time guidance: the ε pass carries the reward, plus a backward through the encoder
    assert relative_cost(d, 30, shares_unet=True) == pytest.approx(1 + 2.0 * 0.5)
    # 5 backward steps: 5 more reward forward + backward passes per step
    assert relative_cost(d.with_(backward_steps=5), 30, shares_unet=True) == pytest.approx(2 + 5 * (0.5 + 1.0))
    text = cost_readout(d.with_(backward_steps=5, recurrence=1), 30, shares_unet=True)
    assert text.startswith(f"≈ {2 * 9.5:.1f}× the unguided time (time guidance: a reward gradient at each guided step; "
                           "backward steps: 5 extra optimisation steps on the predicted clean image")
    assert text.endswith("recurrence: re-noises and repeats each guided step 1 more time, letting guidance "
                         "correct itself)")
    assert cost_readout(d.with_(weight=0.0), 30) == "≈ 1× the unguided time (ω = 0: no guidance)"


def test_the_censor_tabs_cost_line_prices_the_knobs_before_the_click():
    """Issue 20: backward guidance cost several times the time with nothing saying so before the click."""
    from censor.core.settings import DEFAULT_GUIDANCE
    from censor.sampling.cost import relative_cost
    from censor.studio.readouts import cost_text

    plain = cost_text(None, "time", 0, 0, 30, False)
    heavy = cost_text(None, "time", 5, 1, 30, True)
    ratio = relative_cost(DEFAULT_GUIDANCE.with_(backward_steps=5, recurrence=1), 30)
    assert f"≈ {ratio:.1f}×" in heavy and ratio > 2 * relative_cost(DEFAULT_GUIDANCE, 30)
    assert "backward steps: 5 extra optimisation steps" in heavy and "recurrence" in heavy
    assert "strict draws more" in heavy and "strict" not in plain and "backward" not in plain
