"""Gallery and session bundles: reproducible round trips, and hostile zips refused with data intact."""

import io
import json
import zipfile

import numpy as np
import pytest

from censor.core.errors import CensorError
from censor.gallery.bundles import safe_extract
from censor.labels.pool import Pool
from censor.studio.core import Studio


@pytest.fixture
def rendered(tmp_path, tiny_model, fixture_images):
    pool = Pool(fixture_images["images"][:40], np.arange(40), {})
    studio = Studio(model=tiny_model, data_dir=tmp_path / "data", pool=pool)
    sid = studio.open_session(None, "mark bags")
    items = studio.page(sid, 0)
    for it in items[:3]:
        studio.click(sid, it["id"])
    studio.train(sid, "ensemble", "half-unet", members=2, iterations=10, alpha=0.5)
    result = studio.censored_gallery(sid, "time", 2.0, 1, 1, steps=5, seed=3, count=5)
    return studio, sid, result


def test_gallery_bundle_reproduces_the_gallery(rendered, tmp_path):
    studio, sid, result = rendered
    png, bundle = studio.export_gallery(sid, result)
    assert png.stat().st_size > 0
    names = zipfile.ZipFile(bundle).namelist()
    assert {"manifest.json", "reward.safetensors", "reward.json", "censored_004.png"} <= set(names)
    manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
    assert manifest["seeds"] == list(result["seeds"]) and manifest["settings"]["weight"] == 2.0
    assert manifest["labels"]["malign"] == 3 and "torch" in manifest["versions"]
    again = studio.import_gallery(bundle)
    assert again["identical"] == 5 and again["max_pixel_diff"] == 0
    view = studio.open_permalink(again["token"])
    np.testing.assert_array_equal(view["censored"], result["censored"])
    with pytest.raises(CensorError, match="unknown gallery link"):
        studio.open_permalink("../../etc")


def test_stale_gallery_is_not_shared(rendered):
    studio, sid, result = rendered
    studio.train(sid, "ensemble", "half-unet", members=2, iterations=20, alpha=0.5)  # a different reward
    with pytest.raises(CensorError, match="retrained"):
        studio.export_gallery(sid, result)


def test_session_bundle_round_trip(rendered):
    studio, sid, _ = rendered
    bundle = studio.export_session(sid)
    new = studio.import_session(bundle)
    assert new != sid
    a, b = studio.store.counts(sid), studio.store.counts(new)
    assert (a.viewed, a.malign, a.total) == (b.viewed, b.malign, b.total) == (25, 3, 40)
    np.testing.assert_array_equal(studio.store.training_data(new)[1], studio.store.training_data(sid)[1])
    assert (studio.reward_dir(new) / "reward.safetensors").exists()


def _zip(tmp_path, entries: dict, name="evil.zip"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in entries.items():
            z.writestr(n, data)
    return path


@pytest.mark.parametrize("entries, message", [
    ({"../escape.json": "{}"}, "refused"),
    ({"/etc/passwd.json": "{}"}, "refused"),
    ({"sub/dir.png": b"x"}, "refused"),
    ({"reward.pt": b"\x80\x04pickle"}, "refused"),
    ({"model.pkl": b"\x80\x04"}, "refused"),
    ({"bomb.json": b"0" * (40 * 1024 * 1024)}, "too large or too compressed"),
])
def test_hostile_zips_are_refused(tmp_path, entries, message):
    with pytest.raises(CensorError, match=message):
        safe_extract(_zip(tmp_path, entries), tmp_path / "out")
    assert not (tmp_path / "escape.json").exists() and not (tmp_path / "out" / "bomb.json").exists()


def test_broken_bundles_give_clear_errors(rendered, tmp_path):
    studio, sid, result = rendered
    _, bundle = studio.export_gallery(sid, result)
    good = {n: zipfile.ZipFile(bundle).read(n) for n in zipfile.ZipFile(bundle).namelist()}
    (tmp_path / "notzip.zip").write_bytes(b"PK not really")
    with pytest.raises(CensorError, match="not a zip"):
        studio.import_gallery(tmp_path / "notzip.zip")
    with pytest.raises(CensorError, match="no manifest.json"):
        studio.import_gallery(_zip(tmp_path, {k: v for k, v in good.items() if k != "manifest.json"}, "a.zip"))
    with pytest.raises(CensorError, match="not valid JSON"):
        studio.import_gallery(_zip(tmp_path, {**good, "manifest.json": b"{oops"}, "b.zip"))
    with pytest.raises(CensorError, match="not a readable image"):
        studio.import_gallery(_zip(tmp_path, {**good, "censored_001.png": b"GIF89a not a png"}, "c.zip"))
    tampered = bytearray(good["reward.safetensors"])
    tampered[-1] ^= 1
    with pytest.raises(CensorError, match="hash"):
        studio.import_gallery(_zip(tmp_path, {**good, "reward.safetensors": bytes(tampered)}, "d.zip"))
    big = io.BytesIO()
    from PIL import Image

    Image.new("L", (64, 64)).save(big, format="PNG")
    with pytest.raises(CensorError, match="expected 28x28"):
        studio.import_gallery(_zip(tmp_path, {**good, "censored_000.png": big.getvalue()}, "e.zip"))
    # nothing was lost: the session still has its labels and reward
    assert studio.store.counts(sid).malign == 3 and (studio.reward_dir(sid) / "reward.json").exists()
