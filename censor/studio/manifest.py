"""A gallery's guidance settings as its result and its bundle's manifest store them, and back.

The manifest names two fields differently from ``GuidanceSettings`` (``guidance`` for ``kind``,
``backward`` for ``backward_steps``); every other field keeps its name.
"""

from __future__ import annotations

from censor.core.settings import GuidanceSettings
from censor.sampling.guidance import Guidance, guidance_for


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
            knobs[name].check(name, settings[name], "manifest.json: ")


def settings_guidance(reward, settings: dict) -> Guidance:
    """The guidance a gallery's stored settings describe, for ``reward``: what renders and reproduces it."""
    return guidance_for(reward, guidance_from_settings(settings))
