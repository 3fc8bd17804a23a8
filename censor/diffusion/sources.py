"""Where a diffusion model comes from: the embedded one, a local diffusers folder, or a hub id.

Everything goes through diffusers' own ``from_pretrained`` and ends as one ``DiffusionModel``:
pixel UNet2DModel pipelines (DDPM-256 style, any channels and resolution), latent diffusion with a
VAE or VQ decoder, class-conditional DiT and Stable-Diffusion-style text-to-image pipelines.
Only safetensors weights are read (``use_safetensors=True``): a hub repository that ships only
pickled ``.bin`` files is refused with a message, never unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from diffusers.utils import logging as dlog
from huggingface_hub import constants

from censor.core.errors import CensorError, hide_paths, shown, source_name
from censor.diffusion.denoisers import Conditioning, network_kind
from censor.diffusion.models import EMBEDDED_MODEL_DIR, DiffusionModel, load_diffusion
from censor.diffusion.runtime import RuntimeOptions, apply_runtime

EMBEDDED = "embedded"
NETWORK_KEYS = ("unet", "transformer")
DECODER_KEYS = ("vae", "vqvae")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return hide_paths(text.splitlines()[0]) if text else type(e).__name__


def hub_offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def load_pipeline(source: str):
    """``DiffusionPipeline.from_pretrained`` on a folder or hub id; any failure is one ``CensorError``."""
    from transformers.utils import logging as tlog  # transformers costs ~2 s: only hub pipelines need it

    # per-component loading bars and config type notes are noise here; restored afterwards
    saved = [(m, m.is_progress_bar_enabled(), m.get_verbosity()) for m in (dlog, tlog)]
    for m, _, _ in saved:
        m.disable_progress_bar()
        m.set_verbosity_error()
    try:
        return _load_pipeline(source)
    finally:
        for m, bar, level in saved:
            m.set_verbosity(level)
            if bar:
                m.enable_progress_bar()


def _load_pipeline(source: str):
    local = Path(source).expanduser()
    kwargs = dict(use_safetensors=True)
    if local.is_dir():
        index = local / "model_index.json"
        try:
            components = json.loads(index.read_text())
        except (OSError, ValueError):
            raise CensorError(f"model folder {shown(local)} has no readable model_index.json (a diffusers pipeline "
                              "folder) and no unet/ + scheduler/ pair") from None
        if "safety_checker" in components:  # the censor is the point here; never needed for sampling
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        try:
            return DiffusionPipeline.from_pretrained(local, **kwargs)
        except Exception as e:  # diffusers raises many types for a damaged folder; the user needs one line
            raise CensorError(f"model folder {shown(local)} could not be loaded: {_first_line(e)}") from None
    if source.count("/") != 1 or source.startswith(("/", ".", "~")):
        raise CensorError(f"model folder {shown(source)} does not exist (and it is not a hub id of the form owner/name)")
    offline = hub_offline()
    try:
        return DiffusionPipeline.from_pretrained(source, local_files_only=offline, **kwargs)
    except Exception as e:
        if offline:
            raise CensorError(f"model {source!r} is not in the local Hugging Face cache and the hub is off "
                              "(HF_HUB_OFFLINE=1): download it where there is network "
                              f"(`hf download {source}`) or give a local folder") from None
        raise CensorError(f"model {source!r} could not be loaded from the hub (no network, no such "
                          f"model, or no safetensors weights): {_first_line(e)}") from None


def encode_prompt(tokenizer, text_encoder, prompt: str) -> torch.Tensor:
    """[1, L, D] prompt embeddings, as Stable Diffusion computes them (padded to the max length)."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0].float()


def _class_id(pipe, net, class_label) -> int:
    """A class given by id or by name (DiT pipelines carry ImageNet's names)."""
    if isinstance(class_label, str) and not class_label.strip().lstrip("-").isdigit():
        try:
            return int(pipe.get_label_ids([class_label.strip()])[0])
        except Exception:
            raise CensorError(f"unknown class name {class_label!r} for this model") from None
    cid = int(class_label)
    n = getattr(net.config, "num_embeds_ada_norm", None) or getattr(net.config, "num_class_embeds", None)
    if n is not None and not 0 <= cid < n:
        raise CensorError(f"class {cid} is out of range: this model has classes 0 to {n - 1}")
    return cid


