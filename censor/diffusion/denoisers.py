"""ε_θ(x_t, t) for every supported network, so the sampler and guidance see one interface.

Diffusers networks differ in what they take and what they return: a text UNet wants prompt
embeddings, DiT wants class labels and returns learned variances beside ε, some models predict v
or x_0 instead of ε, and classifier-free guidance (CFG) mixes a conditional and an unconditional
pass. ``Denoiser`` folds all of that into ``denoiser(x, t).sample == ε`` in one place:

- learned variance: only the first C output channels are ε (DiT, IDDPM-style UNets);
- CFG: ε = ε_u + s (ε_c - ε_u), one batched pass over [x, x];
- prediction type: ε = sqrt(ᾱ_t) v + sqrt(1-ᾱ_t) x_t for v, ε = (x_t - sqrt(ᾱ_t) x̂0) / sqrt(1-ᾱ_t) for x_0.

A plain unconditional ε-prediction UNet2DModel is returned as itself: the time-dependent reward
that reads the UNet's own encoder recognises it and shares its forward pass (guidance.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from censor.core.errors import CensorError


@dataclass
class Conditioning:
    """What the network is conditioned on: prompt embeddings [1, L, D] or a class id, with CFG."""

    kind: str  # "text" or "class"
    cond: torch.Tensor
    uncond: torch.Tensor | None = None
    scale: float = 1.0  # classifier-free guidance scale s; 1 = conditional pass only
    label: str = ""  # the prompt or class, for manifests and captions

    def __post_init__(self):
        if self.kind not in ("text", "class"):
            raise CensorError(f"unknown conditioning kind {self.kind!r}")
        if self.scale < 0:
            raise CensorError(f"the classifier-free guidance scale must be >= 0, got {self.scale}")
        if self.scale != 1 and self.uncond is None:
            raise CensorError("classifier-free guidance needs an unconditional input")

    @property
    def uses_cfg(self) -> bool:
        return self.scale != 1


def network_kind(net: nn.Module) -> str:
    """How the network is called: 'dit' (class_labels, tensor timesteps), 'text' or 'plain'."""
    name = type(net).__name__
    if "Transformer" in name or "DiT" in name:
        return "dit"
    if getattr(net.config, "cross_attention_dim", None) is not None and "Condition" in name:
        return "text"
    return "plain"


class Denoiser(nn.Module):
    """Wraps a diffusers network so that ``forward(x_t, t).sample`` is ε with conditioning applied."""

    def __init__(self, net: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                 conditioning: Conditioning | None = None, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise CensorError(f"unsupported prediction type {prediction_type!r}")
        self.net = net
        self.takes = network_kind(net)
        if self.takes == "text" and (conditioning is None or conditioning.kind != "text"):
            raise CensorError("this is a text-to-image model: give a prompt")
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone(), persistent=False)
        self.prediction_type = prediction_type
        self.conditioning = conditioning
        self.autocast_dtype = autocast_dtype

    @property
    def config(self):
        return self.net.config

    def _call(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if self.takes == "dit":
            return self.net(x, timestep=t, class_labels=c).sample
        if self.takes == "text":
            return self.net(x, t, encoder_hidden_states=c).sample
        if c is not None:  # a class-conditional UNet2DModel (num_class_embeds)
            return self.net(x, t, class_labels=c).sample
        return self.net(x, t).sample

    def _net_output(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, n = self.conditioning, len(x)
        if cond is None:
            c = None
        elif cond.uses_cfg:
            x, t = torch.cat([x, x]), torch.cat([t, t])
            c = torch.cat([cond.uncond.expand(n, *cond.uncond.shape[1:]), cond.cond.expand(n, *cond.cond.shape[1:])])
        else:
            c = cond.cond.expand(n, *cond.cond.shape[1:])
        if c is not None:
            c = c.to(x.device)
        # weights stay fp32 (sources.py, runtime.py); half precision only ever comes from autocast
        with torch.autocast(x.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out = self._call(x, t, c)
        out = out.float()[:, : x.shape[1]]  # learned variance: only the first C channels are the prediction
        if cond is not None and cond.uses_cfg:
            u, k = out.chunk(2)
            out = u + cond.scale * (k - u)
        return out

    def forward(self, x: torch.Tensor, t) -> SimpleNamespace:
        t = torch.as_tensor(t, device=x.device).reshape(-1).long().expand(len(x))
        out = self._net_output(x, t)
        if self.prediction_type != "epsilon":
            ab = self.alphas_cumprod.to(x.device)[t].view(-1, 1, 1, 1)
            if self.prediction_type == "v_prediction":
                out = ab.sqrt() * out + (1 - ab).sqrt() * x
            else:
                out = (x - ab.sqrt() * out) / (1 - ab).sqrt()
        return SimpleNamespace(sample=out)


def make_denoiser(net: nn.Module, scheduler, conditioning: Conditioning | None = None, runtime=None):
    """The ε interface for ``net``: the network itself when it already is one, else a ``Denoiser``."""
    prediction = scheduler.config.get("prediction_type", "epsilon")
    autocast = getattr(runtime, "autocast_dtype", None)
    plain = network_kind(net) == "plain" and conditioning is None and prediction == "epsilon"
    learned_var = getattr(net.config, "out_channels", None) not in (None, getattr(net.config, "in_channels", None))
    if plain and not learned_var and autocast is None:
        return net
    return Denoiser(net, scheduler.alphas_cumprod, prediction, conditioning, autocast)
