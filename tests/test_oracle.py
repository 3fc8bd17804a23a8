import numpy as np
import pytest

from censor.core.errors import CensorError
from censor.eval.oracle import load_oracle, load_reference


def test_oracle_judges_real_fixture_images(fixture_images):
    oracle = load_oracle()
    j = oracle.judge(fixture_images["images"])
    assert j.class_probs.shape == (500, 10) and j.features.shape == (500, 128)
    np.testing.assert_allclose(j.class_probs.sum(1), 1.0, atol=1e-5)
    assert (j.classes == fixture_images["labels"]).mean() >= 0.9
    assert (j.watermarked == fixture_images["watermark"]).mean() >= 0.98
    # the shipped metrics say what was measured on the full test split
    assert oracle.metrics["test"]["class_accuracy"] >= 0.9 and oracle.metrics["test"]["n"] == 10000


def test_oracle_rejects_wrong_shapes_and_bad_folders(tmp_path):
    oracle = load_oracle()
    with pytest.raises(CensorError, match="1x28x28"):
        oracle.judge(np.zeros((2, 32, 32), dtype=np.uint8))
    with pytest.raises(CensorError, match="needs config.json"):
        load_oracle(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CensorError, match="corrupt"):
        load_oracle(tmp_path)


def test_reference_features_are_the_test_split():
    ref = load_reference()
    assert ref["test_features"].shape == (10000, 128)
    assert 0.10 < ref["test_watermark"].mean() < 0.14
