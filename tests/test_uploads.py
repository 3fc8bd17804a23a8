"""Issue 19, uploads: exact reward weights, an atomic reward save, no server paths in what users see,
only the entries a bundle's format defines kept on disk, and clear refusals for odd entries."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from test_reliability import _zip, shared  # noqa: F401  (one trained session and its two bundles, made once)
from safetensors.torch import load_file, save, save_file

from censor.core.errors import CensorError
from censor.core.settings import RewardSettings
from censor.diffusion.models import EMBEDDED_MODEL_DIR, load_diffusion
from censor.diffusion.sources import load_model
from censor.eval.oracle import load_oracle, load_reference
from censor.gallery.bundles import read_gallery_bundle, read_session_bundle, safe_extract
from censor.gallery.grid import save_grid
from censor.labels.pool import load_pool, make_pool, save_pool
from censor.rewards import ensemble
from censor.rewards.architectures import build_member
from censor.rewards.backbone import load_backbone_into
from censor.rewards.ensemble import RewardEnsemble, load_reward
from censor.studio.core import Studio
from censor.studio.sharing import VERIFIED

NAN = float("nan")
SESSION_FILES = ("session.json", "images.safetensors", "reward.safetensors", "reward.json")  # the format's


def _with_weights(entries: dict, tensors: dict) -> dict:
    """A gallery bundle whose reward weights are ``tensors``, the manifest's hash made to match."""
    weights = save(tensors)
    m = json.loads(entries["manifest.json"])
    m["reward_sha256"] = hashlib.sha256(weights).hexdigest()
    return {**entries, "reward.safetensors": weights, "manifest.json": json.dumps(m)}


def _bundles(studio) -> list:
    folder = studio.store.root / "bundles"
    return sorted(folder.iterdir()) if folder.exists() else []


def _refused(call, match: str) -> str:
    with pytest.raises(CensorError, match=match) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---- 5: weights must be exactly the built members' ------------------------------------------------

def _poisoned(tensors: dict, case: str) -> dict:
    t = dict(tensors)
    name = sorted(k for k, v in t.items() if v.is_floating_point() and v.ndim > 1)[0]
    if case == "complex64 NaN":
        t[name] = torch.full_like(t[name], NAN).to(torch.complex64)
    elif case == "float8":
        t[name] = t[name].to(torch.float8_e4m3fn)
    elif case == "float16":
        t[name] = t[name].half()
    elif case == "int64":
        t[name] = t[name].long()
    elif case == "wrong shape":
        t[name] = t[name].reshape(-1)
    elif case == "missing":
        del t[name]
    elif case == "extra member":
        t.update({k.replace("member0.", "member2."): v.clone() for k, v in tensors.items() if k.startswith("member0.")})
    return t


WEIGHT_CASES = {"complex64 NaN": "expected float32", "float8": "expected float32", "float16": "expected float32",
                "int64": "expected float32", "wrong shape": "expected float32 \\[", "missing": "lacks",
                "extra member": "unexpected"}


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_weights_of_another_dtype_shape_or_name_are_refused(shared, tmp_path, case):
    studio, sid, entries, sentries = shared
    tensors = _poisoned(load_file(str(studio.reward_dir(sid) / "reward.safetensors")), case)
    folder = tmp_path / "r"
    folder.mkdir()
    save_file(tensors, str(folder / "reward.safetensors"))
    (folder / "reward.json").write_bytes(sentries["reward.json"])
    _refused(lambda: load_reward(folder, studio.model), WEIGHT_CASES[case])
    before = _bundles(studio)
    _refused(lambda: studio.import_gallery(_zip(tmp_path / "g.zip", _with_weights(entries, tensors))),
             WEIGHT_CASES[case])
    assert _bundles(studio) == before
    sessions = studio.store._q("SELECT COUNT(*) FROM sessions")[0][0]
    _refused(lambda: studio.import_session(_zip(tmp_path / "s.zip", {**sentries, "reward.safetensors": save(tensors)})),
             WEIGHT_CASES[case])
    assert studio.store._q("SELECT COUNT(*) FROM sessions")[0][0] == sessions


