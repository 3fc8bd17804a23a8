"""Fine-tuning alternatives to censored sampling: D3PO (preferences), DDPO (a reward) and censor-then-distil."""
