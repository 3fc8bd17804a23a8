"""Evaluation: the oracle (judge only), features, metrics, the gallery judge, the drift figure."""
