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


def test_sample_strict_repaints_or_rejects_what_the_reward_doubts(tmp_path, tiny_model, tiny_model_dir, fixture_images,
                                                                  capsys):
    """``censor sample --reward R --strict``: the studio's strict gallery from the command line, with a given
    threshold or the one the studio cached beside the reward; refused without a threshold, reward or DDIM."""
    from censor.cli.main import main
    from censor.rewards.ensemble import load_reward
    from censor.rewards.training import train_reward
    from censor.sampling.thresholds import benign_scores

    images, labels = fixture_images["images"][:24], np.array([0, 1] * 12)
    train_reward(images, labels, kind="local-patch", diffusion=tiny_model, members=1, iterations=3,
                 score_table=False).save(tmp_path / "r")
    reward = load_reward(tmp_path / "r", tiny_model)
    base = ["sample", "--n", "4", "--steps", "2", "--model", str(tiny_model_dir), "--reward", str(tmp_path / "r"),
            "--weight", "0"]
    assert main(base + ["--out", str(tmp_path / "plain.png")]) == 0
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "none.png"), "--strict", "--strict-p", "0.0"]) == 0
    assert "strict (repaint, p=0)" in capsys.readouterr().err  # a local reward repaints; p 0 doubts nothing
    assert np.array_equal(np.asarray(Image.open(tmp_path / "none.png")), plain)
    from censor.core.data import to_uint8
    from censor.sampling.loop import sample, seeds_for

    drawn = benign_scores(reward, to_uint8(sample(tiny_model, seeds_for(4, 0), steps=2)))
    p = float(np.median(drawn))  # about half of the first draws fail: rejection draws on from the next seeds
    assert main(base + ["--out", str(tmp_path / "rej.png"), "--strict", "--strict-p", str(p), "--strict-mode", "reject"]) == 0
    out = capsys.readouterr()
    import re

    dropped = int(re.search(r"dropped (\d+)", out.err).group(1))
    assert "strict (reject" in out.err and dropped >= int((drawn <= p).sum()) >= 2  # the failing gallery seeds at least
    assert "wrote 4 censored" in out.out
    # the threshold the studio cross-fitted and cached beside this reward file is used when no -p is given
    import json

    from censor.gallery.bundles import sha256
    from censor.sampling.thresholds import STRICT_FILE

    cache = dict(reward_sha256=sha256(tmp_path / "r" / "reward.safetensors"), threshold=0.0, scale="reference")
    (tmp_path / "r" / STRICT_FILE).write_text(json.dumps(cache))
    assert main(base + ["--out", str(tmp_path / "cached.png"), "--strict"]) == 0
    assert "strict (repaint, p=0)" in capsys.readouterr().err
    (tmp_path / "r" / STRICT_FILE).unlink()
    for extra, message in ((["--strict"], "no threshold for --strict"),
                           (["--strict", "--strict-p", "0.5", "--scheduler", "ddpm"], "DDIM at eta 0"),
                           (["--strict", "--strict-p", "1.5"], "probability")):
        assert main(base + ["--out", str(tmp_path / "x.png")] + extra) == 2
        assert message in capsys.readouterr().err
    assert main(["sample", "--n", "2", "--steps", "2", "--model", str(tiny_model_dir), "--strict", "--strict-p", "0.5",
                 "--out", str(tmp_path / "y.png")]) == 2
    assert "give --reward too" in capsys.readouterr().err
