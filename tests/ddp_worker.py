"""One rank of ``test_rlhf_ddp.py``: a DDPO and a D3PO run under torch.distributed (gloo on the CPU).

Writes ``rank<k>.json``: the rank's final LoRA weights' sums (per tensor) and what it trained on.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from conftest import _tiny_model  # noqa: E402
from rlhf.train import D3POConfig, DDPOConfig, train_d3po, train_ddpo  # noqa: E402


def lora_sums(model) -> dict:
    return {k: float(v.double().sum()) for k, v in model.unet.state_dict().items() if "lora_B" in k}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    ddpo, d3po = _tiny_model(), _tiny_model()
    r = train_ddpo(ddpo, lambda x: x.mean(dim=(1, 2, 3)), DDPOConfig(steps=3, epochs=2, images=4, batch_size=4),
                   accelerator=acc)
    p = train_d3po(d3po, lambda x: np.array([1, 0] * (len(x) // 2)),
                   D3POConfig(steps=3, epochs=1, groups=2, group_size=2, batch_groups=2), accelerator=acc)
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(dict(
        world=acc.num_processes, ddpo=lora_sums(ddpo), d3po=lora_sums(d3po), reward_mean=r["reward_mean"],
        pairs=p["pairs"])))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
