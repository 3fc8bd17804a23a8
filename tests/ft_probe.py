"""Does fine-tuning move the embedded model? (issue 22) A cheap probe, not a test.

``OMP_NUM_THREADS=1 nice python tests/ft_probe.py --feature bags``

DDPO with the oracle's P(benign) as the reward (an ideal reward model, so the reward ensemble is no
confound), for LoRA rank 4 on attention, on attention+convs, and full fine-tuning, at a few learning
rates. Reports per setting: mean |Δw| of the trained weights, mean |Δ pixel| of 64 fixed rollouts
(same x_T and step noise before and after), their mean oracle P(malign) and malign count, and the
tv between their oracle class histograms before and after (a fidelity hint on 64 images).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from censor.diffusion.models import EMBEDDED_MODEL_DIR, load_diffusion
from censor.eval.features import feature_spec
from censor.eval.oracle import load_oracle
from rlhf.configs import DDPOConfig
from rlhf.rollout import rollout
from rlhf.train import train_ddpo

SETTINGS = [dict(lora_target="attention", lr=3e-4), dict(lora_target="attention", lr=3e-3),
            dict(lora_target="attention+convs", lr=3e-4), dict(lora_target="attention+convs", lr=3e-3),
            dict(full=True, lr=1e-4), dict(full=True, lr=3e-4)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--feature", default="bags")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--only", type=int, nargs="*", help="indices into SETTINGS")
    p.add_argument("--min-sigma", type=float, default=None)
    a = p.parse_args()
    torch.manual_seed(0)
    model, oracle = load_diffusion(str(EMBEDDED_MODEL_DIR)), load_oracle()
    malign = np.asarray(feature_spec(a.feature)["malign_classes"])

    def p_malign(images):
        return oracle.judge(images).class_probs[:, malign].sum(1)

    def reward(images):
        return torch.as_tensor(1 - p_malign(images))

    def fixed(m):
        return rollout(m.denoiser_for(m.unet), m.scheduler.config, seeds=list(range(5000, 5064)), steps=a.steps,
                       eta=1.0, generator=torch.Generator().manual_seed(7)).images

    def classes(images):
        j = oracle.judge(images)
        return np.bincount(j.classes, minlength=10) / len(images), j.confident.mean()

    before = fixed(model)
    pm0 = p_malign(before)
    hist0, _ = classes(before)
    print(f"before: mean P(malign) {pm0.mean():.4f}, malign {int((pm0 >= 0.5).sum())}/64")
    for i, s in enumerate(SETTINGS):
        if a.only and i not in a.only:
            continue
        m = copy.deepcopy(model)
        w0 = {k: v.detach().clone() for k, v in m.unet.state_dict().items()}
        kw = dict(s, **({} if a.min_sigma is None else {"min_sigma": a.min_sigma}))
        t = time.time()
        info = train_ddpo(m, reward, DDPOConfig(steps=a.steps, epochs=a.epochs, images=a.images,
                                                batch_size=a.images, **kw))
        secs = time.time() - t
        sd = m.unet.state_dict()
        deltas = [(sd[k] - w0[k]).abs().mean().item() for k in sd if k in w0 and "lora_" not in k]
        lora = [v.abs().mean().item() for k, v in sd.items() if "lora_B" in k]
        dw = np.mean(lora) if lora else np.mean([d for d in deltas if d > 0] or [0.0])
        after = fixed(m)
        pm = p_malign(after)
        hist, confident = classes(after)
        print(f"{kw}: |Δw| {dw:.2e}  |Δpixel| {(after - before).abs().mean():.4f}  mean P(malign) {pm.mean():.4f} "
              f"(Δ {pm.mean() - pm0.mean():+.4f})  malign {int((pm >= 0.5).sum())}/64  tv(classes) "
              f"{0.5 * np.abs(hist - hist0).sum():.2f}  confident {confident:.2f}  reward/epoch "
              f"{np.round(info['reward_mean'], 3).tolist()}  {secs:.0f}s", flush=True)


if __name__ == "__main__":
    main()
