"""A gallery's guidance settings as its result and its bundle's manifest store them, and back.

Also the check of an uploaded manifest, field by field, before any of it is used or shown.

The manifest names two fields differently from ``GuidanceSettings`` (``guidance`` for ``kind``,
``backward`` for ``backward_steps``); every other field keeps its name.
"""

from __future__ import annotations

import math
import re

from censor.core.errors import CensorError
from censor.core.settings import STRICT_MODES, GuidanceSettings
from censor.sampling.guidance import Guidance, guidance_for
from censor.studio.common import MAX_TEXT, check_range, echo

WHERE = "manifest.json: "
_SLIDERS = {"weight": float, "backward": int, "recurrence": int, "steps": int, "count": int, "seed": int}
_RESULT = {"method", "eta", "adapter", "auto", "strict"}  # what a render adds to the guidance fields
_TOP = {"model", "model_fingerprint", "conditioning", "settings", "seeds", "labels", "reward_info", "image_size",
        "reward_sha256", "versions", "images"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def guidance_settings_dict(g: GuidanceSettings) -> dict:
    """A bundle's guidance settings: every field of ``GuidanceSettings`` under the manifest's names."""
    d = g.as_dict()
    d["guidance"], d["backward"] = d.pop("kind"), d.pop("backward_steps")
    return d


def guidance_from_settings(settings: dict) -> GuidanceSettings:
    """The inverse of ``guidance_settings_dict``; fields an older bundle lacks keep their old meaning
    (``settings.LEGACY``: the sum over members, no hinge), so it reproduces as it was made."""
    d = {k: v for k, v in settings.items() if k not in ("guidance", "backward")}
    return GuidanceSettings.from_dict(dict(d, kind=settings["guidance"], backward_steps=settings["backward"]))


def check_guidance_extras(settings: dict) -> None:
    """The guidance fields of an uploaded manifest beyond the UI's sliders, each held to its knob
    (``core.settings.GuidanceSettings``: the same bounds the CLI and the benchmarks document)."""
    knobs = GuidanceSettings.knobs()
    for name in knobs.keys() - {"kind", "weight", "backward_steps", "recurrence"}:
        if name in settings:
            _knob(name, settings[name])


def settings_guidance(reward, settings: dict) -> Guidance:
    """The guidance a gallery's stored settings describe, for ``reward``: what renders and reproduces it."""
    return guidance_for(reward, guidance_from_settings(settings))


def _refuse(what: str) -> CensorError:
    return CensorError(WHERE + what)


def _plain(v, depth: int = 0) -> None:
    """Plain, bounded JSON all the way down: finite numbers, strings of at most MAX_TEXT characters,
    short lists and objects, a few levels deep (a manifest is metadata, not a payload)."""
    if v is None or isinstance(v, (bool, int)):
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _refuse("numbers must be finite")
        return
    if isinstance(v, str):
        if len(v) > MAX_TEXT:
            raise _refuse(f"text fields hold at most {MAX_TEXT} characters")
        return
    if depth >= 6 or not isinstance(v, (list, dict)) or len(v) > 256:
        raise _refuse("holds a value nested too deep or too large")
    for k, x in (v.items() if isinstance(v, dict) else enumerate(v)):
        if isinstance(v, dict) and (not isinstance(k, str) or len(k) > 40):
            raise _refuse("field names are short text")
        _plain(x, depth + 1)


def _knob(name: str, v) -> None:
    """One guidance field against its knob, the refusal naming the field but never echoing the value."""
    try:
        GuidanceSettings.knobs()[name].check(name, v, WHERE)
    except CensorError as e:
        raise CensorError(str(e).split(", got ", 1)[0]) from None


def check_settings(settings) -> None:
    """Every field of a manifest's ``settings``: its exact type and range, and no field we do not know."""
    if not isinstance(settings, dict) or settings.get("guidance") not in ("time", "universal"):
        raise _refuse("settings need a guidance of 'time' or 'universal'")
    for name, kind in _SLIDERS.items():  # the UI's sliders and boxes: the same bounds as a person's numbers
        check_range(name, settings.get(name))
        if kind is int and type(settings[name]) is not int:
            raise _refuse(f"{name} must be a whole number")
    check_guidance_extras(settings)
    known = {"guidance", "backward"} | set(_SLIDERS) | _RESULT | set(GuidanceSettings.knobs())
    unknown = sorted(set(settings) - known - {"kind", "backward_steps"}) + [k for k in ("kind", "backward_steps")
                                                                            if k in settings]
    if unknown:
        raise _refuse(f"settings has an unknown field {echo(unknown[0])}")
    if settings.get("method", "ddim") != "ddim":
        raise _refuse("settings.method must be 'ddim'")
    eta = settings.get("eta", 0.0)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta != 0:
        raise _refuse("settings.eta must be 0 (DDIM)")
    if settings.get("adapter") is not None:
        raise _refuse("a gallery from a fine-tuned adapter cannot be reproduced here")
    auto, strict = settings.get("auto"), settings.get("strict")
    if auto is not None:
        if not isinstance(auto, dict) or not isinstance(auto.get("reason", ""), str) \
                or not isinstance(auto.get("trace", []), list):
            raise _refuse("settings.auto must be null or {weight, reason, trace}")
        check_range("weight", auto.get("weight"))
    if strict is not None:
        if not isinstance(strict, dict) or not isinstance(strict.get("source"), str):
            raise _refuse("settings.strict must be null or {threshold, source, requested, mode}")
        if strict.get("mode", "reject") not in STRICT_MODES[1:]:
            raise _refuse("settings.strict.mode must be 'reject' or 'repaint'")
        check_range("strict threshold", strict.get("threshold"), (0.0, 1.0))
        check_range("count", strict.get("requested"))
        if strict.get("repaint") is not None:
            _check_repaint(strict["repaint"])
    _plain(settings)


_LEGACY_REPAINT = dict(start=0.6, attempts=2, harmonize=0)  # the last knobs before bundles recorded them (a format's
#                                                             past, not a default; the first repaints harmonized once)
# bounded so that reproducing an uploaded bundle costs at most what a render here could (a public Space)
_REPAINT_BOUNDS = dict(start=(float, (0.05, 1.0)), attempts=(int, (1, 3)), harmonize=(int, (0, 1)), steps=(int, (2, 50)))


def _check_repaint(rp) -> None:
    """A bundle's repaint knobs: exactly the known ones, each of its type and in a range a render could use."""
    if not isinstance(rp, dict) or set(rp) != set(_REPAINT_BOUNDS):
        raise _refuse(f"settings.strict.repaint must be {{{', '.join(_REPAINT_BOUNDS)}}}")
    for name, (kind, bounds) in _REPAINT_BOUNDS.items():
        v = rp[name]
        if type(v) is bool or not isinstance(v, (int, float)) or (kind is int and type(v) is not int) \
                or not bounds[0] <= v <= bounds[1]:
            raise _refuse(f"settings.strict.repaint.{name} must be a {'whole ' if kind is int else ''}number "
                          f"between {bounds[0]} and {bounds[1]}")


def repaint_options(strict: dict, settings: dict) -> dict:
    """The repaint knobs a validated bundle was rendered with. Bundles from before repaint had its own
    respacing carry none: theirs were today's start, attempts and harmonize on the gallery's steps."""
    return dict(strict.get("repaint") or dict(_LEGACY_REPAINT, steps=int(settings["steps"])))


def check_conditioning(c) -> None:
    """The prompt or class a manifest says it was sampled with: null or {kind, label, scale}."""
    if c is not None and (not isinstance(c, dict) or set(c) != {"kind", "label", "scale"}
                          or not isinstance(c["kind"], str) or not isinstance(c["label"], (str, int))
                          or not (c["scale"] is None or isinstance(c["scale"], (int, float)))):
        raise _refuse("conditioning must be null or {kind, label, scale}")


def check_manifest(m: dict) -> None:
    """An uploaded (or stored) gallery manifest, every field: what it may hold, before anything uses or shows it."""
    unknown = sorted(set(m) - _TOP)
    if unknown:
        raise _refuse(f"unknown field {echo(unknown[0])}")
    check_settings(m.get("settings"))
    if not isinstance(m.get("reward_sha256"), str) or not _HEX64.match(m["reward_sha256"]):
        raise _refuse("reward_sha256 must be 64 hexadecimal digits")
    for name in ("model", "model_fingerprint"):
        if not isinstance(m.get(name, ""), str):
            raise _refuse(f"{name} must be text")
    check_conditioning(m.get("conditioning"))
    labels = m.get("labels", {})
    if not isinstance(labels, dict) or any(type(v) is not int or v < 0 for v in labels.values()) \
            or not set(labels) <= {"viewed", "malign", "benign", "unsure"}:
        raise _refuse("labels must map viewed, malign, benign and unsure to counts")
    for name in ("reward_info", "versions", "images"):
        if not isinstance(m.get(name, {}), dict):
            raise _refuse(f"{name} must be an object")
    if any(not isinstance(v, str) for v in m.get("versions", {}).values()):
        raise _refuse("versions must map names to version text")
    _plain(m)
