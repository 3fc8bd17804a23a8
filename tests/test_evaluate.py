import numpy as np
import pytest

from censor.core.errors import CensorError
from censor.eval.features import is_malign, load_features
from censor.eval.metrics import frechet_distance, knn_precision_recall, malign_fraction, wilson_interval
from censor.eval.oracle import Judgement


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    lo, hi = wilson_interval(0, 100)
    assert lo == 0 and hi == pytest.approx(0.0370, abs=1e-3)
    lo, hi = wilson_interval(10, 1000)
    assert lo == pytest.approx(0.00544, abs=2e-4) and hi == pytest.approx(0.01831, abs=2e-4)
    with pytest.raises(CensorError):
        wilson_interval(0, 0)


def _judgement(classes, watermark):
    probs = np.eye(10)[classes]
    return Judgement(probs, np.asarray(watermark, dtype=float), np.zeros((len(classes), 4)))


def test_features_are_data_and_rules_apply():
    feats = load_features()
    assert {"watermark", "bags", "not-footwear"} <= set(feats)
    j = _judgement([8, 8, 5, 7, 9, 0, 1, 2], [1, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(is_malign(j, "bags"), [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(is_malign(j, "not-footwear"), [1, 1, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(is_malign(j, "watermark"), [1, 0, 0, 0, 0, 0, 0, 1])
    rate = malign_fraction(j, "not-footwear")
    assert (rate.malign, rate.n) == (5, 8) and rate.low < 5 / 8 < rate.high
    with pytest.raises(CensorError, match="unknown feature"):
        is_malign(j, "hats")


def test_feature_file_validation(tmp_path):
    bad = tmp_path / "f.json"
    bad.write_text('{"x": {"rule": "classes"}}')
    with pytest.raises(CensorError, match="malign_classes"):
        load_features(bad)


def test_knn_precision_recall_behaviour():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 8))
    p, r = knn_precision_recall(real, real.copy())
    assert p == 1.0 and r == 1.0
    p, r = knn_precision_recall(real, real + 100.0)
    assert p == 0.0 and r == 0.0
    # a generator that covers only the right third of the data: precise, but recall near 1/3
    plane = rng.normal(size=(1000, 2))
    p, r = knn_precision_recall(plane, plane[plane[:, 0] > 0.5])
    assert p == 1.0 and 0.25 < r < 0.45


def test_frechet_distance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5000, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + np.array([2.0, 0, 0, 0])) == pytest.approx(4.0, abs=1e-6)
    b = rng.normal(size=(5000, 4)) * 2.0  # variance 4: trace term 4 * (1 + 4 - 2*2) = 4
    assert frechet_distance(a, b) == pytest.approx(4.0, rel=0.1)