def test_member_count_is_bounded_by_what_training_allows(tmp_path):
    hi = RewardSettings.knobs()["members"].hi
    RewardEnsemble("half-unet", [build_member("half-unet") for _ in range(hi + 1)]).save(tmp_path / "r")
    _refused(lambda: load_reward(tmp_path / "r"), f"reward.json: members must be a whole number between 1 and {hi}")
    RewardEnsemble("half-unet", [build_member("half-unet") for _ in range(hi)]).save(tmp_path / "ok")
    assert len(load_reward(tmp_path / "ok").members) == hi


# ---- 6: the reward save is atomic -----------------------------------------------------------------

def _reward(members: int, seed: int) -> RewardEnsemble:
    torch.manual_seed(seed)
    return RewardEnsemble("half-unet", [build_member("half-unet") for _ in range(members)], info={"seed": seed})


def _assert_is(folder: Path, reward: RewardEnsemble) -> None:
    back = load_reward(folder)
    assert len(back.members) == len(reward.members) and back.info == reward.info
    for a, b in zip(back.members, reward.members):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)


KILLED_SAVE = textwrap.dedent("""
    import sys, time
    import torch
    from censor.rewards import ensemble
    from censor.rewards.architectures import build_member

    real = ensemble.save_file
    def save_then_hang(tensors, path):  # the weights are on disk, reward.json is not yet
        real(tensors, path)
        print("weights written", flush=True)
        time.sleep(600)
    ensemble.save_file = save_then_hang
    torch.manual_seed(5)
    ensemble.RewardEnsemble("half-unet", [build_member("half-unet") for _ in range(5)]).save(sys.argv[1])
""")


def test_a_save_killed_between_its_two_files_leaves_the_old_reward_intact(tmp_path):
    folder = tmp_path / "session" / "reward"
    old = _reward(1, seed=1)
    old.save(folder)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), text=True)
    try:
        assert proc.stdout.readline().strip() == "weights written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    _assert_is(folder, old)  # not the 5 new members' weights beside the old 1-member reward.json
    new = _reward(2, seed=2)
    new.save(folder)  # the next save works; the killed one's leftovers never count as the reward
    _assert_is(folder, new)


