"""Resumable training checkpoints as safetensors + JSON (no pickle anywhere, optimizer state included).

``torch.save`` / accelerate's ``save_state`` pickle the optimizer; the project rule is safetensors +
JSON for every artefact, so tensors go to ``state.safetensors`` under flat names and the rest
(step counters, hyper-parameters, RNG seeds) to ``state.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith("optim."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write atomically (tmp then rename) so a kill mid-save never leaves a half checkpoint."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_t, tmp_j = folder / "state.safetensors.tmp", folder / "state.json.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp_t))
    tmp_j.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_t, folder / "state.safetensors")
    os.replace(tmp_j, folder / "state.json")


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    folder = Path(folder)
    if not (folder / "state.safetensors").is_file() or not (folder / "state.json").is_file():
        return None
    return load_file(str(folder / "state.safetensors")), json.loads((folder / "state.json").read_text())
