"""The Samples and Censored gallery tabs: fresh samples, and baseline vs censored galleries from the
same seeds, with strict mode (``censor.sampling.rejection``), the automatic strength
(``censor.sampling.strength``), the reward's malign estimate, the oracle's judgement (``eval.judge``)
and the oracle-free drift figure (``censor.eval.drift``). The baseline side of a (model, seeds,
steps) is sampled once and kept, with its judgements: it is half of a render's time otherwise."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.core.progress import Progress, part, stages
from censor.core.settings import COUNT, DEFAULT_GUIDANCE, STEPS
from censor.diffusion.models import DiffusionModel
from censor.eval.drift import DriftMeter
from censor.eval.features import load_features
from censor.eval.judge import GalleryJudge, half_split_floor
from censor.gallery.bundles import sha256
from censor.rewards.ensemble import model_fingerprint
from censor.sampling.kinds import kind_for
from censor.sampling.loop import GUIDED_STEP_COST, sample, seeds_for
from censor.sampling.rejection import check_probability
from censor.sampling.repaint import REPAINT_DEFAULTS, resolve_strict_mode, strict_sample
from censor.sampling.thresholds import benign_scores, cached_threshold, session_threshold, threshold_cost
from censor.sampling.strength import LADDER, PROBE_N, PROBE_STEPS, auto_strength, reward_benign
from censor.studio.common import (
    BASELINE_CACHE_SIZE,
    LIMITS,
    MAX_GALLERY,
    check_range,
    conditioning_info,
    display,
    reported,
)
from censor.studio import readouts
from censor.studio.manifest import guidance_settings_dict, settings_guidance
from censor.studio.resources import Resources

STRICT_P_RANGE = (0.0, 0.99)  # the strict threshold's slider; the server takes any probability in [0, 1)
POOL_PASS_STEPS = 1.0  # a pool image's embedding, clustering and score, in image-steps (measured: 2-10 s on a loaded CPU)
MIN_DRIFT_POOL = 50  # fewer pool images than this are too few clusters' worth to measure drift against


class Galleries:
    """What the Samples and Censored gallery tabs call; keeps the drift clusters of the pool and the
    rewards' weights on it between galleries."""

    def __init__(self, res: Resources):
        self.res = res
        self._drift = None  # the drift figure's clusters of the pool, made on first use
        self._weights_cache: dict[str, np.ndarray] = {}  # reward file sha256 -> its P(benign) on the pool
        self._baselines: OrderedDict[tuple, dict] = OrderedDict()  # (model, seeds, steps) -> images, judgements
        self._baselines_lock = threading.Lock()

    def fresh_gallery(self, n: int, steps: int, seed: int,
                      progress: Progress | None = None) -> list[Image.Image]:
        if not 1 <= n <= MAX_GALLERY:
            raise CensorError(f"a gallery holds 1 to {MAX_GALLERY} images, asked for {n}")
        steps = int(check_range("steps", steps, (1, LIMITS["steps"][1])))  # a quick look may take fewer steps
        seed = int(check_range("seed", seed))
        return display(to_uint8(sample(self.res.model, seeds_for(n, seed), steps=steps, progress=progress)))

    @reported("sampling")
    def censored_gallery(self, sid: str, guidance: str, weight: float, backward: int, recurrence: int,
                         steps: int, seed: int, count: int, feature: str | None = None,
                         progress: Progress | None = None,
                         tuned: tuple[str, DiffusionModel] | None = None, strict: bool = False,
                         strict_p: float | None = None, auto: bool = False, strict_mode: str = "auto") -> dict:
        """Baseline and censored galleries from the same seeds, with the oracle-free drift figure.

        ``auto``: pick ω with ``strength.auto_strength`` (a probe ladder on the session's reward)
        instead of ``weight``; the other guidance settings are the defaults (core.settings).

        ``tuned`` = (name, model): draw the censored side from a fine-tuned model instead (an RLHF
        or D3PO adapter), guided by the session's reward when ω > 0, unguided when ω = 0.
        ``strict``: reject what the reward still doubts after guidance (rejection.py), drawing on from
        the gallery's seeds; threshold ``strict_p`` or, when None, the cross-fitted held-out one. With
        ``strict_mode`` "repaint" (or "auto" with a local-mark reward) a doubted image is redrawn inside
        the reward's malign region instead (sampling.repaint), so the gallery keeps its seeds.
        A clean-image reward is guided universally (``sampling.kinds``): ``guidance_note`` says so.
        """
        if strict and strict_p is not None:
            strict_p = check_probability(strict_p)
        weight = float(check_range("weight", weight))
        backward, recurrence = int(check_range("backward", backward)), int(check_range("recurrence", recurrence))
        steps, count = int(check_range("steps", steps)), int(check_range("count", count))
        seed = int(check_range("seed", seed))
        res, model = self.res, self.res.model
        has_reward = res.has_reward(sid)
        if not has_reward and not (tuned is not None and weight == 0):
            raise CensorError("train a reward first (Train tab)")
        reward = res.session_reward(sid) if has_reward else None
        guidance, note = kind_for(reward, guidance, switch=True) if reward is not None else (guidance, None)
        censoring = tuned[1] if tuned else model
        seeds = seeds_for(count, seed)
        base_settings = DEFAULT_GUIDANCE.with_(kind=guidance, backward_steps=backward, recurrence=recurrence)
        drift_ready = reward is not None and self._drift_available()
        if strict and reward is None:
            raise CensorError("strict mode filters with the session's reward: train one first (Train tab)")
        mode = resolve_strict_mode(strict_mode, reward) if strict else None
        threshold = cached_threshold(res.reward_dir(sid)) if strict and strict_p is None else None
        labels = res.store.training_data(sid)[1] if strict and strict_p is None and threshold is None else None
        # one bar, each stage sized by what it costs (unguided image-steps); stages already done cost nothing
        cost = count * steps
        bar = stages(progress, dict(
            pool=POOL_PASS_STEPS * len(self.res.pool) if drift_ready and not self._pool_ready(sid) else 0.0,
            threshold=threshold_cost(reward, labels) if labels is not None else 0.0,
            auto=len(LADDER) * PROBE_N * PROBE_STEPS * GUIDED_STEP_COST if auto and reward is not None else 0.0,
            baseline=0.0 if self.has_baseline(model, seed, count, steps) else cost, censored=cost * (GUIDED_STEP_COST if reward is not None else 1.0)))
        if drift_ready:  # the pool's clusters and the reward's weights on it, the first time (seconds)
            self._pool_weights(sid, reward, part(bar["pool"], 0, 1, "measuring the labelling pool"))
        if labels is not None:  # cross-fitted on the session's labels once per reward, then cached beside it
            boxes = res.store.training_boxes(sid) if reward.info.get("boxes") else None  # the reward's own recipe
            threshold = session_threshold(res.reward_dir(sid), reward, res.store.training_data(sid)[0], labels, model,
                                          res.pool.images, boxes=boxes, progress=part(bar["threshold"], 0, 1, "strict mode"))
        chosen = None
        if auto and reward is not None:
            chosen = auto_strength(censoring, reward, self.drift_meter, self._pool_weights(sid, reward), base_settings,
                                   progress=bar["auto"])
            weight = float(chosen.weight)
        settings = dict(guidance_settings_dict(base_settings.with_(weight=weight)), steps=steps, seed=seed,
                        count=count, method="ddim", eta=0.0, adapter=tuned[0] if tuned else None,
                        auto=chosen.as_dict() if chosen else None)
        g = settings_guidance(reward, settings) if reward is not None and weight > 0 else None
        entry = self.baseline(model, seed, count, steps, part(bar["baseline"], 0, 1, "baseline"))
        base = entry["images"]
        rest = part(bar["censored"], 0, 1, "censored")
        strict_info, cens_seeds = None, seeds
        if strict:
            p, source = (threshold["threshold"], "held-out") if strict_p is None else (strict_p, "user")
        if mode is not None:  # reject: the censored side's seeds are the kept ones; repaint: every seed stays
            cens, cens_seeds, r = strict_sample(censoring, reward, count, seed, p, mode, guidance=g, steps=steps,
                                                progress=rest)
            strict_info = dict(r.as_dict(), source=source, summary=r.summary(), mode=mode,
                               pool_share=threshold.get("reference_share") if source == "held-out" else None)
            settings.update(count=len(cens_seeds), strict=dict(threshold=p, source=source, requested=count, mode=mode,
                                                               **({"repaint": dict(REPAINT_DEFAULTS)} if mode == "repaint" else {})))
        else:
            cens = to_uint8(sample(censoring, seeds, steps=steps, guidance=g, progress=rest))
        rsha = sha256(res.reward_dir(sid) / "reward.safetensors") if reward else None
        est = drift = None
        if reward is not None:  # the baseline's share is kept per reward file with the baseline
            est = dict(baseline=_kept(entry["reward_malign"], rsha, lambda: _reward_malign(reward, base, model)),
                       censored=_reward_malign(reward, cens, model))
        if drift_ready:  # the oracle-free fidelity figure: both sides against the pool weighted by r
            weights = self._pool_weights(sid, reward)
            drift = dict(baseline=_kept(entry["drift"], rsha, lambda: self.drift_meter.measure(base, weights).as_dict()),
                         censored=self.drift_meter.measure(cens, weights).as_dict())
        result = dict(baseline=base, censored=cens, seeds=cens_seeds, baseline_seeds=seeds, strict=strict_info,
                      reward_malign=est, settings=settings, drift=drift, guidance_note=note, reward_sha256=rsha,
                      fallbacks=g.stats["nonfinite_fallbacks"] if g else 0, oracle=None)
        if feature and feature in load_features() and tuple(model.image_shape) == (1, 28, 28):  # a Fashion-MNIST oracle
            result["oracle"] = self._oracle_block(entry, feature, cens)
        return result

    def baseline(self, model: DiffusionModel, seed: int, count: int, steps: int,
                 progress: Progress | None = None) -> dict:
        """The unguided gallery of (model, seeds, steps), sampled on the first call and kept (LRU of
        ``BASELINE_CACHE_SIZE``) with what is judged of it: ``images``, and per feature the oracle's
        ``judges``, per reward file its ``reward_malign`` share and ``drift``. The key holds the model's
        weight fingerprint and conditioning, so a changed model misses."""
        key = self._baseline_key(model, seed, count, steps)
        with self._baselines_lock:
            entry = self._baselines.get(key)
            if entry is not None:
                self._baselines.move_to_end(key)
        if entry is None:
            images = to_uint8(sample(model, seeds_for(count, seed), steps=steps, progress=progress))
            entry = dict(images=images, judges={}, reward_malign={}, drift={})
            with self._baselines_lock:
                self._baselines[key] = entry
                while len(self._baselines) > BASELINE_CACHE_SIZE:
                    self._baselines.popitem(last=False)
        elif progress is not None:
            progress(1.0)
        return entry

    def _baseline_key(self, model: DiffusionModel, seed: int, count: int, steps: int) -> tuple:
        return id(model), model_fingerprint(model.unet), repr(conditioning_info(model)), seed, count, steps

    def has_baseline(self, model: DiffusionModel, seed: int, count: int, steps: int) -> bool:
        return self._baseline_key(model, seed, count, steps) in self._baselines

    def _oracle_block(self, entry: dict, feature: str, censored: np.ndarray) -> dict:
        """Both sides judged by the benchmarks' one judge: malign count of n with its Wilson interval,
        and for the censored side tv to the baseline's benign classes, recall against the real benign
        test images relative to the baseline's, and the confident share. The tv floor is the two
        halves of the baseline (no second unguided gallery is drawn: an upper estimate)."""
        judge = _kept(entry["judges"], feature,
                      lambda: GalleryJudge(self.res.oracle, feature, self.res.reference, entry["images"]))
        b, c = judge.baseline_row(), judge(censored)
        counts = ("malign", "n", "malign_pct", "ci_pct")
        return dict(feature=feature, tv_floor=half_split_floor(judge.base, feature), floor="two halves of the baseline",
                    baseline=dict({k: b[k] for k in counts}, recall=judge.base_recall, confident=b["confident"]),
                    censored=dict({k: c[k] for k in counts}, tv=c["tv"], recall=c["recall"],
                                  recall_ratio=c["recall_ratio"], confident=c["confident"]))

    def cost_text(self, sid: str | None, guidance: str, backward: int, recurrence: int, steps: int,
                  strict: bool, strict_mode: str = "auto") -> str:
        """The Censor tab's price of its settings before the click, for the session's reward if it has one."""
        reward = self.res.session_reward(sid) if sid and self.res.has_reward(sid) else None
        return readouts.cost_text(reward, guidance, backward, recurrence, steps, strict, strict_mode)

    def warm_up(self) -> None:
        """What the first default render would otherwise wait for, done while a person labels: the
        default gallery's baseline (seed 0, ``COUNT`` images, ``STEPS`` steps) and the pool's clusters."""
        self.baseline(self.res.model, 0, COUNT, STEPS)
        if self._drift_available():
            self._meter()

    # ---- fidelity without the oracle ---------------------------------------------------------
    def _drift_available(self) -> bool:
        try:
            return len(self.res.pool) >= MIN_DRIFT_POOL
        except CensorError:  # a model without a labelling pool: no reference to measure drift against
            return False

    @property
    def drift_meter(self) -> DriftMeter:
        """Clusters of the labelling pool in the encoder's feature space, fitted once per studio."""
        return self._meter()

    def _meter(self, progress: Progress | None = None) -> DriftMeter:
        if self._drift is None:
            self._drift = DriftMeter(self.res.model, self.res.pool.images, progress=progress)
        return self._drift

    def _pool_ready(self, sid: str) -> bool:
        return self._drift is not None and sha256(self.res.reward_dir(sid) / "reward.safetensors") in self._weights_cache

    def _pool_weights(self, sid: str, reward, progress: Progress | None = None) -> np.ndarray:
        """The reward's P(benign) on every pool image (the p_data·r target), cached per reward file; the
        first call also fits the drift meter (``progress`` covers both)."""
        self._meter(part(progress, 0.0, 0.5))
        key = sha256(self.res.reward_dir(sid) / "reward.safetensors")
        cache = self._weights_cache
        if key not in cache:
            if len(cache) > 16:
                cache.clear()
            cache[key] = reward_benign(reward, self.res.model, self.res.pool.images, progress=part(progress, 0.5, 0.5))
        return cache[key]


def _kept(cache: dict, key, make):
    """``cache[key]``, made by ``make()`` on first use."""
    if key not in cache:
        cache[key] = make()
    return cache[key]


def _reward_malign(reward, images: np.ndarray, model) -> float:
    """The share of images the reward calls malign (P(benign) < 0.5)."""
    return float((benign_scores(reward, images, model=model) < 0.5).mean())
