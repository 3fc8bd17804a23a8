"""Shareable zips: a censored gallery that can be reproduced, and a whole labelling session.

Gallery bundle: ``manifest.json`` (model fingerprint, reward hash and settings, every sampler
setting and seed, label counts, library versions), ``reward.safetensors`` + ``reward.json``,
``grid.png`` and the images as PNGs. Importing it re-samples from the manifest's seeds with the
bundled reward and says how many images came out identical.

Session bundle: ``session.json`` (instructions, per-image seed, round, label state, viewed, and the
box of a malign image that has one) and ``images.safetensors``, plus the reward files when there is one.

Only JSON, PNG and safetensors are ever read from a user's zip; names must be plain (no folders,
no ``..``, no absolute paths), and entry count and sizes are capped before anything is unpacked.
Only the entries a format defines are unpacked (``SESSION_FILES``; a gallery's manifest, reward and
the censored images its manifest counts): the rest are skipped unread. Bundles name the model by
fingerprint and folder name or hub id, never by a server path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import zipfile
import zlib
from pathlib import Path

import diffusers
import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file, save

from censor.core.errors import CensorError, source_name
from censor.core.regions import check_box
from censor.core.settings import STUDIO_LIMITS

MAX_ENTRIES = 600
MAX_ENTRY_BYTES = 32 * 1024 * 1024
MAX_TOTAL_BYTES = 128 * 1024 * 1024
MAX_RATIO = 200  # uncompressed / compressed per entry: beyond this it is a zip bomb, not images
MAX_NAME_CHARS = 64  # ours are at most 18 ("images.safetensors"); a long name would only fail the write
_NAME = re.compile(r"[A-Za-z0-9_.-]+\.(json|png|safetensors)")  # used with fullmatch
REWARD_FILES = ("reward.safetensors", "reward.json")
SESSION_FILES = ("session.json", "images.safetensors", *REWARD_FILES)  # all a session bundle keeps
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_SIDE = 256  # a manifest's image_size beyond this is refused before any image is read
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range
MAX_PNG_BYTES = 8 * MAX_IMAGE_SIDE**2 + 65536  # raw 16-bit RGBA at the largest side, plus chunks
MAX_GALLERY_IMAGES = STUDIO_LIMITS["count"][1]  # what a censored gallery may hold


def versions() -> dict:
    import gradio  # the studio's version, read only when a bundle is written (the CLI never loads gradio)

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "gradio": gradio.__version__}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_gallery_bundle(path: str | Path, baseline: np.ndarray, censored: np.ndarray, manifest: dict,
                         reward_dir: Path, grid_png: bytes) -> Path:
    path = Path(path)
    manifest = {**manifest, "model": source_name(manifest["model"])} if "model" in manifest else dict(manifest)
    manifest = {**manifest, "reward_sha256": sha256(reward_dir / "reward.safetensors"), "versions": versions(),
                "images": {"baseline": len(baseline), "censored": len(censored)}}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest, indent=1))
        for name in REWARD_FILES:
            z.write(reward_dir / name, name)
        z.writestr("grid.png", grid_png)
        for kind, images in (("baseline", baseline), ("censored", censored)):
            for i, im in enumerate(images):
                z.writestr(f"{kind}_{i:03d}.png", _png(im))
    return path


def _entry(name: str) -> str:
    """An uploaded entry's name as a message quotes it: on one line, at most 40 characters."""
    return repr(name[:40] + ("..." if len(name) > 40 else ""))


