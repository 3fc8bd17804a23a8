"""The Share tab: a gallery as a PNG grid and a bundle that reproduces it, sessions as zips, and
permalinks to imported galleries. The zip formats and their checks are ``censor.gallery.bundles``."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.gallery.bundles import (
    read_gallery_bundle,
    read_json,
    read_png,
    read_session_bundle,
    sha256,
    write_gallery_bundle,
    write_session_bundle,
)
from censor.gallery.grid import grid
from censor.labels.upkeep import TEMP_PREFIX
from censor.rewards.ensemble import load_reward, model_fingerprint
from censor.sampling.loop import sample
from censor.sampling.repaint import repaint_flagged
from censor.studio.common import MAX_ROUND, MAX_SESSION_ITEMS, conditioning_info, echo, inert
from censor.studio.manifest import check_conditioning, check_manifest, repaint_options, settings_guidance
from censor.studio.resources import Resources

PERMALINK = re.compile(r"^[A-Za-z0-9_-]{8,40}$")
VERIFIED = "reproduced.json"  # written by us after an import: which uploaded images this server reproduced


class Sharing:
    """What the Share tab (and a ``?bundle=`` link) calls."""

    def __init__(self, res: Resources):
        self.res = res

    def _share_dir(self, sid: str) -> Path:
        out = self.res.session_folder(sid) / "share"
        out.mkdir(exist_ok=True)
        return out

    def export_gallery(self, sid: str, result: dict) -> tuple[Path, Path]:
        """A PNG grid and a reproducible zip bundle of the last censored gallery."""
        if result["settings"].get("adapter"):
            raise CensorError("a gallery from a fine-tuned adapter cannot be bundled yet (the bundle would have to "
                              "carry the adapter); share it as a PNG from the gallery instead")
        res, model, rdir = self.res, self.res.model, self.res.reward_dir(sid)
        if sha256(rdir / "reward.safetensors") != result["reward_sha256"]:
            raise CensorError("the reward was retrained after this gallery was rendered; render it again to share it")
        out = self._share_dir(sid)
        both = np.concatenate([result["baseline"], result["censored"]])
        png = out / "gallery.png"
        grid(both, nrow=len(result["censored"]) if len(result["censored"]) <= 16 else 16).save(png)
        c = res.store.counts(sid)
        manifest = dict(model=str(res.model_dir), model_fingerprint=model_fingerprint(model.unet),
                        conditioning=conditioning_info(model),
                        settings=result["settings"], seeds=list(map(int, result["seeds"])),
                        labels=dict(viewed=c.viewed, malign=c.malign, benign=c.benign, unsure=c.unsure),
                        reward_info={k: v for k, v in res.session_reward(sid).info.items() if not k.startswith("_")},
                        image_size=list(result["censored"].shape[1:]))
        bundle = write_gallery_bundle(out / "gallery_bundle.zip", result["baseline"], result["censored"], manifest,
                                      rdir, png.read_bytes())
        return png, bundle

    def import_gallery(self, path: str | Path, progress: Callable[[float], None] | None = None) -> dict:
        """Unpack a gallery bundle, re-sample it from its seeds and reward, and keep it under a permalink id."""
        token = secrets.token_urlsafe(12)
        dest = self.res.store.root / "bundles" / token
        try:
            b = read_gallery_bundle(path, dest, image_size=tuple(self.res.model.image_shape[1:]))
            b["token"] = token
            r = self.reproduce(b, progress)
            (dest / VERIFIED).write_text(json.dumps(dict(identical=r["same"], max_pixel_diff=r["max_pixel_diff"])))
            return r
        except Exception:  # a refused bundle leaves nothing on the (persistent) disk
            shutil.rmtree(dest, ignore_errors=True)
            raise

    def reproduce(self, bundle: dict, progress: Callable[[float], None] | None = None) -> dict:
        """Sample an unpacked bundle's seeds again with its settings and reward; compare with its images."""
        model = self.res.model
        m = bundle["manifest"]
        # which model and prompt first (plain comparisons; the refusal echoes only an escaped excerpt),
        # then every field, before anything reads or shows one
        if m.get("model_fingerprint") != model_fingerprint(model.unet):
            raise CensorError("this bundle was made with another diffusion model than the one loaded here")
        check_conditioning(m.get("conditioning"))
        if m.get("conditioning") != conditioning_info(model):
            raise CensorError(f"this bundle was sampled with {echo(m.get('conditioning') or 'no prompt or class')}; "
                              f"this studio samples with {conditioning_info(model) or 'no prompt or class'}")
        check_manifest(m)
        settings = m["settings"]
        if len(m["seeds"]) != settings["count"]:
            raise CensorError("manifest.json: count and seeds disagree")
        reward = load_reward(bundle["reward_dir"], model)
        images = to_uint8(sample(model, m["seeds"], steps=int(settings["steps"]),
                                 guidance=settings_guidance(reward, settings), progress=progress))
        strict = settings.get("strict") or {}
        if strict.get("mode") == "repaint":  # deterministic: the same reward, seeds and threshold redraw the same
            images = repaint_flagged(model, reward, images, m["seeds"], float(strict["threshold"]),
                                     **repaint_options(strict, settings)).images
        stored = bundle["censored"]
        diff = np.abs(images.astype(int) - stored.astype(int)).reshape(len(images), -1).max(1) if stored is not None else None
        same = [bool(d == 0) for d in diff] if diff is not None else [False] * len(images)
        return dict(token=bundle.get("token"), manifest=m, censored=images, stored=stored, same=same,
                    identical=sum(same), max_pixel_diff=int(diff.max()) if diff is not None else None)

    def open_permalink(self, token: str) -> dict:
        """The gallery bundle imported under ``token`` (a permalink-style view)."""
        if not token or not PERMALINK.match(token):
            raise CensorError("unknown gallery link")
        folder = self.res.store.root / "bundles" / token
        if not (folder / "manifest.json").is_file():
            raise CensorError("unknown gallery link")
        m = read_json(folder / "manifest.json")
        check_manifest(m)  # a folder from before these checks is held to them too
        size = tuple(m.get("image_size", (28, 28)))
        n = len(m["seeds"])
        # only the uploaded images this server reproduced exactly: the others are the uploader's word alone
        verified = read_json(folder / VERIFIED).get("identical", []) if (folder / VERIFIED).is_file() else []
        keep = [i for i in range(n) if i < len(verified) and verified[i] is True]
        images = [read_png(folder / f"censored_{i:03d}.png", size) for i in keep]
        return dict(manifest=m, total=n, censored=np.stack(images) if images else np.zeros((0, *size), np.uint8))

    def import_text(self, r: dict) -> str:
        """What the Share tab says after an import (Markdown; every value inert)."""
        return (f"Reproduced {r['identical']} of {len(r['censored'])} images exactly (largest pixel difference "
                f"{inert(r['max_pixel_diff'])}). Link to this gallery: `?bundle={r['token']}`")

    def permalink_text(self, token: str, g: dict) -> str:
        """What a ``?bundle=`` link says above its images (Markdown; every uploaded value inert)."""
        s = g["manifest"]["settings"]
        # the token is ours and matched PERMALINK; in a code span escapes would show, so it goes as it is
        head = (f"Shared gallery `{token}`: {inert(s['guidance'])} guidance, ω = {inert(s['weight'])}, "
                f"{inert(s['steps'])} steps, seed {inert(s['seed'])}.")
        k, n = len(g["censored"]), g["total"]
        if not k:
            return head + f" None of its {n} images reproduced on this server, so none is shown."
        return head + f" {k} of its {n} images reproduced exactly on this server; only those are shown."

    def export_session(self, sid: str) -> Path:
        """The session's images, labels and reward as a zip of safetensors + JSON."""
        store, rdir = self.res.store, self.res.reward_dir(sid)
        return write_session_bundle(self._share_dir(sid) / "session_bundle.zip", store.info(sid),
                                    store.items(sid, limit=100_000), rdir if rdir.exists() else None)

    def import_session(self, path: str | Path) -> str:
        """A new session holding the bundle's images, labels and reward (the original stays untouched).

        Everything is checked before anything is created, unpacked into a temporary folder whose
        session part is renamed into place, and stored in one transaction: a refusal or a kill
        leaves no session behind (and the store's sweep removes a killed import's folders)."""
        store, model = self.res.store, self.res.model
        tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=store.root))
        try:
            b = read_session_bundle(path, tmp / "bundle")
            if tuple(b["images"].shape[1:]) != tuple(model.image_shape[1:]):
                raise CensorError(f"the session's images are {'x'.join(map(str, b['images'].shape[1:]))}, "
                                  f"this model makes {'x'.join(map(str, model.image_shape[1:]))}")
            check_session_items(b["items"])
            if b["reward_dir"] is not None:
                load_reward(b["reward_dir"], model)  # refuse a reward for another model or image size
                (tmp / "session" / "reward").mkdir(parents=True)
                for name in ("reward.safetensors", "reward.json"):
                    shutil.copy(Path(b["reward_dir"]) / name, tmp / "session" / "reward" / name)
            return store.import_session(str(self.res.model_dir), str(b["info"].get("instructions", "")),
                                        b["images"], b["items"], tmp / "session" if b["reward_dir"] else None)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def check_session_items(items: list[dict]) -> None:
    """What the store needs of every imported item beyond the bundle's own checks: a viewed flag, a
    bounded round, and no more items than a session may hold."""
    if len(items) > MAX_SESSION_ITEMS:
        raise CensorError(f"session.json: {len(items)} images; a session holds at most {MAX_SESSION_ITEMS}")
    for it in items:
        if not isinstance(it.get("viewed"), (bool, int)) or it["viewed"] not in (0, 1):
            raise CensorError("session.json: every item needs a viewed flag (true or false)")
        if not 0 <= it["round"] <= MAX_ROUND:
            raise CensorError(f"session.json: labelling rounds must be between 0 and {MAX_ROUND}")
