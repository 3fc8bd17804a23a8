"""Fine-tuning alternatives to censored sampling: D3PO (preferences) and DDPO (a reward), with LoRA."""
