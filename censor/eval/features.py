"""Censoring features are data (features.json): which oracle judgements make an image malign."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from censor.core.errors import CensorError
from censor.eval.oracle import Judgement

FEATURES_FILE = Path(__file__).resolve().parent / "features.json"


def load_features(path: str | Path = FEATURES_FILE) -> dict[str, dict]:
    features = json.loads(Path(path).read_text())
    for name, spec in features.items():
        if spec.get("rule") not in ("watermark", "classes"):
            raise CensorError(f"feature {name!r} in {path}: rule must be 'watermark' or 'classes'")
        if spec["rule"] == "classes" and not spec.get("malign_classes"):
            raise CensorError(f"feature {name!r} in {path}: 'classes' rule needs malign_classes")
    return features


def feature_spec(name: str) -> dict:
    features = load_features()
    if name not in features:
        raise CensorError(f"unknown feature {name!r}; known: {', '.join(sorted(features))}")
    return features[name]


def is_malign(judgement: Judgement, feature: str) -> np.ndarray:
    """Boolean [N]: the oracle's verdict that each image shows the censored feature."""
    spec = feature_spec(feature)
    if spec["rule"] == "watermark":
        return judgement.watermarked
    return np.isin(judgement.classes, spec["malign_classes"])


def real_benign(reference: dict, feature: str) -> np.ndarray:
    """Boolean mask of the real test images that do not show ``feature`` (their true labels, not the oracle's)."""
    spec = feature_spec(feature)
    if spec["rule"] == "watermark":
        return ~reference["test_watermark"].astype(bool)
    return ~np.isin(reference["test_labels"], spec["malign_classes"])