def conditioning_for(pipe, net, prompt: str | None, class_label, guidance_scale: float | None,
                     negative_prompt: str = "") -> Conditioning | None:
    """The conditioning a pipeline needs: a prompt for text-to-image, a class id for DiT-type models."""
    comps = pipe.components
    if comps.get("text_encoder") is not None:
        if not prompt:
            raise CensorError("this is a text-to-image model: give a prompt")
        tok, enc = comps["tokenizer"], comps["text_encoder"]
        scale = 7.5 if guidance_scale is None else float(guidance_scale)
        cond = encode_prompt(tok, enc, prompt)
        uncond = encode_prompt(tok, enc, negative_prompt) if scale != 1 else None
        return Conditioning("text", cond, uncond, scale, label=prompt)
    if prompt:
        raise CensorError("this model takes no prompt")
    classes = getattr(net.config, "num_embeds_ada_norm", None) or getattr(net.config, "num_class_embeds", None)
    if classes is None:
        if class_label is not None:
            raise CensorError("this model is unconditional: it takes no class")
        return None
    if class_label is None:
        raise CensorError(f"this is a class-conditional model ({classes} classes): give a class")
    cid = _class_id(pipe, net, class_label)
    # DiT learns a "null" class (index = number of classes) for classifier-free guidance
    has_null = network_kind(net) == "dit"
    scale = (4.0 if has_null else 1.0) if guidance_scale is None else float(guidance_scale)
    if scale != 1 and not has_null:
        raise CensorError("this class-conditional model has no null class, so classifier-free guidance is not available")
    uncond = torch.tensor([classes]) if has_null else None
    return Conditioning("class", torch.tensor([cid]), uncond, scale, label=str(class_label))


def model_from_pipeline(pipe, source: str, prompt: str | None = None, class_label=None,
                        guidance_scale: float | None = None, negative_prompt: str = "") -> DiffusionModel:
    comps = pipe.components
    net = next((comps[k] for k in NETWORK_KEYS if comps.get(k) is not None), None)
    if net is None or comps.get("scheduler") is None:
        raise CensorError(f"model {source_name(source)!r} ({type(pipe).__name__}) has no UNet/transformer and scheduler to sample with")
    vae = next((comps[k] for k in DECODER_KEYS if comps.get(k) is not None), None)
    overrides = {"clip_sample": False} if vae is not None else {}  # latents are not confined to [-1, 1]
    scheduler = DDPMScheduler.from_config(comps["scheduler"].config, **overrides)
    cond = conditioning_for(pipe, net, prompt, class_label, guidance_scale, negative_prompt)
    for m in (net, vae, comps.get("text_encoder")):
        if m is not None:
            m.float().eval().requires_grad_(False)
    text = (comps["tokenizer"], comps["text_encoder"]) if comps.get("text_encoder") is not None else None
    return DiffusionModel(net, scheduler, vae=vae, conditioning=cond, text=text, source=source)


def load_model(source: str | Path | None = None, prompt: str | None = None, class_label=None,
               guidance_scale: float | None = None, negative_prompt: str = "",
               runtime: RuntimeOptions | None = None) -> DiffusionModel:
    """The model named by ``source``: None/"embedded", a folder (ours or a diffusers pipeline), or a hub id."""
    source = EMBEDDED if source in (None, "", EMBEDDED) else str(source)
    local = EMBEDDED_MODEL_DIR if source == EMBEDDED else Path(source).expanduser()
    if source == EMBEDDED or (local.is_dir() and not (local / "model_index.json").exists()
                              and (local / "unet").is_dir()):
        if prompt or class_label is not None:
            raise CensorError("this model is unconditional: it takes no prompt or class")
        model = load_diffusion(local)
        model.source = source
    else:
        model = model_from_pipeline(load_pipeline(source), source, prompt, class_label, guidance_scale,
                                    negative_prompt)
    return apply_runtime(model, runtime or RuntimeOptions())


ENV_OPTIONS = "CENSOR_MODEL, CENSOR_PROMPT, CENSOR_CLASS, CENSOR_CFG, CENSOR_DEVICE, CENSOR_DTYPE, CENSOR_BATCH"


def options_from_env(environ) -> tuple[str | None, dict]:
    """The studio's model source and ``load_model`` options from environment variables (Spaces set
    these in the Space settings): CENSOR_MODEL (or the older CENSOR_MODEL_DIR) and the rest of
    ``ENV_OPTIONS``."""
    source = environ.get("CENSOR_MODEL") or environ.get("CENSOR_MODEL_DIR") or None
    opts: dict = {}
    if environ.get("CENSOR_PROMPT"):
        opts["prompt"] = environ["CENSOR_PROMPT"]
    if environ.get("CENSOR_CLASS"):
        opts["class_label"] = environ["CENSOR_CLASS"]
    try:
        if environ.get("CENSOR_CFG"):
            opts["guidance_scale"] = float(environ["CENSOR_CFG"])
        runtime = dict(device=environ.get("CENSOR_DEVICE", "cpu"), dtype=environ.get("CENSOR_DTYPE", "fp32"),
                       batch_size=int(environ.get("CENSOR_BATCH", "250")))
    except ValueError as e:
        raise CensorError(f"bad number in the environment ({ENV_OPTIONS}): {e}") from None
    opts["runtime"] = RuntimeOptions(**runtime)
    return source, opts