def test_a_save_failing_midway_keeps_the_old_reward_and_leaves_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "reward"
    old = _reward(1, seed=1)
    old.save(folder)
    (folder / "strict_threshold.json").write_text("{}")  # a cache kept beside the reward

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ensemble.json, "dumps", crash)
    with pytest.raises(OSError):
        _reward(3, seed=3).save(folder)
    monkeypatch.undo()
    _assert_is(folder, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reward"]
    new = _reward(2, seed=2)
    new.save(folder)  # replaces the whole folder: the old reward's cache goes with it
    _assert_is(folder, new)
    assert sorted(p.name for p in folder.iterdir()) == ["reward.json", "reward.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reward"]


# ---- 8: no server path reaches a user -------------------------------------------------------------

def _corrupt_model(tmp: Path, model_dir: Path) -> Path:
    broken = tmp / "broken_model"
    shutil.copytree(model_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    return broken


def _other_weights(tmp: Path, model_dir: Path) -> Path:
    other = tmp / "other_model"
    shutil.copytree(model_dir, other)
    w = other / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\0\0\0\1")
    return other


def _pool_of_other_weights(tmp: Path, model_dir: Path):
    load_pool(tmp / "pool", _other_weights(tmp, model_dir))


SESSION_IDS = []  # of sessions made by a case: no message may show them either


def _session_reward_corrupt(tmp: Path, shared):
    studio, sid, _, sentries = shared
    other = Studio(model=studio.model, data_dir=tmp / "copy")
    sid2 = other.import_session(_zip(tmp / "s.zip", sentries))
    SESSION_IDS.append(sid2)
    (other.reward_dir(sid2) / "reward.safetensors").write_bytes(b"garbage")
    other.session_reward(sid2)


def _setup_pool(tmp: Path, model_dir: Path):
    save_pool(make_pool(load_diffusion(model_dir), model_dir, n=2, steps=1, show_bar=False), tmp / "pool")


REFUSALS = {
    "missing model folder": lambda tmp, md, sh: Studio(tmp / "no_model", data_dir=tmp / "d").model,
    "incomplete model folder": lambda tmp, md, sh: load_diffusion(tmp),
    "corrupt model folder": lambda tmp, md, sh: load_model(_corrupt_model(tmp, md)),
    "folder that is no pipeline": lambda tmp, md, sh: load_model((tmp / "empty").mkdir() or tmp / "empty"),
    "no pool for the model": lambda tmp, md, sh: Studio(md, data_dir=tmp / "d").pool,
    "missing pool": lambda tmp, md, sh: load_pool(tmp / "no_pool", md),
    "pool of other weights": lambda tmp, md, sh: _setup_pool(tmp, md) or _pool_of_other_weights(tmp, md),
    "missing oracle": lambda tmp, md, sh: load_oracle(tmp),
    "corrupt oracle": lambda tmp, md, sh: ((tmp / "config.json").write_text("{}"),
                                           (tmp / "model.safetensors").write_bytes(b"x"), load_oracle(tmp)),
    "missing reference": lambda tmp, md, sh: load_reference(tmp),
    "missing backbone": lambda tmp, md, sh: load_backbone_into(None, tmp),
    "grid into a missing folder": lambda tmp, md, sh: save_grid(np.zeros((1, 28, 28), np.uint8), tmp / "no" / "g.png"),
    "missing reward": lambda tmp, md, sh: load_reward(tmp / "no_reward"),
    "corrupt session reward": lambda tmp, md, sh: _session_reward_corrupt(tmp, sh),
    "bad bundle reward": lambda tmp, md, sh: sh[0].import_gallery(_zip(tmp / "g.zip", {
        **sh[2], "reward.json": json.dumps({**json.loads(sh[2]["reward.json"]), "members": "many"})})),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_no_refusal_shows_a_server_path_or_session_id(shared, tmp_path, tiny_model_dir, case):
    studio, sid, *_ = shared
    with pytest.raises(CensorError) as e:
        REFUSALS[case](tmp_path, tiny_model_dir, shared)
    message = str(e.value)
    hidden = [str(tmp_path), str(tiny_model_dir), str(ROOT), str(studio.data_dir.resolve()), sid, *SESSION_IDS]
    assert not [h for h in hidden if h in message], message
    assert "\n" not in message and not any(part in message for part in ("/tmp/", "/work/", "/home/"))


def test_bundles_name_the_model_never_a_server_path(shared):
    studio, _, entries, sentries = shared
    texts = [entries["manifest.json"].decode(), entries["reward.json"].decode(),
             sentries["session.json"].decode(), sentries["reward.json"].decode()]
    for text in texts:
        assert str(ROOT) not in text and str(studio.data_dir.resolve()) not in text and '"/' not in text
    assert json.loads(entries["manifest.json"])["model"] == EMBEDDED_MODEL_DIR.name
    assert json.loads(sentries["session.json"])["info"]["model"] == EMBEDDED_MODEL_DIR.name
    assert len(json.loads(entries["manifest.json"])["model_fingerprint"]) == 16


# ---- 3: only the entries a format defines are kept ------------------------------------------------

def _padding(n: int, size: int) -> dict:
    """Entries the app ignores, each ``size`` bytes that deflate ~80x (under the zip-bomb ratio)."""
    rng = np.random.default_rng(0)
    data = b"".join(rng.bytes(200) + bytes(20_000) for _ in range(size // 20_200 + 1))[:size]
    names = ["grid.png", "baseline_000.png", "censored_099.png", "notes.json", "extra.safetensors"]
    return {(names[i] if i < len(names) else f"pad_{i:03d}.json"): data for i in range(n)}


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_padded_gallery_bundle_keeps_only_what_the_format_defines(shared, tmp_path):
    studio, _, entries, _ = shared
    good = _zip(tmp_path / "good.zip", entries)
    padded = _zip(tmp_path / "padded.zip", {**entries, **_padding(12, 2_000_000)})
    assert padded.stat().st_size - good.stat().st_size < 1_000_000  # 24 MB of padding, < 1 MB uploaded
    r = studio.import_gallery(padded)
    kept = studio.store.root / "bundles" / r["token"]
    n = json.loads(entries["manifest.json"])["images"]["censored"]
    defined = {"manifest.json", "reward.json", "reward.safetensors", *(f"censored_{i:03d}.png" for i in range(n))}
    # plus the server's own record of which images reproduced (sharing.VERIFIED, issue 19 item 7)
    assert {p.name for p in kept.iterdir()} == defined | {VERIFIED}
    assert _bytes_under(kept) - (kept / VERIFIED).stat().st_size == sum(len(entries[name]) for name in defined)
    assert r["identical"] == n and studio.open_permalink(r["token"])["censored"].shape[0] == n
    out = read_gallery_bundle(padded, tmp_path / "direct")
    assert {p.name for p in (tmp_path / "direct").iterdir()} == defined and out["censored"].shape[0] == n


def test_images_padded_past_any_png_or_counted_past_a_gallery_are_refused(shared, tmp_path):
    studio, _, entries, _ = shared
    before = _bundles(studio)
    padded_png = {**entries, "censored_000.png": entries["censored_000.png"] + _padding(1, 2_000_000)["grid.png"]}
    _refused(lambda: studio.import_gallery(_zip(tmp_path / "p.zip", padded_png)),
             "censored_000.png holds 2000[0-9]+ bytes; no 256x256 image needs more than")
    m = json.loads(entries["manifest.json"])
    many = {**entries, "manifest.json": json.dumps({**m, "seeds": list(range(65)), "images": {"censored": 65}})}
    _refused(lambda: studio.import_gallery(_zip(tmp_path / "m.zip", many)), "at most 64 images, this one 65")
    assert _bundles(studio) == before


def test_padded_session_bundle_keeps_only_what_the_format_defines(shared, tmp_path):
    studio, _, _, sentries = shared
    padded = _zip(tmp_path / "padded.zip", {**sentries, **_padding(12, 2_000_000)})
    read_session_bundle(padded, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == set(SESSION_FILES)
    assert _bytes_under(tmp_path / "out") == sum(len(sentries[name]) for name in SESSION_FILES)
    sid = studio.import_session(padded)
    assert studio.store.counts(sid).total == len(json.loads(sentries["session.json"])["items"])


# ---- 9: odd entries get a clear one-line refusal ------------------------------------------------

@pytest.mark.parametrize("name", ["manifest.json\n", "a" * 296 + ".png", "x" * 60 + ".safetensors"])
def test_entry_names_with_a_newline_or_too_long_are_refused(shared, tmp_path, name):
    studio, _, entries, _ = shared
    bad = _zip(tmp_path / "bad.zip", {**entries, name: b"{}"})
    _refused(lambda: safe_extract(bad, tmp_path / "out"), "refused: only plain")
    assert not (tmp_path / "out").exists()
    before = _bundles(studio)
    message = _refused(lambda: studio.import_gallery(bad), "refused: only plain")
    assert len(message) < 200
    assert _bundles(studio) == before


def test_session_info_that_is_not_an_object_is_refused(shared, tmp_path):
    studio, _, _, sentries = shared
    meta = json.loads(sentries["session.json"])
    sessions = studio.store._q("SELECT COUNT(*) FROM sessions")[0][0]
    for info in ([meta["info"]], "mark bags", 3):
        bad = {**sentries, "session.json": json.dumps({**meta, "info": info})}
        _refused(lambda: studio.import_session(_zip(tmp_path / "s.zip", bad)), "session.json: 'info' must be")
    assert studio.store._q("SELECT COUNT(*) FROM sessions")[0][0] == sessions
