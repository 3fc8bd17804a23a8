"""Shared fixtures: real Fashion-MNIST images from tests/fixtures and tiny diffusers models."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("OMP_NUM_THREADS", "2")
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fixture_images():
    """500 real test-split images: clean, watermarked, labels, flags (see fixtures/make_fixture.py)."""
    t = load_file(str(FIXTURES / "fashion_mnist_500.safetensors"))
    return {k: v.numpy() for k, v in t.items()}


@pytest.fixture(scope="session")
def idx_dir():
    return FIXTURES / "idx"


def _tiny_model():
    from censor.models import DiffusionModel, build_scheduler, build_unet

    torch.manual_seed(0)
    unet = build_unet(block_out_channels=(32, 32, 32), attention_head_dim=8)
    return DiffusionModel(unet.eval().requires_grad_(False), build_scheduler())


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised UNet2DModel of the embedded architecture's shape (fast, meaningless)."""
    return _tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save(folder)
    return folder