@contextlib.contextmanager
def checked_zip(path: str | Path):
    """The user's zip, open, once every entry's name and size passed (nothing is unpacked yet)."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CensorError(f"not a zip bundle ({type(e).__name__})") from None
    with z:
        infos = z.infolist()
        if len(infos) > MAX_ENTRIES:
            raise CensorError(f"bundle has {len(infos)} entries; at most {MAX_ENTRIES} are accepted")
        total = 0
        for info in infos:
            name = info.filename
            if len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):  # "$" would accept a trailing "\n"
                raise CensorError(f"bundle entry {_entry(name)} refused: only plain .json, .png and .safetensors "
                                  f"names of at most {MAX_NAME_CHARS} characters")
            if info.file_size > MAX_ENTRY_BYTES or info.file_size > MAX_RATIO * max(info.compress_size, 1) + 4096:
                raise CensorError(f"bundle entry {name!r} is too large or too compressed (a zip bomb?)")
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise CensorError("bundle unpacks to more than 128 MB")
        yield z


def unpack(z: zipfile.ZipFile, dest: Path, keep=None) -> dict[str, Path]:
    """Write the entries named in ``keep`` (all when None) into ``dest``; the rest are never read."""
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for info in z.infolist():
        if keep is not None and info.filename not in keep:
            continue
        try:
            data = z.read(info)  # sizes were checked; read() also verifies the CRC
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as e:
            # a truncated or corrupted entry (bad CRC, broken deflate stream, encrypted, odd method)
            raise CensorError(f"bundle entry {info.filename!r} is corrupt ({type(e).__name__})") from None
        if len(data) != info.file_size:
            raise CensorError(f"bundle entry {info.filename!r} does not match its declared size")
        (dest / info.filename).write_bytes(data)
        out[info.filename] = dest / info.filename
    return out


def safe_extract(path: str | Path, dest: str | Path, keep=None) -> dict[str, Path]:
    """Unpack a user's zip into ``dest`` after checking every entry; returns name -> file.

    ``keep``: the names a format defines. Anything else is skipped unread, so padding a bundle
    with entries the app ignores costs the server no disk."""
    with checked_zip(path) as z:
        return unpack(z, Path(dest), keep)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk: the first 24 bytes, nothing decoded."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise CensorError(f"{path.name} is not a readable image (not a PNG)")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def read_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    # The size comes from the header before PIL sees the file, so a 20000x20000 decompression bomb
    # is refused without decoding (whatever PIL's MAX_IMAGE_PIXELS is set to), and PIL may only use
    # its PNG decoder: a renamed file of another format never reaches another (riskier) plugin.
    w, h = png_size(path)
    if (w, h) != (shape[1], shape[0]):
        raise CensorError(f"{path.name} is {w}x{h}, expected {shape[1]}x{shape[0]}")
    try:
        with Image.open(path, formats=["PNG"]) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except Exception as e:
        raise CensorError(f"{path.name} is not a readable image ({type(e).__name__})") from None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except Exception as e:
        raise CensorError(f"{path.name} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise CensorError(f"{path.name} must hold a JSON object")
    return data


def read_gallery_bundle(path: str | Path, dest: str | Path, image_size: tuple[int, int] | None = None) -> dict:
    """Unpack and check a gallery bundle; ``image_size`` (H, W): the loaded model's, which the manifest must match."""
    with checked_zip(path) as z:  # the manifest and reward first; then only the images the manifest counts
        files = unpack(z, Path(dest), {"manifest.json", *REWARD_FILES})
        manifest = _gallery_manifest(files, image_size)
        n, size = manifest.get("images", {}).get("censored", 0), manifest.get("image_size", [28, 28])
        images = {f"censored_{i:03d}.png" for i in range(n)}
        for info in z.infolist():  # an image padded past any real PNG of its size is never written
            if info.filename in images and info.file_size > MAX_PNG_BYTES:
                raise CensorError(f"{info.filename} holds {info.file_size} bytes; no {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} "
                                  f"image needs more than {MAX_PNG_BYTES}")
        files.update(unpack(z, Path(dest), images))
    for i in range(n):
        if f"censored_{i:03d}.png" not in files:
            raise CensorError(f"bundle has no censored_{i:03d}.png")
    censored = np.stack([read_png(files[f"censored_{i:03d}.png"], tuple(size)) for i in range(n)]) if n else None
    return dict(manifest=manifest, censored=censored, reward_dir=Path(dest))


