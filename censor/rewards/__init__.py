"""Rewards r(x) ≈ P(benign): architectures, encoder taps, ensembles, training, calibration."""
