import numpy as np

from censor.core.watermark import GLYPH, WATERMARK_FRACTION, apply_watermark, stamp


def test_deterministic_and_exact_fraction(fixture_images):
    clean = fixture_images["clean"]
    a, fa = apply_watermark(clean, seed=3)
    b, fb = apply_watermark(clean, seed=3)
    c, fc = apply_watermark(clean, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)
    assert fa.sum() == round(WATERMARK_FRACTION * len(clean)) == 60
    assert not np.array_equal(fa, fc)
    # unflagged images are untouched, flagged ones changed
    np.testing.assert_array_equal(a[~fa], clean[~fa])
    assert all((a[i] != clean[i]).any() for i in np.where(fa)[0])


def test_stamp_lives_in_a_corner_and_is_the_glyph():
    img = np.zeros((28, 28), dtype=np.uint8)
    out = stamp(img, corner=3, offset=(1, 2), opacity=1.0)
    ys, xs = np.nonzero(out)
    assert ys.min() >= 28 - 7 - 1 and xs.min() >= 28 - 7 - 2
    np.testing.assert_array_equal(out[20:27, 19:26] > 0, GLYPH > 0)
    half = stamp(img, corner=0, offset=(0, 0), opacity=0.5)
    assert half.max() == 128  # semi-transparent over black


def test_fixture_stamps_match_the_design(fixture_images):
    """Every stamped fixture image differs from its clean twin only inside one corner box."""
    clean, marked, flags = fixture_images["clean"], fixture_images["images"], fixture_images["watermark"]
    assert 0.08 < flags.mean() < 0.16
    box = 7 + 2
    for i in np.where(flags)[0]:
        ys, xs = np.nonzero(marked[i].astype(int) != clean[i].astype(int))
        assert (ys.max() - ys.min() < 7) and (xs.max() - xs.min() < 7)
        assert ys.min() < box or ys.max() >= 28 - box
        assert xs.min() < box or xs.max() >= 28 - box
    np.testing.assert_array_equal(marked[~flags], clean[~flags])
