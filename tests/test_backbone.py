"""The self-supervised ResNet18 backbone: NT-Xent, a tiny pretraining run on real images, the round trip."""

import json

import pytest
import torch

from censor.core.errors import CensorError
from censor.rewards.architectures import ResNet18Reward
from censor.rewards.backbone import load_backbone_into
from censor.rewards.pretrain import nt_xent, train


def test_nt_xent_prefers_matching_views():
    z = torch.randn(8, 16)
    matched = nt_xent(z, z + 0.01 * torch.randn(8, 16))
    shuffled = nt_xent(z, z[torch.randperm(8)] + 0.01 * torch.randn(8, 16))
    assert matched < shuffled
    # 2n-1 candidates per row: a loss near log(2n-1) means chance
    assert nt_xent(torch.zeros(4, 3) + 1, torch.zeros(4, 3) + 1).item() == pytest.approx(torch.log(torch.tensor(7.0)).item(), rel=1e-4)


def test_pretrain_saves_fp16_and_loads_into_a_reward(idx_dir, tmp_path):
    record = train(idx_dir, epochs=1, batch=16, subset=32, out=tmp_path)
    assert record["steps"] == 2 and record["images"] == 32
    assert json.loads((tmp_path / "backbone.json").read_text())["method"].startswith("SimCLR")
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "backbone.safetensors"))
    assert not any(k.startswith("fc.") for k in state)
    assert state["conv1.weight"].dtype == torch.float16
    reward = load_backbone_into(ResNet18Reward(), tmp_path)
    assert reward.net.conv1.weight.dtype == torch.float32
    assert torch.allclose(reward.net.conv1.weight, state["conv1.weight"].float())
    with pytest.raises(CensorError, match="no embedded backbone"):
        load_backbone_into(ResNet18Reward(), tmp_path / "missing")
