"""What the studio's buttons call. No UI code here, and no method formulas either: this module
strings together sessions (sessions.py), reward training (reward_training.py), guided sampling
(sampling.py + guidance.py) and judging (oracle.py) for one person's censoring session.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from censor.core.data import to_model_range, to_uint8
from censor.core.errors import CensorError
from censor.core.settings import DEFAULT_GUIDANCE, STUDIO_LIMITS, GuidanceSettings
from censor.diffusion.models import EMBEDDED_MODEL_DIR, DiffusionModel
from censor.eval.features import load_features
from censor.eval.metrics import malign_fraction
from censor.gallery.bundles import sha256
from censor.labels.sessions import STATE_NAMES, SessionStore
from censor.rewards.architectures import TIME_DEPENDENT
from censor.rewards.ensemble import clean_input, load_reward, model_fingerprint
from censor.rewards.training import train_reward
from censor.sampling.guidance import Guidance, guidance_for
from censor.sampling.loop import sample, seeds_for

MAX_GALLERY = 256
DISPLAY_SIZE = 112
PAGE_SIZE = 25
POOL_PER_SESSION = 200
DEFAULT_DATA_DIR = Path(os.environ.get("CENSOR_DATA_DIR", "studio_data"))
LIMITS = STUDIO_LIMITS  # server-side bounds of every number a person sets; the UI's sliders read the same
# Reward training keeps encoder features of every label (~0.4 MB each), so the label count is bounded too.
MAX_TRAIN_LABELS = 1000


def check_range(name: str, value: float, bounds: tuple | None = None) -> float:
    lo, hi = bounds or LIMITS[name]
    # not a number (None, a string from a hand-made request or a manifest), NaN or inf: refused
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not lo <= value <= hi:
        raise CensorError(f"{name} must be between {lo} and {hi}, got {value!r}")
    return value


def reported(what: str):
    """Crash hygiene: an unexpected failure inside a job becomes a one-line CensorError, which the UI
    shows (Gradio hides other exceptions' messages from users); the traceback goes to the log."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except CensorError:
                raise
            except Exception as e:
                logging.getLogger(__name__).exception("%s failed", what)
                raise CensorError(f"{what} failed ({type(e).__name__}); your labels are kept, try again") from e
        return run
    return wrap


def png_data_uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def display(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(im).resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.NEAREST) for im in images]


def conditioning_info(model: DiffusionModel) -> dict | None:
    """The prompt or class (and CFG scale) a gallery was sampled with: part of what reproduces it."""
    c = model.conditioning
    return None if c is None else dict(kind=c.kind, label=c.label, scale=c.scale)


def guidance_settings_dict(g: GuidanceSettings) -> dict:
    """A bundle's guidance settings: every field of ``GuidanceSettings`` under the manifest's names."""
    d = g.as_dict()
    d["guidance"], d["backward"] = d.pop("kind"), d.pop("backward_steps")
    return d


def guidance_from_settings(settings: dict) -> GuidanceSettings:
    """The inverse of ``guidance_settings_dict``; fields an older bundle lacks keep their old meaning
    (``defaults.LEGACY``: the sum over members, no hinge), so it reproduces as it was made."""
    d = {k: v for k, v in settings.items() if k not in ("guidance", "backward")}
    return GuidanceSettings.from_dict(dict(d, kind=settings["guidance"], backward_steps=settings["backward"]))


def check_guidance_extras(settings: dict) -> None:
    """The guidance fields of an uploaded manifest beyond the UI's sliders, each held to its knob
    (``core.settings.GuidanceSettings``: the same bounds the CLI and the benchmarks document)."""
    knobs = GuidanceSettings.knobs()
    for name in knobs.keys() - {"kind", "weight", "backward_steps", "recurrence"}:
        if name in settings:
            knobs[name].check(name, settings[name], "manifest.json: ")


