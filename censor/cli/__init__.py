"""``python -m censor``: commands whose options come from the settings objects."""
