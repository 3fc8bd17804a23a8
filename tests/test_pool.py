import shutil

import numpy as np
import pytest

from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.labels.pool import load_pool, make_pool, save_pool
from censor.sampling.loop import sample


def test_pool_round_trip_and_seeds_regenerate_images(tmp_path, tiny_model, tiny_model_dir):
    pool = make_pool(tiny_model, tiny_model_dir, n=4, steps=2, seed=5, show_bar=False)
    save_pool(pool, tmp_path / "pool")
    back = load_pool(tmp_path / "pool", tiny_model_dir)
    np.testing.assert_array_equal(back.images, pool.images)
    np.testing.assert_array_equal(back.seeds, pool.seeds)
    # the stored seeds regenerate image 2 alone
    again = to_uint8(sample(tiny_model, [int(back.seeds[2])], steps=2))
    np.testing.assert_array_equal(again[0], back.images[2])


def test_stale_or_missing_pool_is_refused(tmp_path, tiny_model, tiny_model_dir):
    pool = make_pool(tiny_model, tiny_model_dir, n=2, steps=1, show_bar=False)
    save_pool(pool, tmp_path / "pool")
    other = tmp_path / "other_model"
    shutil.copytree(tiny_model_dir, other)
    w = other / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(CensorError, match="other weights"):
        load_pool(tmp_path / "pool", other)
    with pytest.raises(CensorError, match="missing or corrupt"):
        load_pool(tmp_path / "nothing")


def test_shipped_pool_matches_shipped_model():
    pool = load_pool()
    assert len(pool) >= 500 and pool.images.shape[1:] == (28, 28)
    assert len(np.unique(pool.seeds)) == len(pool)
