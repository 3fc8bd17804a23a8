"""What gets trained, and how it is stored: LoRA adapters (peft) on the diffusion UNet, or all of it.

LoRA keeps the base weights bit-identical, so the frozen reference policy that D3PO and the KL
penalty need is simply the model without its adapters, and a fine-tune ships as a file of a few
hundred kB next to the model instead of a second model. peft initialises lora_B to zero: the
adapted UNet starts *exactly* at π_ref, which the D3PO clamp assumes.

Storage follows the project rule, safetensors + JSON only: ``adapter.safetensors`` (peft's adapter
state dict, or the whole UNet for a full fine-tune) and ``adapter.json`` (kind, rank, alpha,
target, a fingerprint of the base weights, and the training settings). Nothing else is ever read,
so a ``.bin``/``.pt`` in the folder is refused, never unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from censor.core.errors import CensorError

ADAPTER_FORMAT = "censor-adapter"
ADAPTER_VERSION = 1
WEIGHTS_FILE, META_FILE = "adapter.safetensors", "adapter.json"
KINDS = ("lora", "full")
# peft matches a string target with re.fullmatch over module names
TARGETS = {
    "attention": r".*\.(to_q|to_k|to_v|to_out\.0)",
    "attention+convs": r".*\.((to_q|to_k|to_v|to_out\.0)|resnets\.\d+\.conv[12])",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def has_lora(unet) -> bool:
    return any("lora_" in n for n, _ in unet.named_parameters())


def add_lora(unet, rank: int = 4, alpha: float | None = None, target: str = "attention"):
    """Inject LoRA layers (in place) and freeze everything else; returns the UNet.

    ``alpha`` defaults to ``rank`` (scale 1), as in DDPO/D3PO's diffusers LoRA setup.
    """
    # local import: peft pulls in transformers (~2 s), paid only when adapters are used
    from peft import LoraConfig, inject_adapter_in_model

    if target not in TARGETS:
        raise CensorError(f"unknown LoRA target {target!r}; use one of {', '.join(TARGETS)}")
    if not isinstance(rank, int) or rank < 1:
        raise CensorError(f"LoRA rank must be a positive integer, got {rank!r}")
    if has_lora(unet):
        raise CensorError("this UNet already has a LoRA adapter")
    cfg = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=TARGETS[target],
                     init_lora_weights=True, lora_dropout=0.0)
    try:
        inject_adapter_in_model(cfg, unet)
    except ValueError as e:  # peft: no module matched the target
        raise CensorError(f"no {target} layers to adapt in this UNet ({str(e).splitlines()[0]})") from None
    unet.requires_grad_(False)
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    unet._censor_lora = dict(rank=rank, alpha=rank if alpha is None else alpha, target=target)
    return unet


def make_trainable(unet, full: bool = False, rank: int = 4, alpha: float | None = None,
                   target: str = "attention") -> list[torch.nn.Parameter]:
    """The parameters to optimise: LoRA adapters (added if absent) or, with ``full``, every weight.

    Full fine-tuning is for tiny models only, where the adapter's saving in memory does not matter.
    """
    if full:
        if has_lora(unet):
            raise CensorError("full fine-tuning of a UNet that carries a LoRA adapter is not supported")
        unet.requires_grad_(True)
    elif not has_lora(unet):
        add_lora(unet, rank, alpha, target)
    else:  # resuming: the adapter was handed back frozen
        for name, p in unet.named_parameters():
            p.requires_grad_("lora_" in name)
    return [p for p in unet.parameters() if p.requires_grad]


def frozen_reference(unet):
    """π_ref: a frozen deep copy of the UNet *without* adapters (taken before they are added, or
    with any present adapters switched off)."""
    ref = copy.deepcopy(unet)
    for m in ref.modules():
        if hasattr(m, "enable_adapters") and hasattr(m, "lora_A"):
            m.enable_adapters(False)
    return ref.eval().requires_grad_(False)


def base_fingerprint(unet) -> str:
    """A hash of the base (non-LoRA) weights, the same before and after adapters are injected."""
    h = hashlib.sha256()
    sd = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}
    for k, v in sorted(sd.items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def save_adapter(unet, folder: str | Path, config: dict | None = None) -> Path:
    """Write ``adapter.safetensors`` + ``adapter.json``: the LoRA weights, or the whole UNet when it
    has no LoRA (a full fine-tune). ``config`` (training settings) is stored alongside."""
    # local import: peft pulls in transformers (~2 s), paid only when adapters are used
    from peft import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if has_lora(unet):
        lora = getattr(unet, "_censor_lora", None)
        if lora is None:
            raise CensorError("this UNet's LoRA adapter was not added by rlhf.adapters.add_lora")
        tensors = get_peft_model_state_dict(unet)
        meta = dict(kind="lora", **lora, base_fingerprint=base_fingerprint(unet))
    else:
        tensors = unet.state_dict()
        meta = dict(kind="full")
    meta = dict(format=ADAPTER_FORMAT, version=ADAPTER_VERSION, **meta, config=config or {})
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_FILE))
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))
    return folder


def read_adapter_meta(folder: str | Path) -> dict:
    """Validate ``adapter.json`` (and that the weights are a safetensors file) without loading weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CensorError(f"adapter folder {folder} does not exist")
    if not (folder / WEIGHTS_FILE).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CensorError(f"adapter folder {folder} holds {pickles[0]}, a pickle file; only "
                              f"{WEIGHTS_FILE} is ever loaded")
        raise CensorError(f"adapter folder {folder} is incomplete: {WEIGHTS_FILE} is missing")
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except FileNotFoundError:
        raise CensorError(f"adapter folder {folder} is incomplete: {META_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CensorError(f"adapter folder {folder}: {META_FILE} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise CensorError(f"adapter folder {folder}: {META_FILE} is not a censor adapter description")
    if meta.get("version") != ADAPTER_VERSION:
        raise CensorError(f"adapter folder {folder}: unsupported adapter version {meta.get('version')!r}")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise CensorError(f"adapter folder {folder}: unknown adapter kind {kind!r}")
    if kind == "lora":
        rank, target = meta.get("rank"), meta.get("target")
        if not isinstance(rank, int) or rank < 1 or target not in TARGETS or not isinstance(meta.get("alpha"), (int, float)):
            raise CensorError(f"adapter folder {folder}: {META_FILE} has an invalid rank, alpha or target")
    return meta


def load_adapter(unet, folder: str | Path, check_base: bool = True):
    """Put a saved adapter on ``unet`` (in place, returns it); any problem is one ``CensorError``.

    A LoRA adapter goes onto a plain UNet (its LoRA layers are created from the JSON) and is refused
    when the UNet's base weights are not the ones it was trained on; a full fine-tune replaces all
    weights and must match the architecture exactly. The result is frozen and ready to sample.
    """
    folder = Path(folder)
    meta = read_adapter_meta(folder)
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except Exception as e:
        raise CensorError(f"adapter folder {folder}: {WEIGHTS_FILE} is corrupt ({type(e).__name__})") from None
    if meta["kind"] == "full":
        try:
            unet.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise CensorError(f"adapter folder {folder} does not fit this UNet: {str(e).splitlines()[0]}") from None
        return unet.eval().requires_grad_(False)

    # local import: peft pulls in transformers (~2 s), paid only when adapters are used
    from peft import set_peft_model_state_dict

    if has_lora(unet):
        raise CensorError("this UNet already has a LoRA adapter; load onto a fresh copy of the model")
    if check_base and meta.get("base_fingerprint") != base_fingerprint(unet):
        raise CensorError(f"adapter folder {folder} was trained on another diffusion model")
    problem = _lora_mismatch(unet, tensors, meta["rank"], meta["target"])
    if problem:
        raise CensorError(f"adapter folder {folder} does not fit this UNet ({problem})")
    add_lora(unet, meta["rank"], meta["alpha"], meta["target"])
    set_peft_model_state_dict(unet, tensors)
    return unet.eval().requires_grad_(False)


def _lora_mismatch(unet, tensors: dict, rank: int, target: str) -> str | None:
    """Why ``tensors`` cannot be this UNet's LoRA weights, checked before the UNet is touched."""
    modules = {n: m for n, m in unet.named_modules() if re.fullmatch(TARGETS[target], n)}
    expected = {f"{n}.lora_{ab}.weight" for n in modules for ab in "AB"}
    if set(tensors) != expected:
        return f"{len(set(tensors) ^ expected)} LoRA tensor names differ"
    for n, m in modules.items():
        fan_in = getattr(m, "in_features", getattr(m, "in_channels", None))
        fan_out = getattr(m, "out_features", getattr(m, "out_channels", None))
        a, b = tensors[f"{n}.lora_A.weight"], tensors[f"{n}.lora_B.weight"]
        if a.shape[:2] != (rank, fan_in) or b.shape[:2] != (fan_out, rank):
            return f"{n} has shape {tuple(a.shape)}/{tuple(b.shape)}"
    return None
