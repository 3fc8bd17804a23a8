"""The comparison's one-line verdicts say what the figures show, and no more."""

from rlhf.verdict import verdicts

BASE = dict(malign_pct=9.0, ci_pct=[7.0, 11.5], n=1000, labels=0, train_s=0, tv=None, recall_ratio=1.0)


def _row(pct, lo, hi, tv, recall, **kw):
    return dict(malign_pct=pct, ci_pct=[lo, hi], n=900, labels=100, train_s=42, tv=tv, tv_floor=0.04,
                recall_ratio=recall, time_ratio=kw.get("time_ratio", 1.0))


def test_a_drop_is_claimed_only_when_the_intervals_part_and_fidelity_is_judged_on_its_own():
    result = dict(methods=dict(
        baseline=BASE,
        censored=_row(0.3, 0.1, 1.0, 0.03, 0.97, time_ratio=1.6),
        rlhf=_row(8.0, 6.4, 9.9, 0.02, 1.0),
        full=_row(1.0, 0.5, 1.9, 0.31, 0.8),
        worse=_row(14.0, 12.0, 16.2, 0.05, 0.95)))
    lines = dict(zip(["censored", "rlhf", "full", "worse"], verdicts(result)))
    assert "9.0% → 0.3% malign (removes 97% of them)" in lines["censored"]
    assert "leaves the other images as they were (tv 0.030 (floor 0.040), recall 0.97×)" in lines["censored"]
    assert "100 labels, 42 s training, sampling 1.60× unguided" in lines["censored"]
    assert "no change the intervals can show" in lines["rlhf"]  # 8.0 vs 9.0 overlap: not a drop
    assert "removes 89%" in lines["full"] and "changes the other images too" in lines["full"]  # tv 0.31
    assert "more than the baseline" in lines["worse"]
    assert all(line.startswith(f"**{name}**") for name, line in lines.items())


def test_recall_alone_fails_fidelity_and_an_empty_result_says_nothing():
    result = dict(methods=dict(baseline=BASE, low_recall=_row(0.5, 0.2, 1.2, 0.02, 0.85)))
    assert "changes the other images too" in verdicts(result)[0]
    assert verdicts(dict(methods={})) == []


def test_a_small_gallery_is_judged_against_its_floor_when_the_floor_is_above_the_target():
    """At 300 images the floor (a second unguided gallery) is ~0.106: tv 0.096 is as good as chance allows."""
    at_floor = dict(_row(5.7, 3.6, 8.9, 0.096, 0.99), tv_floor=0.106)
    above = dict(_row(5.7, 3.6, 8.9, 0.135, 0.99), tv_floor=0.106)
    lines = verdicts(dict(methods=dict(baseline=BASE, at_floor=at_floor, above=above)))
    assert "leaves the other images as they were" in lines[0] and "changes the other images too" in lines[1]