class Studio:
    """One running app: the model, the labelling pool and every person's session store."""

    def __init__(self, model_dir: str | Path | None = None, model: DiffusionModel | None = None,
                 data_dir: str | Path | None = None, pool=None, model_options: dict | None = None,
                 pool_dir: str | Path | None = None):
        # model_dir: our folder, a diffusers pipeline folder or a hub id (sources.load_model), with
        # model_options (prompt, class_label, guidance_scale, runtime) for conditional models
        self.model_dir = Path(model_dir) if model_dir else EMBEDDED_MODEL_DIR
        self.model_options = dict(model_options or {})
        self.pool_dir = Path(pool_dir) if pool_dir else None
        self._model = model
        self._pool = pool
        self._data_dir = Path(data_dir or DEFAULT_DATA_DIR)
        self._store = None
        self._oracle = None
        self._ranker = None  # active labelling (censor/active.py), made on first use
        self._drift = None  # the drift figure's clusters of the pool (fidelity.py), made on first use
        self._weights_cache: dict[str, np.ndarray] = {}  # reward file sha256 -> its P(benign) on the pool

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def store(self) -> SessionStore:
        if self._store is None:
            self._store = SessionStore(self._data_dir)
        return self._store

    @property
    def model(self) -> DiffusionModel:
        if self._model is None:
            from censor.diffusion.sources import load_model

            self._model = load_model(self.model_dir, **self.model_options)
        return self._model

    @property
    def pool(self):
        if self._pool is None:
            from censor.labels.pool import load_pool

            if self.pool_dir is None and self.model_dir == EMBEDDED_MODEL_DIR:
                self._pool = load_pool(model_dir=self.model_dir)
            elif self.pool_dir is None:
                raise CensorError(f"no sample pool for {self.model_dir}: make one with python -m censor make-pool "
                                  "--model ... --out DIR and start the studio with CENSOR_POOL_DIR=DIR")
            else:  # a pool made for this model: checked against its weights (and prompt or class)
                self._pool = load_pool(self.pool_dir, model_dir=self.model_dir, model=self.model)
        return self._pool

    @property
    def oracle(self):
        if self._oracle is None:
            from censor.eval.oracle import load_oracle

            self._oracle = load_oracle()
        return self._oracle

    # ---- galleries -------------------------------------------------------------------------
    def fresh_gallery(self, n: int, steps: int, seed: int,
                      progress: Callable[[float], None] | None = None) -> list[Image.Image]:
        if not 1 <= n <= MAX_GALLERY:
            raise CensorError(f"a gallery holds 1 to {MAX_GALLERY} images, asked for {n}")
        steps = int(check_range("steps", steps, (1, LIMITS["steps"][1])))  # a quick look may take fewer steps
        seed = int(check_range("seed", seed))
        return display(to_uint8(sample(self.model, seeds_for(n, seed), steps=steps, progress=progress)))

    # ---- labelling -------------------------------------------------------------------------
    def open_session(self, sid: str | None, instructions: str = "") -> str:
        """Resume the browser's session if the store knows it, else start one from the pool."""
        if sid and self.store.exists(sid):
            return sid
        sid = self.store.create(str(self.model_dir), instructions)
        rng = np.random.default_rng()
        take = rng.permutation(len(self.pool))[:POOL_PER_SESSION]
        self.store.add_items(sid, self.pool.images[take], self.pool.seeds[take], round_=1)
        return sid

    def page(self, sid: str, page: int, round_: int | None = None) -> list[dict]:
        """One page of the label grid; showing it counts its images as viewed."""
        if round_ is None and self.informative_first(sid):
            ids = self.label_order(sid, upto=(page + 1) * PAGE_SIZE)[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
            by_id = {it["item"]: it for it in self.store.items(sid, limit=1_000_000)}
            items = [by_id[i] for i in ids]
        else:
            items = self.store.items(sid, offset=page * PAGE_SIZE, limit=PAGE_SIZE, round_=round_)
        self.store.mark_viewed(sid, [it["item"] for it in items])
        return [dict(id=it["item"], src=png_data_uri(it["image"]), state=STATE_NAMES[it["state"]]) for it in items]

    def click(self, sid: str, item: int) -> str:
        return STATE_NAMES[self.store.cycle(sid, item)]

    def counts_text(self, sid: str) -> str:
        c = self.store.counts(sid)
        return f"viewed {c.viewed} · malign {c.malign} · benign {c.benign} · unsure {c.unsure}"

    def suggest_method(self, sid: str) -> tuple[str, str]:
        """Benign-dominant -> ensemble, malign-dominant -> imitation (the paper's rule of thumb)."""
        c = self.store.counts(sid)
        judged = c.malign + c.benign
        if judged == 0:
            return "ensemble", "no labels yet"
        share = c.malign / judged
        method = "imitation" if share > 0.5 else "ensemble"
        return method, f"{100 * share:.0f}% of labelled images are malign → {method}"

    # ---- training --------------------------------------------------------------------------
    def reward_dir(self, sid: str) -> Path:
        return self.store.folder(sid) / "reward"

    @reported("training")
    def train(self, sid: str, method: str, kind: str, members: int, iterations: int, alpha: float,
              progress: Callable[[float], None] | None = None) -> dict:
        members = int(check_range("members", members)) if method != "single" else 1
        iterations = int(check_range("iterations", iterations))
        alpha = float(check_range("alpha", alpha))
        images, labels = self.store.training_data(sid)
        if len(labels) > MAX_TRAIN_LABELS:
            raise CensorError(f"{len(labels)} labelled images; a reward trains on at most {MAX_TRAIN_LABELS} "
                              "(mark the oldest ones unsure to leave them out)")
        resume = None
        if method == "imitation" and (self.reward_dir(sid) / "reward.json").exists():
            previous = load_reward(self.reward_dir(sid), self.model)
            if previous.kind == kind and len(previous.members) == members:
                resume = previous
        held_out = self._held_out_accuracy(images, labels, kind, iterations, alpha)
        reward = train_reward(images, labels, kind=kind, diffusion=self.model, members=members, alpha=alpha,
                              iterations=iterations, resume=resume, progress=progress)
        reward.info["held_out_accuracy"] = held_out
        reward.save(self.reward_dir(sid))
        return dict(reward.info)

    def _held_out_accuracy(self, images, labels, kind, iterations, alpha) -> float | None:
        """With >= 30 labels and >= 5 of each class: one quick single model on 80%, balanced accuracy on 20%."""
        if len(labels) < 30 or min((labels == 0).sum(), (labels == 1).sum()) < 5:
            return None
        rng = np.random.default_rng(0)
        order = rng.permutation(len(labels))
        test, train = order[: len(order) // 5], order[len(order) // 5:]
        if len(np.unique(labels[train])) < 2:
            return None
        r = train_reward(images[train], labels[train], kind=kind, diffusion=self.model, members=1, alpha=alpha,
                         iterations=max(10, iterations // 2))
        x = to_model_range(images[test])
        t = torch.zeros(len(x), dtype=torch.long) if r.time_dependent else None
        # balanced: with ~10% malign, plain accuracy rewards calling everything benign (and α < 1
        # deliberately leans the other way), so average the two classes' hit rates
        hit = (r.benign_prob(x, t).numpy() > 0.5).astype(int) == labels[test]
        return float(np.mean([hit[labels[test] == c].mean() for c in (0, 1) if (labels[test] == c).any()]))

    # ---- censored galleries ----------------------------------------------------------------
    @reported("sampling")
    def censored_gallery(self, sid: str, guidance: str, weight: float, backward: int, recurrence: int,
                         steps: int, seed: int, count: int, feature: str | None = None,
                         progress: Callable[[float], None] | None = None,
                         tuned: tuple[str, DiffusionModel] | None = None, strict: bool = False,
                         strict_p: float | None = None, auto: bool = False) -> dict:
        """Baseline and censored galleries from the same seeds, with the oracle-free drift figure.

        ``auto``: pick ω with ``strength.auto_strength`` (a probe ladder on the session's reward)
        instead of ``weight``; the other guidance settings are the defaults (defaults.py).

        ``tuned`` = (name, model): draw the censored side from a fine-tuned model instead (an RLHF
        or D3PO adapter), guided by the session's reward when ω > 0, unguided when ω = 0.
        ``strict``: reject what the reward still doubts after guidance (rejection.py), drawing on from
        the gallery's seeds; threshold ``strict_p`` or, when None, the cross-fitted held-out one.
        """
        if strict and strict_p is not None:
            from censor.sampling.rejection import check_probability

            strict_p = check_probability(strict_p)
        weight = float(check_range("weight", weight))
        backward, recurrence = int(check_range("backward", backward)), int(check_range("recurrence", recurrence))
        steps, count = int(check_range("steps", steps)), int(check_range("count", count))
        seed = int(check_range("seed", seed))
        has_reward = (self.reward_dir(sid) / "reward.json").exists()
        if not has_reward and not (tuned is not None and weight == 0):
            raise CensorError("train a reward first (Train tab)")
        reward = load_reward(self.reward_dir(sid), self.model) if has_reward else None
        if reward is not None and guidance == "time" and not TIME_DEPENDENT[reward.kind]:
            guidance = "universal"  # a clean-image reward can only guide through x̂0
        seeds = seeds_for(count, seed)
        base_settings = DEFAULT_GUIDANCE.with_(kind=guidance, backward_steps=backward, recurrence=recurrence)
        drift_ready = reward is not None and self._drift_available()
        chosen = None
        if auto and reward is not None:
            from censor.sampling.strength import auto_strength

            chosen = auto_strength(tuned[1] if tuned else self.model, reward, self.drift_meter,
                                   self._pool_weights(sid, reward), base_settings,
                                   progress=(lambda f: progress(0.3 * f)) if progress else None)
            weight = float(chosen.weight)
        settings = dict(guidance_settings_dict(base_settings.with_(weight=weight)), steps=steps, seed=seed,
                        count=count, method="ddim", eta=0.0, adapter=tuned[0] if tuned else None,
                        auto=chosen.as_dict() if chosen else None)
        g = self._guidance(reward, settings) if reward is not None and weight > 0 else None
        start = 0.3 if chosen else 0.0
        half = (lambda f: progress(start + (0.5 - start / 2) * f)) if progress else None
        rest = (lambda f: progress(0.5 + start / 2 + (0.5 - start / 2) * f)) if progress else None
        base = to_uint8(sample(self.model, seeds, steps=steps, progress=half))
        strict_info, cens_seeds = None, seeds
        if strict:  # the censored side keeps only images the reward passes: its seeds are the kept ones
            cens, strict_info = self._strict_side(sid, reward, tuned[1] if tuned else self.model, g, steps, seed,
                                                  count, strict_p, rest)
            cens_seeds = strict_info.pop("seeds")
            settings.update(count=len(cens_seeds), strict=dict(threshold=strict_info["threshold"],
                                                               source=strict_info["source"], requested=count))
        else:
            cens = to_uint8(sample(tuned[1] if tuned else self.model, seeds, steps=steps, guidance=g, progress=rest))
        est = None
        if reward is not None:
            est = {name: float((reward.benign_prob(clean_input(reward, self.model, to_model_range(imgs)),
                                                   torch.zeros(len(imgs), dtype=torch.long))
                                < 0.5).float().mean())
                   for name, imgs in (("baseline", base), ("censored", cens))}
        drift = None
        if drift_ready:  # the oracle-free fidelity figure (fidelity.py): both sides against the pool weighted by r
            weights = self._pool_weights(sid, reward)
            drift = {name: self.drift_meter.measure(imgs, weights).as_dict()
                     for name, imgs in (("baseline", base), ("censored", cens))}
        result = dict(baseline=base, censored=cens, seeds=cens_seeds, baseline_seeds=seeds, strict=strict_info,
                      reward_malign=est, settings=settings, drift=drift,
                      reward_sha256=sha256(self.reward_dir(sid) / "reward.safetensors") if reward else None,
                      fallbacks=g.stats["nonfinite_fallbacks"] if g else 0, oracle=None)
        if feature and feature in load_features() and tuple(self.model.image_shape) == (1, 28, 28):  # a Fashion-MNIST oracle
            result["oracle"] = {name: malign_fraction(self.oracle.judge(imgs), feature)
                                for name, imgs in (("baseline", base), ("censored", cens))}
        return result

    def _strict_side(self, sid, reward, model, g, steps, seed, count, strict_p, progress) -> tuple[np.ndarray, dict]:
        """Strict mode: draw from the gallery's seeds on (guided by ``g``) and keep what the reward passes."""
        from censor.sampling.rejection import reject_sample, session_threshold

        if reward is None:
            raise CensorError("strict mode filters with the session's reward: train one first (Train tab)")
        if strict_p is None:  # cross-fitted on the session's labels once per reward, then cached beside it
            images, labels = self.store.training_data(sid)
            th = session_threshold(self.reward_dir(sid), reward, images, labels, self.model,
                                   progress=(lambda f: progress(0.4 * f)) if progress else None)
            p, source = th["threshold"], "held-out"
            rest = (lambda f: progress(0.4 + 0.6 * f)) if progress else None
        else:
            p, source, rest = strict_p, "user", progress
        r = reject_sample(model, reward, count, seed, p, guidance=g, steps=steps, progress=rest)
        if r.kept == 0:
            raise CensorError(f"strict mode kept no image: {r.summary()}; lower the threshold")
        return r.images, dict(r.as_dict(), seeds=r.seeds, source=source, summary=r.summary())

    @staticmethod
    def _guidance(reward, settings: dict) -> Guidance:
        return guidance_for(reward, guidance_from_settings(settings))

    # ---- fidelity without the oracle ---------------------------------------------------------
    def _drift_available(self) -> bool:
        try:
            return len(self.pool) >= 50
        except CensorError:  # a model without a labelling pool: no reference to measure drift against
            return False

    @property
    def drift_meter(self):
        """Clusters of the labelling pool in the encoder's feature space, fitted once per studio."""
        if self._drift is None:
            from censor.eval.drift import DriftMeter

            self._drift = DriftMeter(self.model, self.pool.images)
        return self._drift

    def _pool_weights(self, sid: str, reward) -> np.ndarray:
        """The reward's P(benign) on every pool image (the p_data·r target), cached per reward file."""
        from censor.sampling.strength import reward_benign

        key = sha256(self.reward_dir(sid) / "reward.safetensors")
        cache = self._weights_cache
        if key not in cache:
            if len(cache) > 16:
                cache.clear()
            cache[key] = reward_benign(reward, self.model, self.pool.images)
        return cache[key]

    # ---- sharing ---------------------------------------------------------------------------
    def export_gallery(self, sid: str, result: dict) -> tuple[Path, Path]:
        """A PNG grid and a reproducible zip bundle of the last censored gallery."""
        from censor.gallery.bundles import write_gallery_bundle
        from censor.gallery.grid import grid

        if result["settings"].get("adapter"):
            raise CensorError("a gallery from a fine-tuned adapter cannot be bundled yet (the bundle would have to "
                              "carry the adapter); share it as a PNG from the gallery instead")
        rdir = self.reward_dir(sid)
        if sha256(rdir / "reward.safetensors") != result["reward_sha256"]:
            raise CensorError("the reward was retrained after this gallery was rendered; render it again to share it")
        out = self.store.folder(sid) / "share"
        out.mkdir(exist_ok=True)
        both = np.concatenate([result["baseline"], result["censored"]])
        png = out / "gallery.png"
        grid(both, nrow=len(result["censored"]) if len(result["censored"]) <= 16 else 16).save(png)
        c = self.store.counts(sid)
        manifest = dict(model=str(self.model_dir), model_fingerprint=model_fingerprint(self.model.unet),
                        conditioning=conditioning_info(self.model),
                        settings=result["settings"], seeds=list(map(int, result["seeds"])),
                        labels=dict(viewed=c.viewed, malign=c.malign, benign=c.benign, unsure=c.unsure),
                        reward_info={k: v for k, v in load_reward(rdir, self.model).info.items() if not k.startswith("_")},
                        image_size=list(result["censored"].shape[1:]))
        bundle = write_gallery_bundle(out / "gallery_bundle.zip", result["baseline"], result["censored"], manifest,
                                      rdir, png.read_bytes())
        return png, bundle

    def import_gallery(self, path: str | Path, progress: Callable[[float], None] | None = None) -> dict:
        """Unpack a gallery bundle, re-sample it from its seeds and reward, and keep it under a permalink id."""
        import secrets

        from censor.gallery.bundles import read_gallery_bundle

        token = secrets.token_urlsafe(12)
        dest = self.store.root / "bundles" / token
        try:
            b = read_gallery_bundle(path, dest, image_size=tuple(self.model.image_shape[1:]))
            b["token"] = token
            return self.reproduce(b, progress)
        except Exception:  # a refused bundle leaves nothing on the (persistent) disk
            import shutil

            shutil.rmtree(dest, ignore_errors=True)
            raise

    def reproduce(self, bundle: dict, progress: Callable[[float], None] | None = None) -> dict:
        m = bundle["manifest"]
        if m.get("model_fingerprint") != model_fingerprint(self.model.unet):
            raise CensorError("this bundle was made with another diffusion model than the one loaded here")
        if m.get("conditioning") != conditioning_info(self.model):
            raise CensorError(f"this bundle was sampled with {m.get('conditioning') or 'no prompt or class'}; this studio "
                              f"samples with {conditioning_info(self.model) or 'no prompt or class'}")
        settings = m["settings"]
        # every number in the uploader's manifest is held to the same bounds as the UI's
        if not isinstance(settings, dict) or settings.get("guidance") not in ("time", "universal"):
            raise CensorError("manifest.json: settings need a guidance of 'time' or 'universal'")
        for name in ("weight", "backward", "recurrence", "steps", "count"):
            check_range(name, settings.get(name))
        check_guidance_extras(settings)
        if len(m["seeds"]) != settings["count"]:
            raise CensorError("manifest.json: count and seeds disagree")
        reward = load_reward(bundle["reward_dir"], self.model)
        images = to_uint8(sample(self.model, m["seeds"], steps=int(settings["steps"]),
                                 guidance=self._guidance(reward, settings), progress=progress))
        stored = bundle["censored"]
        diff = np.abs(images.astype(int) - stored.astype(int)).reshape(len(images), -1).max(1) if stored is not None else None
        return dict(token=bundle.get("token"), manifest=m, censored=images, stored=stored,
                    identical=int((diff == 0).sum()) if diff is not None else 0,
                    max_pixel_diff=int(diff.max()) if diff is not None else None)

    def open_permalink(self, token: str) -> dict:
        """The gallery bundle imported under ``token`` (a permalink-style view)."""
        from censor.gallery.bundles import read_json, read_png

        if not token or not re.match(r"^[A-Za-z0-9_-]{8,40}$", token):
            raise CensorError("unknown gallery link")
        folder = self.store.root / "bundles" / token
        if not (folder / "manifest.json").is_file():
            raise CensorError("unknown gallery link")
        m = read_json(folder / "manifest.json")
        size = tuple(m.get("image_size", (28, 28)))
        n = int(m.get("images", {}).get("censored", 0))
        return dict(manifest=m, censored=np.stack([read_png(folder / f"censored_{i:03d}.png", size) for i in range(n)]))

    def export_session(self, sid: str) -> Path:
        from censor.gallery.bundles import write_session_bundle

        out = self.store.folder(sid) / "share"
        out.mkdir(exist_ok=True)
        rdir = self.reward_dir(sid)
        return write_session_bundle(out / "session_bundle.zip", self.store.info(sid),
                                    self.store.items(sid, limit=100_000), rdir if rdir.exists() else None)

    def import_session(self, path: str | Path) -> str:
        """A new session holding the bundle's images, labels and reward (the original stays untouched)."""
        import shutil
        import tempfile

        from censor.gallery.bundles import read_session_bundle

        with tempfile.TemporaryDirectory(dir=self.store.root) as tmp:
            b = read_session_bundle(path, tmp)
            if tuple(b["images"].shape[1:]) != tuple(self.model.image_shape[1:]):
                raise CensorError(f"the session's images are {'x'.join(map(str, b['images'].shape[1:]))}, "
                                  f"this model makes {'x'.join(map(str, self.model.image_shape[1:]))}")
            if b["reward_dir"] is not None:
                load_reward(b["reward_dir"], self.model)  # refuse a reward for another model or image size
            sid = self.store.create(str(self.model_dir), str(b["info"].get("instructions", "")))
            for rnd in sorted({int(it["round"]) for it in b["items"]}):
                idx = [i for i, it in enumerate(b["items"]) if int(it["round"]) == rnd]
                ids = self.store.add_items(sid, b["images"][idx], [int(b["items"][i]["seed"]) for i in idx], round_=rnd)
                for i, item_id in zip(idx, ids):
                    if b["items"][i]["state"]:
                        self.store.set_state(sid, item_id, int(b["items"][i]["state"]))
                self.store.mark_viewed(sid, [item_id for i, item_id in zip(idx, ids) if b["items"][i]["viewed"]])
            if b["reward_dir"] is not None:
                self.reward_dir(sid).mkdir(parents=True, exist_ok=True)
                for name in ("reward.safetensors", "reward.json"):
                    shutil.copy(Path(b["reward_dir"]) / name, self.reward_dir(sid) / name)
        return sid

    def send_to_labelling(self, sid: str, images: np.ndarray, seeds) -> int:
        """Imitation learning: a censored gallery becomes the next round to label (most informative
        first when the session shows the most informative first)."""
        next_round = 1 + max((it["round"] for it in self.store.items(sid, limit=100_000)), default=0)
        if self.informative_first(sid) and len(seeds):
            viewed, _ = self.store.training_data(sid)
            order = self.ranker.rank_gallery(self.model, viewed, np.asarray(images, np.uint8), self.reward_dir(sid), sid)
            images, seeds = np.asarray(images)[order], [seeds[i] for i in order]
        self.store.add_items(sid, images, seeds, round_=next_round)
        return next_round

    # ---- active labelling (censor/active.py) -----------------------------------------------
    @property
    def ranker(self):
        if self._ranker is None:
            from censor.labels.active import SessionRanker

            self._ranker = SessionRanker()
        return self._ranker

    def informative_first(self, sid: str) -> bool:
        return self.store.exists(sid) and self.ranker.enabled(self.store.folder(sid))

    def set_informative_first(self, sid: str, on: bool) -> None:
        """The Label tab's "show most informative first" toggle (kept in the session folder)."""
        self.store.info(sid)  # unknown session -> CensorError
        self.ranker.set_enabled(self.store.folder(sid), on)

    def label_order(self, sid: str, upto: int = 0) -> list[int]:
        """The Label grid's item order when showing the most informative first (every item once)."""
        return self.ranker.order(self.model, self.store, sid, self.reward_dir(sid), upto=upto)

    def first_page_of_round(self, sid: str, round_: int) -> int:
        """The grid page on which a labelling round's first image appears, in the current order."""
        items = self.store.items(sid, limit=1_000_000)
        in_round = {it["item"] for it in items if it["round"] == round_}
        order = self.label_order(sid) if self.informative_first(sid) else [it["item"] for it in items]
        first = next((k for k, i in enumerate(order) if i in in_round), 0)
        return first // PAGE_SIZE
