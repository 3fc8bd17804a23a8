"""rlhf/: the loops under data parallelism (issue 22): two processes, gloo on the CPU.

Each rank rolls out its own slice of the epoch's images, so its local gradients differ; the LoRA
weights can end equal on both ranks only if DDP averaged the gradients of every optimiser step, and
equal to one process's run on the doubled batch only if the average is the one-process mean (the
images, their step noise, the advantages' statistics and the pairs' loss all agree).
Before the policy called the DDP wrapper, ``make_denoiser`` failed on it (no ``.config``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def test_two_processes_train_one_synchronised_adapter(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # a free port
           str(WORKER), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    single = tmp_path / "single"
    single.mkdir()
    done = subprocess.run([sys.executable, str(WORKER), str(single), "2"], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for loop in ("ddpo", "d3po"):
        assert r0[loop] and any(abs(v) > 0 for v in r0[loop].values())  # the adapter trained
        for k, v in r0[loop].items():
            assert v == pytest.approx(r1[loop][k], rel=1e-6, abs=1e-9), (loop, k)
    assert r0["reward_mean"] == r1["reward_mean"]  # rewards gathered over both ranks' rollouts
    assert r0["pairs"] == r1["pairs"] == [2]
    one = json.loads((single / "rank0.json").read_text())
    assert one["world"] == 1 and one["pairs"] == [4]  # the pairs of both ranks' groups
    assert one["reward_mean"] == pytest.approx(r0["reward_mean"], rel=1e-5)  # the same images were drawn
    two, doubled = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(single / "rank0.safetensors"))
    assert two.keys() == doubled.keys()
    for k in two:
        if "lora_B" in k:  # A starts random and equal; B starts at zero, so B is what training moved
            assert two[k].abs().max() > 0, k
        torch.testing.assert_close(two[k], doubled[k], rtol=1e-4, atol=1e-6, msg=k)
