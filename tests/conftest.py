"""Shared fixtures: real Fashion-MNIST images from tests/fixtures and tiny diffusers models."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# One torch thread per process: on 2 cores shared with anything else (a browser test's server, a CI
# neighbour), two threads per process oversubscribe and every op waits at a barrier for a descheduled
# thread; measured here: 15 reward iterations 3 s with one thread, 34 s with two beside a 2-thread job.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
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
    from censor.diffusion.models import DiffusionModel, build_scheduler, build_unet

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


class GaussianEps(torch.nn.Module):
    """The exact noise predictor for data x0 ~ N(0, s^2 I): eps(x_t) = sqrt(1-ab) x_t / (ab s^2 + 1 - ab).

    A denoiser whose right answer is known, so guidance directions can be tested exactly.
    """

    def __init__(self, alphas_cumprod, s=0.3, size=8):
        super().__init__()
        from types import SimpleNamespace

        self.register_buffer("ab", alphas_cumprod.clone())
        self.dummy = torch.nn.Parameter(torch.zeros(()), requires_grad=False)
        self.s2 = s * s
        self.config = SimpleNamespace(sample_size=size, in_channels=1)

    def forward(self, x, t):
        from types import SimpleNamespace

        ab = self.ab[int(t)]
        return SimpleNamespace(sample=(1 - ab).sqrt() * x / (ab * self.s2 + 1 - ab))


@pytest.fixture(scope="session")
def gaussian_model():
    from censor.diffusion.models import DiffusionModel, build_scheduler

    sched = build_scheduler()
    return DiffusionModel(GaussianEps(sched.alphas_cumprod), sched)