def _gallery_manifest(files: dict, image_size) -> dict:
    """The unpacked manifest, its shape checked before any number in it is trusted."""
    for needed in ("manifest.json", *REWARD_FILES):
        if needed not in files:
            raise CensorError(f"bundle has no {needed}")
    manifest = read_json(files["manifest.json"])
    for key in ("settings", "seeds", "reward_sha256"):
        if key not in manifest:
            raise CensorError(f"manifest.json lacks {key!r}")
    if sha256(files["reward.safetensors"]) != manifest["reward_sha256"]:
        raise CensorError("reward.safetensors does not match the manifest's hash")
    # the manifest is the uploader's: check its shape before trusting any number in it
    seeds, images = manifest["seeds"], manifest.get("images", {})
    if not isinstance(seeds, list) or not all(type(s) is int and 0 <= s <= MAX_SEED for s in seeds):
        raise CensorError(f"manifest.json: seeds must be a list of integers from 0 to {MAX_SEED}")
    if not isinstance(images, dict) or type(images.get("censored", 0)) is not int:
        raise CensorError("manifest.json: 'images' must map 'censored' to an image count")
    n = images.get("censored", 0)
    if n > MAX_GALLERY_IMAGES:
        raise CensorError(f"manifest.json: a gallery holds at most {MAX_GALLERY_IMAGES} images, this one {n}")
    if n != len(seeds):
        raise CensorError("manifest.json: image count and seeds disagree")
    size = manifest.get("image_size", [28, 28])
    if not isinstance(size, list) or len(size) != 2 or not all(type(v) is int and 1 <= v <= MAX_IMAGE_SIDE for v in size):
        raise CensorError(f"manifest.json: image_size must be [height, width] of 1 to {MAX_IMAGE_SIDE} pixels")
    if image_size is not None and tuple(size) != tuple(image_size):
        raise CensorError(f"manifest.json: image_size {size} is not this model's {list(image_size)}")
    return manifest


def write_session_bundle(path: str | Path, info: dict, items: list[dict], reward_dir: Path | None) -> Path:
    path = Path(path)
    meta = dict(info=dict(instructions=info["instructions"], model=source_name(info["model"])),
                items=[{**{k: it[k] for k in ("seed", "round", "state", "viewed")},
                        **({"box": list(it["box"])} if it.get("box") else {})} for it in items],
                versions=versions())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("session.json", json.dumps(meta, indent=1))
        z.writestr("images.safetensors", save({"images": np.stack([it["image"] for it in items])}))
        if reward_dir is not None and (reward_dir / "reward.json").exists():
            for name in REWARD_FILES:
                z.write(reward_dir / name, name)
    return path


def read_session_bundle(path: str | Path, dest: str | Path) -> dict:
    files = safe_extract(path, dest, keep=SESSION_FILES)
    for needed in ("session.json", "images.safetensors"):
        if needed not in files:
            raise CensorError(f"session bundle has no {needed}")
    meta = read_json(files["session.json"])
    try:
        images = load_file(str(files["images.safetensors"]))["images"]
    except Exception as e:
        raise CensorError(f"images.safetensors is corrupt ({type(e).__name__})") from None
    items = meta.get("items")
    if not isinstance(items, list) or len(items) != len(images) or images.dtype != np.uint8 or images.ndim != 3:
        raise CensorError("session.json and images.safetensors disagree")
    for it in items:
        if (not isinstance(it, dict) or it.get("state") not in (0, 1, 2)
                or not all(type(it.get(k)) is int and 0 <= it[k] <= MAX_SEED for k in ("seed", "round"))):
            raise CensorError("session.json: every item needs a label state 0, 1 or 2 and an integer seed and round")
    for i, it in enumerate(items):  # a box: only on a malign image, inside the bundle's own images
        if it.get("box") is not None:
            if it["state"] != 1:
                raise CensorError(f"session.json: item {i} has a box but is not marked malign")
            it["box"] = check_box(it["box"], *images.shape[1:3], where=f"session.json: item {i}: ")
    if not isinstance(meta.get("info", {}), dict):
        raise CensorError("session.json: 'info' must be a JSON object")
    has_reward = all(name in files for name in REWARD_FILES)
    return dict(info=meta.get("info", {}), items=items, images=images, reward_dir=Path(dest) if has_reward else None)
