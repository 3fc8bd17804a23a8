"""Models beyond the embedded one: tiny random pipelines of each kind, saved with save_pretrained,
loaded through ``censor.sources.load_model`` and sampled with every guidance kind on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tiny_pipelines as tp
from censor.core.errors import CensorError
from censor.diffusion.runtime import RuntimeOptions
from censor.diffusion.sources import load_model
from censor.sampling.guidance import Guidance, build_guidance
from censor.sampling.loop import sample
from censor.sampling.pieces import BackwardGuidance, UniversalGuidance

KINDS = {
    "pixel-rgb64": (tp.pixel_rgb64, {}),
    "latent-vq": (tp.latent_vq, {}),
    "dit": (tp.dit, {"class_label": 0}),
    "text-to-image": (tp.text_to_image, {"prompt": "a church without a watermark"}),
}
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {name: build(root / name) for name, (build, _) in KINDS.items()}


def load(folders, name, **kw):
    return load_model(folders[name], **{**KINDS[name][1], **kw})


class Brightness:
    """A clean-image reward that prefers bright pictures: log r(x) = log σ(k · mean(x))."""

    kind, time_dependent, reads_unet = "brightness", False, None

    def __init__(self, k: float = 4.0):
        self.k = k

    def log_prob(self, x, t=None):
        return F.logsigmoid(self.k * x.mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kind_loads_with_its_shapes_and_samples_deterministically(folders, name):
    model = load(folders, name)
    images = sample(model, SEEDS, steps=3)
    assert images.shape == (3, *model.image_shape)
    assert torch.isfinite(images).all() and images.abs().max() <= 1
    assert model.is_latent == (name != "pixel-rgb64")
    if model.is_latent:
        assert model.image_shape[1] == 2 * model.sample_shape[1]  # two-level tiny decoders: factor 2
    # per-image seeds: the same image in any batch (up to float noise, which a VQ codebook can amplify)
    assert (images[1:2] - sample(model, SEEDS[1:2], steps=3)).abs().mean() < 2e-3


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("piece", ["universal", "backward"])
def test_clean_image_guidance_through_the_decoder_moves_images_toward_the_reward(folders, name, piece):
    model = load(folders, name)
    reward = Brightness()
    first = UniversalGuidance(reward, weight=1000.0) if piece == "universal" else BackwardGuidance(reward, 5, 1.0)
    plain = sample(model, SEEDS, steps=3)
    guided = sample(model, SEEDS, steps=3, guidance=Guidance([first]))
    assert torch.isfinite(guided).all()
    # random tiny decoders barely move their mean brightness, but every image must move the right way
    # (a wrong sign anywhere along reward -> decoder -> x̂0 -> ε makes them darker)
    assert (guided.mean(dim=(1, 2, 3)) > plain.mean(dim=(1, 2, 3)) + 2e-4).all()


@pytest.mark.parametrize("name", list(KINDS))
def test_time_dependent_reward_trains_in_the_sampling_space_and_guides_with_recurrence(folders, name, tmp_path):
    import numpy as np

    from censor.rewards.ensemble import load_reward
    from censor.rewards.training import train_reward

    model = load(folders, name)
    rng = np.random.default_rng(0)
    h = model.image_shape[1]
    dark = rng.integers(0, 60, (6, h, h, 3), dtype=np.uint8)
    bright = rng.integers(190, 255, (6, h, h, 3), dtype=np.uint8)
    reward = train_reward(np.concatenate([dark, bright]), np.array([0] * 6 + [1] * 6), kind="half-unet",
                          diffusion=model, members=2, iterations=5, batch_size=8)
    assert reward.image_shape == model.sample_shape  # latent models: it judges noised latents, not pixels
    reward.save(tmp_path / "r")
    assert load_reward(tmp_path / "r", model).image_shape == model.sample_shape
    plain = sample(model, SEEDS, steps=3)
    guidance = build_guidance(reward, "time", weight=5.0, recurrence=1)
    guided = sample(model, SEEDS, steps=3, guidance=guidance)
    assert torch.isfinite(guided).all() and not torch.allclose(guided, plain)
    assert guidance.stats["guided_steps"] == 3 * 2  # each step done twice (recurrence 1)


def test_text_model_needs_a_prompt_and_cfg_changes_the_output(folders):
    with pytest.raises(CensorError, match="give a prompt"):
        load_model(folders["text-to-image"])
    a = sample(load(folders, "text-to-image", guidance_scale=1.0), SEEDS[:1], steps=2)
    b = sample(load(folders, "text-to-image", guidance_scale=7.5), SEEDS[:1], steps=2)
    c = sample(load(folders, "text-to-image", prompt="a bedroom", guidance_scale=1.0), SEEDS[:1], steps=2)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_class_conditional_model_takes_a_class_by_id_or_name(folders):
    by_name = sample(load(folders, "dit", class_label="tench"), SEEDS[:1], steps=2)
    assert torch.equal(by_name, sample(load(folders, "dit", class_label=0), SEEDS[:1], steps=2))
    assert not torch.equal(by_name, sample(load(folders, "dit", class_label=3), SEEDS[:1], steps=2))
    with pytest.raises(CensorError, match="give a class"):
        load_model(folders["dit"])
    with pytest.raises(CensorError, match="out of range"):
        load(folders, "dit", class_label=10)
    with pytest.raises(CensorError, match="unconditional"):
        load(folders, "pixel-rgb64", class_label=1)


def test_offline_hub_id_gives_one_message_naming_model_and_offline_state(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CensorError) as e:
        load_model("google/ddpm-church-256")
    assert "google/ddpm-church-256" in str(e.value) and "HF_HUB_OFFLINE=1" in str(e.value)
    with pytest.raises(CensorError, match="does not exist"):
        load_model(str(tmp_path / "no" / "such" / "folder"))


def test_pickled_weights_are_refused(tmp_path):
    from diffusers import DDPMPipeline

    folder = tp.pixel_rgb64(tmp_path / "safe")
    DDPMPipeline.from_pretrained(folder).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert list((tmp_path / "pickled" / "unet").glob("*.bin"))
    with pytest.raises(CensorError, match="could not be loaded"):
        load_model(tmp_path / "pickled")


def test_bf16_autocast_stays_close_to_fp32(folders):
    fp32 = sample(load(folders, "text-to-image"), SEEDS[:2], steps=2)
    bf16 = sample(load(folders, "text-to-image", runtime=RuntimeOptions(dtype="bf16")), SEEDS[:2], steps=2)
    assert not torch.equal(fp32, bf16) and (fp32 - bf16).abs().mean() < 0.05
    with pytest.raises(CensorError, match="needs a GPU"):
        RuntimeOptions(dtype="fp16")


def test_gradient_checkpointing_and_attention_slicing_keep_universal_guidance_exact(folders):
    reward = Brightness()
    ref = sample(load(folders, "text-to-image"), SEEDS[:2], steps=2, guidance=Guidance([UniversalGuidance(reward, 50.0)]))
    model = load(folders, "text-to-image", runtime=RuntimeOptions(gradient_checkpointing=True, attention_slicing=True))
    assert model.unet.is_gradient_checkpointing
    out = sample(model, SEEDS[:2], steps=2, guidance=Guidance([UniversalGuidance(reward, 50.0)]), batch_size=1)
    assert torch.allclose(ref, out, atol=1e-4)


def test_resnet18_reward_at_the_models_resolution():
    from censor.rewards.architectures import RESNET_MAX_SIZE, ResNet18Reward

    small, big = ResNet18Reward(size=28), ResNet18Reward(size=256)
    assert small.net.conv1.stride == (1, 1) and big.net.conv1.stride == (2, 2)
    seen = []
    big.net.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    x = torch.rand(2, 3, 256, 256, requires_grad=True)
    big.eval()(x).sum().backward()
    assert seen == [RESNET_MAX_SIZE] and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name,method", [("text-to-image", "d3po"), ("dit", "ddpo")])
def test_fine_tuning_runs_on_pipelines_with_their_conditioning(folders, name, method):
    from rlhf.adapters import has_lora
    from rlhf.train import D3POConfig, DDPOConfig, train_d3po, train_ddpo

    model = load(folders, name)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    if method == "d3po":
        # the prompt-conditioned policy; the first image of each group of two is the preferred one
        label = lambda imgs: (torch.arange(len(imgs)) % 2 == 0).int().numpy()
        info = train_d3po(model, label, D3POConfig(epochs=1, groups=2, group_size=2, batch_groups=2, steps=2, lr=1e-2))
        assert info["pairs"] == [2]
    else:
        info = train_ddpo(model, lambda imgs: imgs.mean(dim=(1, 2, 3)),
                          DDPOConfig(epochs=1, images=4, batch_size=4, steps=2, lr=1e-2))
    assert has_lora(model.unet) and all(torch.isfinite(torch.tensor(l)) for l in info["losses"])
    lora = {k: v for k, v in model.unet.state_dict().items() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values())  # B starts at zero: it was trained
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items() if k in before)
    assert sample(model, SEEDS[:1], steps=2).shape == (1, *model.image_shape)


def test_cli_samples_a_text_to_image_folder_and_guides_with_a_saved_reward(folders, tmp_path):
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from censor.rewards.training import train_reward

    model = load(folders, "text-to-image")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    train_reward(imgs, np.array([0, 1] * 3), kind="resnet18", diffusion=model, members=1, iterations=2,
                 batch_size=4).save(tmp_path / "reward")
    out = tmp_path / "g.png"
    base = [sys.executable, "-m", "censor", "sample", "--model", str(folders["text-to-image"]), "--n", "2",
            "--steps", "2", "--prompt", "a church", "--out", str(out)]
    proc = subprocess.run(base + ["--reward", str(tmp_path / "reward"), "--weight", "2"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "censored with" in proc.stdout and Image.open(out).mode == "RGB"
    proc = subprocess.run(base[:-4] + ["--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == ["error: this is a text-to-image model: give a prompt"]


def test_studio_runs_on_a_pipeline_folder_with_its_own_pool(folders, tmp_path):
    from censor.labels.pool import load_pool, make_pool, save_pool
    from censor.studio.core import Studio

    model = load(folders, "dit")
    save_pool(make_pool(model, None, n=4, steps=2, show_bar=False), tmp_path / "pool")
    with pytest.raises(CensorError, match="other weights"):
        load_pool(tmp_path / "pool", model_dir=folders["dit"], model=load(folders, "dit", class_label=3))
    studio = Studio(folders["dit"], model_options=dict(class_label=0), data_dir=tmp_path / "data",
                    pool_dir=tmp_path / "pool")
    sid = studio.open_session(None)
    items = studio.page(sid, 0)
    assert len(items) == 4
    gallery = studio.fresh_gallery(2, 2, 0)
    assert gallery[0].mode == "RGB"
    with pytest.raises(CensorError, match="make-pool"):
        Studio(folders["dit"], model_options=dict(class_label=0), data_dir=tmp_path / "d2").pool
    # a shared gallery records its class: another class's studio refuses to "reproduce" it
    from censor.rewards.ensemble import model_fingerprint
    from censor.studio.core import conditioning_info

    other = Studio(folders["dit"], model_options=dict(class_label=3), data_dir=tmp_path / "d3")
    manifest = dict(model_fingerprint=model_fingerprint(other.model.unet), conditioning=conditioning_info(studio.model))
    assert manifest["conditioning"] == dict(kind="class", label="0", scale=4.0)
    with pytest.raises(CensorError, match="sampled with"):
        other.reproduce(dict(manifest=manifest))


def test_throughput_rows_for_every_guidance_kind(folders):
    from censor.bench.throughput import MODES, markdown, measure_throughput, random_arch

    result = measure_throughput(load(folders, "latent-vq"), n=2, steps=2, reps=1, log=lambda *_: None)
    rows = {r["mode"]: r for r in result["rows"]}
    assert list(rows) == list(MODES) and rows["unguided"]["ratio_to_unguided"] == 1.0
    assert all(r["images_per_second"] > 0 and r["peak_gpu_memory_gib"] is None for r in rows.values())  # CPU: no GPU row
    assert "| universal+backward |" in markdown(result)
    with pytest.raises(CensorError, match="unknown architecture"):
        random_arch("sdxl")
    with pytest.raises(CensorError, match="unknown modes"):
        measure_throughput(load(folders, "latent-vq"), modes=["fast"])


def test_random_architectures_match_the_published_sizes():
    from censor.bench.throughput import random_arch

    ddpm = random_arch("ddpm-256")  # google/ddpm-church-256: 113.7M parameters
    assert ddpm.image_shape == (3, 256, 256)
    assert abs(sum(p.numel() for p in ddpm.unet.parameters()) / 1e6 - 113.67) < 0.1


def test_cli_bench_throughput_writes_json_and_markdown(folders, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "tp.json"
    proc = subprocess.run([sys.executable, "-m", "censor", "bench-throughput", "--model", str(folders["pixel-rgb64"]),
                           "--n", "1", "--steps", "1", "--reps", "1", "--modes", "unguided,time", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert [r["mode"] for r in result["rows"]] == ["unguided", "time"] and result["device"] == "cpu"
    assert "| time |" in out.with_suffix(".md").read_text()


def test_rejection_scores_a_latent_models_time_dependent_reward_on_latents(folders):
    import numpy as np

    from censor.rewards.training import train_reward
    from censor.sampling.rejection import reject_sample

    model = load(folders, "latent-vq")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (8, *model.image_shape[1:], 3), dtype=np.uint8)
    reward = train_reward(images, np.array([0, 1] * 4), kind="half-unet", diffusion=model, members=1, iterations=2,
                          batch_size=4)
    result = reject_sample(model, reward, 2, 0, 0.0, steps=2)  # every image passes p > 0: no shape error on the way
    assert result.kept == 2 and result.images.shape == (2, *model.image_shape[1:], 3)


def test_repaint_on_a_latent_model_keeps_the_latents_outside_and_returns_images(folders):
    """Repaint's latent path: the mask read off the decoded image lands on the latent grid, the latents outside
    it come back exactly, and a doubted image returns as an image of the model's shape (its outside is then the
    VAE round trip, as repaint's docstring says)."""
    import numpy as np

    from censor.core.data import to_model_range
    from censor.rewards.training import train_reward
    from censor.sampling.repaint import _masks, repaint, repaint_flagged

    model = load(folders, "latent-vq")
    rng = np.random.default_rng(2)
    images = rng.integers(0, 255, (4, *model.image_shape[1:], 3), dtype=np.uint8)
    reward = train_reward(images, np.array([0, 1] * 2), kind="half-unet", diffusion=model, members=1, iterations=2,
                          batch_size=4)
    x0 = model.encode(to_model_range(images))
    mask = _masks(model, reward, images, x0.shape[-2:], grow_px=0)
    assert mask.shape == (4, 1, *x0.shape[-2:]) and 0 < float(mask.mean()) < 1  # saliency, max-pooled onto latents
    new = repaint(model, x0, mask, [1, 2, 3, 4], steps=4, start=0.75)
    outside = (mask == 0).expand_as(x0)
    torch.testing.assert_close(new[outside], x0[outside], rtol=0, atol=1e-5)
    assert not torch.allclose(new[~outside], x0[~outside])
    result = repaint_flagged(model, reward, images, [1, 2, 3, 4], threshold=1.0, steps=4, start=0.75, attempts=1)
    assert result.doubted == 4 and result.images.shape == images.shape and result.images.dtype == np.uint8
