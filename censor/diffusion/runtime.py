"""Speed and memory switches for big models on GPU hosts; every one is off by default.

Guided sampling differentiates through the denoiser (universal guidance) or a reward, so the
usual inference tricks need care: weights stay fp32 and only the forward passes run under
autocast (fp16/bf16), so the reward gradient is accumulated in fp32; gradient checkpointing trades
a second forward for the activation memory that backprop through a 256×256 UNet needs; attention
slicing does the same for the attention maps; ``torch.compile`` pays only on long runs of one
shape. On the CPU all of them are slower or unsupported, hence the defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from censor.core.errors import CensorError

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RuntimeOptions:
    device: str = "cpu"
    dtype: str = "fp32"  # autocast dtype of the denoiser's forward passes
    attention_slicing: bool = False
    gradient_checkpointing: bool = False
    compile: bool = False
    batch_size: int = 250  # images per sampler batch: the batch-splitting knob for GPU memory

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise CensorError(f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}")
        if self.batch_size < 1:
            raise CensorError(f"batch size must be >= 1, got {self.batch_size}")
        if self.dtype == "fp16" and self.device == "cpu":
            raise CensorError("fp16 autocast needs a GPU; on the CPU use bf16 or fp32")

    @property
    def autocast_dtype(self):
        return DTYPES[self.dtype]

    def to_dict(self) -> dict:
        return asdict(self)


def apply_runtime(model, options: RuntimeOptions):
    """Move ``model`` to the device and switch on what ``options`` asks for (in place; returns it)."""
    try:
        model.unet.to(options.device)
        if model.vae is not None:
            model.vae.to(options.device)
        if model.text is not None:
            model.text[1].to(options.device)
    except (RuntimeError, AssertionError) as e:
        raise CensorError(f"cannot use device {options.device!r}: {str(e).splitlines()[0]}") from None
    if model.conditioning is not None:
        c = model.conditioning
        c.cond = c.cond.to(options.device)
        c.uncond = None if c.uncond is None else c.uncond.to(options.device)
    unet = model.unet
    if options.attention_slicing:
        if not hasattr(unet, "set_attention_slice"):
            raise CensorError(f"{type(unet).__name__} does not support attention slicing")
        unet.set_attention_slice("auto")
    if options.gradient_checkpointing:
        if not getattr(unet, "_supports_gradient_checkpointing", False):
            raise CensorError(f"{type(unet).__name__} does not support gradient checkpointing")
        unet.enable_gradient_checkpointing()
    if options.compile:
        unet.forward = torch.compile(unet.forward)
    model.runtime = options
    return model
