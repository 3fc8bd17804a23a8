"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(proc, text):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert any(text in l for l in lines), proc.stderr
    assert lines[-1].startswith("error:") or "error:" in lines[-1]


def test_sample_writes_a_grid(tmp_path, tiny_model_dir):
    out = tmp_path / "grid.png"
    proc = run("censor", "sample", "--n", "6", "--steps", "2", "--seed", "0", "--out", str(out),
               "--model", str(tiny_model_dir), "--nrow", "3")
    assert proc.returncode == 0, proc.stderr
    img = Image.open(out)
    assert img.size == ((3 * 30 + 2) * 2, (2 * 30 + 2) * 2)
    # same seed, same grid
    out2 = tmp_path / "grid2.png"
    run("censor", "sample", "--n", "6", "--steps", "2", "--seed", "0", "--out", str(out2),
        "--model", str(tiny_model_dir), "--nrow", "3")
    np.testing.assert_array_equal(np.asarray(img), np.asarray(Image.open(out2)))


@pytest.mark.parametrize("n", ["0", "-3", "many"])
def test_non_positive_n(tmp_path, n):
    assert_one_line_error(run("censor", "sample", "--n", n, "--out", str(tmp_path / "g.png")), "--n")


def test_bench_timing_refuses_zero_reps():
    assert_one_line_error(run("censor", "bench-timing", "--reps", "0"), "--reps")


def test_missing_and_corrupt_weights(tmp_path):
    assert_one_line_error(run("censor", "sample", "--model", str(tmp_path / "absent"),
                              "--out", str(tmp_path / "g.png")), "does not exist")
    (tmp_path / "m" / "unet").mkdir(parents=True)
    (tmp_path / "m" / "scheduler").mkdir()
    (tmp_path / "m" / "unet" / "config.json").write_text("{not json")
    (tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (tmp_path / "m" / "scheduler" / "scheduler_config.json").write_text("{}")
    assert_one_line_error(run("censor", "sample", "--model", str(tmp_path / "m"),
                              "--out", str(tmp_path / "g.png")), "corrupt")


def test_wrong_data_path(tmp_path):
    assert_one_line_error(run("censor", "train-diffusion", "--data", str(tmp_path / "nodata"),
                              "--run", str(tmp_path / "run")), "does not exist")
    assert_one_line_error(run("censor", "train-oracle", "--data", str(tmp_path), "--out", str(tmp_path / "o")),
                          "dataset-fashion-mnist")


def test_training_runs_and_resumes(tmp_path, idx_dir):
    """Two steps, then two more from the checkpoint: the step count and the loss log continue."""
    import json

    common = ["censor", "train-diffusion", "--data", str(idx_dir), "--run", str(tmp_path / "run"),
              "--batch", "8", "--save-every", "2", "--warmup", "1", "--width", "32", "32", "32"]
    first = run(*common, "--steps", "2")
    assert first.returncode == 0, first.stderr
    second = run(*common, "--steps", "4")
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stdout + second.stderr
    meta = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert meta["step"] == 4 and [r["step"] for r in meta["log"]] == [2, 4]
    from censor.diffusion.models import load_diffusion

    assert load_diffusion(tmp_path / "run" / "export").unet.config.block_out_channels == [32, 32, 32]


def test_training_can_start_from_shipped_weights(tmp_path, idx_dir, tiny_model_dir):
    """A fresh machine has no checkpoint: --init-from continues from a model folder's weights."""
    import json

    (tiny_model_dir / "training.json").write_text(json.dumps({"step": 100, "elapsed_s": 12.0}))
    proc = run("censor", "train-diffusion", "--data", str(idx_dir), "--run", str(tmp_path / "run"), "--batch", "4",
               "--save-every", "1", "--warmup", "1", "--steps", "101", "--init-from", str(tiny_model_dir))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert meta["step"] == 101 and meta["log"][-1]["elapsed_s"] >= 12.0


def _subparsers(parser):
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.values()


def test_every_command_prints_its_help():
    # a bare "%" in a help string makes argparse print its own internals instead of the help
    from censor.cli.main import build_parser as censor_parser
    from rlhf.__main__ import build_parser as rlhf_parser

    for top in (censor_parser(), rlhf_parser()):
        text = top.format_help()
        assert "option_strings" not in text
        subs = list(_subparsers(top))
        assert subs
        for sub in subs:
            help_ = sub.format_help()
            assert "option_strings" not in help_ and "usage:" in help_
