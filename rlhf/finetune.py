"""``python -m rlhf finetune``: RLHF (DDPO) of any model against a saved reward, saved as an adapter.

Why a command of its own: ``rlhf compare`` judges with the oracle of the embedded model; a hub model has
no oracle, only the reward a person trained on its images (a studio session's reward folder). Under
``accelerate launch --num_processes K`` every process rolls out its slice of each epoch's images and DDP
averages the gradients (``rlhf.run``), so K GPUs train what one would on K times the rollouts; a plain
call runs one process on ``--device``. The result is ``adapter.safetensors`` + ``adapter.json`` (LoRA by
default, the whole UNet with ``--full``), which ``python -m censor sample --adapter`` samples from.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from accelerate import Accelerator

from censor.core.errors import CensorError
from censor.rewards.ensemble import load_reward
from rlhf.adapters import save_adapter
from rlhf.configs import DDPOConfig
from rlhf.train import reward_from, train_ddpo, value_for

MIXED_PRECISION = ("no", "bf16", "fp16")


def run_finetune(load_model, reward_dir: str | Path, cfg: DDPOConfig, out: str | Path, *, device: str = "cpu",
                 mixed_precision: str = "no", log=print) -> dict:
    """Fine-tune ``load_model(device)``'s UNet with DDPO on the reward in ``reward_dir``; the main process
    writes the adapter to ``out`` with the settings, the processes and the seconds it took."""
    if mixed_precision not in MIXED_PRECISION:
        raise CensorError(f"mixed precision is one of {', '.join(MIXED_PRECISION)}")
    out = Path(out)
    if not out.parent.exists():
        raise CensorError(f"output folder {out.parent} does not exist")
    acc = Accelerator(mixed_precision=mixed_precision, cpu=device == "cpu")
    model = load_model(str(acc.device))
    reward = load_reward(reward_dir, model)  # refuses a reward made for another model or image size
    t0 = time.perf_counter()
    info = train_ddpo(model, reward_from(reward), cfg, show_bar=True, accelerator=acc, value_fn=value_for(reward, cfg))
    seconds = time.perf_counter() - t0
    meta = dict(method="rlhf", reward=Path(reward_dir).name, processes=acc.num_processes, seconds=round(seconds, 1),
                mixed_precision=mixed_precision, ddpo=asdict(cfg), reward_mean=info.get("reward_mean"))
    if acc.is_main_process:
        save_adapter(model.unet, out, meta)
        log(f"{cfg.epochs} epochs x {cfg.images * acc.num_processes} rollouts on {acc.num_processes} process(es) "
            f"in {seconds:.0f}s; adapter written to {out}")
    acc.wait_for_everyone()
    return meta
