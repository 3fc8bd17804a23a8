import gzip
import struct

import numpy as np
import pytest

from censor.core.data import load_split, read_idx, to_model_range, to_uint8
from censor.core.errors import CensorError


def test_reader_reads_real_idx_files(idx_dir, fixture_images):
    images = read_idx(idx_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(idx_dir / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (64, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (64,) and set(labels) <= set(range(10))
    # the same real images appear in the 500-image fixture under their test-split index
    for pos, i in enumerate(fixture_images["index"]):
        if i < 64:
            np.testing.assert_array_equal(images[i], fixture_images["clean"][pos])
            assert labels[i] == fixture_images["labels"][pos]


def test_load_split_from_data_dir(idx_dir):
    images, labels = load_split("train", idx_dir)
    assert images.shape == (64, 28, 28) and len(labels) == 64
    assert images.mean() > 20  # real clothing, not zeros


def test_reader_handles_uncompressed_and_rejects_garbage(tmp_path):
    raw = struct.pack(">BBBBII", 0, 0, 8, 2, 2, 3) + bytes(range(6))
    (tmp_path / "ok").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "ok"), np.arange(6, dtype=np.uint8).reshape(2, 3))
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(CensorError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(raw[:-2])
    with pytest.raises(CensorError, match="expected 6 data bytes"):
        read_idx(tmp_path / "short.gz")


def test_wrong_data_dir_is_one_clear_error(tmp_path):
    with pytest.raises(CensorError, match="does not exist"):
        load_split("train", tmp_path / "nowhere")
    with pytest.raises(CensorError, match="dataset-fashion-mnist"):
        load_split("train", tmp_path)


def test_range_round_trip(fixture_images):
    x = to_model_range(fixture_images["images"][:10])
    assert x.shape == (10, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8(x), fixture_images["images"][:10])
