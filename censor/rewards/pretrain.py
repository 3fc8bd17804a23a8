"""``python -m censor train-backbone``: self-supervised (SimCLR) pretraining of the ResNet18 reward backbone."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from censor.core.data import load_watermarked, to_model_range
from censor.rewards.architectures import ResNet18Reward
from censor.rewards.backbone import BACKBONE_DIR
from censor.rewards.training import augment


def views(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view per image: flip/rotate/shift, a random crop-and-resize, contrast jitter, noise."""
    x = augment(x, gen, max_degrees=15.0, max_shift=3.0)
    n = len(x)
    scale = 0.7 + 0.3 * torch.rand(n, generator=gen)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - scale[:, None])
    x = F.grid_sample(x + 1, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False) - 1
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)
    x = ((x + 1) * contrast - 1).clamp(-1, 1)
    return x + 0.05 * torch.randn(x.shape, generator=gen)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = len(z1)
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def train(data_dir, epochs: int = 5, batch: int = 256, lr: float = 1e-3, subset: int | None = None,
          out=BACKBONE_DIR, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = to_model_range(load_watermarked("train", data_dir).images)  # images only: no labels are read
    if subset:
        x = x[torch.randperm(len(x), generator=gen)[:subset]]
    model = ResNet18Reward()
    projector = nn.Sequential(nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Linear(256, 128))
    params = list(model.parameters()) + list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0, losses = time.time(), []
    bar = tqdm(total=steps, desc="backbone")
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // batch):
            xb = x[perm[i * batch:(i + 1) * batch]]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                z1 = projector(model.features(views(xb, gen)))
                z2 = projector(model.features(views(xb, gen)))
            loss = nt_xent(z1.float(), z2.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # fp16 halves the shipped file (~22 MB); load_state_dict casts back to the reward's fp32
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in model.net.state_dict().items() if not k.startswith("fc.")}
    save_file(state, str(out / "backbone.safetensors"))
    record = dict(method="SimCLR (NT-Xent, temperature 0.2), no labels", epochs=epochs, batch=batch,
                  images=len(x), steps=steps, final_loss=float(sum(losses[-20:]) / max(1, len(losses[-20:]))),
                  train_seconds=round(time.time() - t0, 1))
    (out / "backbone.json").write_text(json.dumps(record, indent=1))
    return record
