"""One rank of ``test_rlhf_ddp.py``: a DDPO and a D3PO run under torch.distributed (gloo on the CPU),
or, as a plain process with ``--scale 2``, the same runs on the doubled batch.

Writes ``rank<k>.json`` (the final LoRA weights' sums per tensor and what it trained on) and
``rank<k>.safetensors`` (the LoRA weights themselves).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import save_file

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from conftest import _tiny_model  # noqa: E402
from rlhf.train import D3POConfig, DDPOConfig, train_d3po, train_ddpo  # noqa: E402


def lora_sums(model) -> dict:
    return {k: float(v.double().sum()) for k, v in model.unet.state_dict().items() if "lora_B" in k}


def lora(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.unet.state_dict().items() if "lora_" in k}


def main(out: Path, scale: int) -> None:
    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)  # the same initial network and adapters in every run (DDP also broadcasts rank 0's)
    ddpo, d3po = _tiny_model(), _tiny_model()
    n, groups = 4 * scale, 2 * scale  # per process: one process with scale 2 = two processes' batches
    r = train_ddpo(ddpo, lambda x: x.mean(dim=(1, 2, 3)), DDPOConfig(steps=3, epochs=2, images=n, batch_size=n),
                   accelerator=acc)
    torch.manual_seed(1)  # D3PO's adapters start alike whatever DDPO drew from the global generator
    p = train_d3po(d3po, lambda x: np.array([1, 0] * (len(x) // 2)),
                   D3POConfig(steps=3, epochs=1, groups=groups, group_size=2, batch_groups=groups), accelerator=acc)
    k = acc.process_index
    save_file({**{f"ddpo.{a}": b for a, b in lora(ddpo).items()}, **{f"d3po.{a}": b for a, b in lora(d3po).items()}},
              str(out / f"rank{k}.safetensors"))
    (out / f"rank{k}.json").write_text(json.dumps(dict(
        world=acc.num_processes, ddpo=lora_sums(ddpo), d3po=lora_sums(d3po), reward_mean=r["reward_mean"],
        pairs=p["pairs"])))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1)
