"""``python -m rlhf finetune`` and ``python -m censor sample --adapter`` (issue 22: the command a GPU host runs,
under ``accelerate launch`` there; one CPU process here, the multi-process loop is tests/test_rlhf_ddp.py)."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from censor.cli.main import main as censor_main
from censor.rewards.training import train_reward
from rlhf.__main__ import main as rlhf_main


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_model, fixture_images):
    folder = tmp_path_factory.mktemp("reward")
    images, labels = fixture_images["images"][:24], (fixture_images["labels"][:24] != 8).astype(int)
    labels[:3] = 0  # both classes whatever the fixture holds
    train_reward(images, labels, kind="ddpm-encoder", diffusion=tiny_model, members=2, iterations=5).save(folder)
    return folder


def test_finetune_writes_an_adapter_that_sample_reads(tmp_path, tiny_model_dir, reward_dir, capsys):
    out = tmp_path / "adapter"
    args = ["finetune", "--model", str(tiny_model_dir), "--reward", str(reward_dir), "--out", str(out),
            "--epochs", "2", "--images", "4", "--batch", "4", "--train-steps", "3", "--lr", "1e-2"]
    assert rlhf_main(args) == 0
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["kind"] == "lora" and meta["config"]["method"] == "rlhf" and meta["config"]["processes"] == 1
    assert meta["config"]["ddpo"]["epochs"] == 2 and len(meta["config"]["reward_mean"]) == 2
    weights = load_file(str(out / "adapter.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())  # B starts at 0: it trained
    plain, tuned = tmp_path / "plain.png", tmp_path / "tuned.png"
    for path, extra in ((plain, []), (tuned, ["--adapter", str(out)])):
        assert censor_main(["sample", "--model", str(tiny_model_dir), "--n", "4", "--steps", "3", "--out", str(path),
                            *extra]) == 0
    assert "from adapter" in capsys.readouterr().out
    with Image.open(plain) as a, Image.open(tuned) as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))  # the adapter changed what the model draws


def test_finetune_refuses_a_missing_reward_and_an_adapter_of_another_model(tmp_path, tiny_model_dir, capsys):
    assert rlhf_main(["finetune", "--model", str(tiny_model_dir), "--reward", str(tmp_path / "none"),
                      "--out", str(tmp_path / "a"), "--epochs", "1", "--images", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and not (tmp_path / "a").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter.json").write_text("{}")
    assert censor_main(["sample", "--model", str(tiny_model_dir), "--n", "2", "--steps", "2",
                        "--out", str(tmp_path / "x.png"), "--adapter", str(broken)]) == 2
    assert capsys.readouterr().err.startswith("error:")
