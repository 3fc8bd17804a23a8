"""``python -m censor.train_backbone``: self-supervised pretraining of the reward backbone (see backbone.py)."""

from .backbone import main

if __name__ == "__main__":
    raise SystemExit(main())
