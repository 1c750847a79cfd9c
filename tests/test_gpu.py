"""CUDA checks (``pytest -m gpu``, run by ``scripts/gpu_check.sh``): skipped without a GPU.

``VIDTOK_GPU_TESTS_DEVICE=cpu`` runs them on the CPU instead (a dry run of the test code itself, the flash-kernel
test excepted): ``VIDTOK_GPU_TESTS_DEVICE=cpu python -m pytest tests/test_gpu.py -m gpu``.

bf16 autocast Latte training step finite and close to fp32; the SDPA flash kernel against the explicit softmax
attention; torch.compile of a Latte block against eager; the video VAEs on CUDA against CPU; a 20-step
``train_latte.py`` run and a 4-video ``sample.py`` run on CUDA.
"""
from __future__ import annotations

import os

import pytest
import torch

DEVICE = os.environ.get("VIDTOK_GPU_TESTS_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU (scripts/gpu_check.sh)")]

SHAPE = dict(in_channels=4, num_frames=4, input_size=16)  # 4 latent frames of 8x8 tokens


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 references in full fp32 (no TF32 matmuls / convs), restored afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _latte(name="Latte-S/2", **kw):
    from diffusion import build_latte

    torch.manual_seed(0)
    model = build_latte(name, num_classes=3, **SHAPE, **kw).to(DEVICE)
    with torch.no_grad():  # every path active (adaLN-Zero and the final layer start at zero)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def test_bf16_autocast_training_step_is_finite_and_close_to_fp32():
    from diffusion.gaussian_diffusion import GaussianDiffusion

    model, diffusion = _latte(), GaussianDiffusion()
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x0 = torch.randn(2, 4, 4, 16, 16, device=DEVICE, generator=g)
    t, noise = torch.tensor([10, 700], device=DEVICE), torch.randn(x0.shape, device=DEVICE, generator=g)
    y = torch.tensor([0, 2], device=DEVICE)
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = diffusion.training_losses(model, x0, t, noise=noise, y=y)["loss"].mean()
        loss.backward()
        losses[precision] = loss.item()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert torch.isfinite(grads["bf16"]).all()
    assert abs(losses["bf16"] - losses["fp32"]) <= 0.02 * abs(losses["fp32"]), losses
    cos = torch.nn.functional.cosine_similarity(grads["bf16"], grads["fp32"], dim=0)
    assert cos > 0.98, cos.item()


@pytest.mark.skipif(DEVICE != "cuda", reason="the flash kernel is CUDA only")
def test_sdpa_flash_backend_equals_explicit_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from diffusion.latte import Attention

    torch.manual_seed(0)
    attn = Attention(384, 6, backend="sdpa").cuda().to(torch.bfloat16)
    math = Attention(384, 6, backend="math").cuda().to(torch.bfloat16)
    math.load_state_dict(attn.state_dict())
    x = torch.randn(8, 256, 384, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the flash kernel cannot run
        fast = attn(x)
    with torch.no_grad():
        ref = math(x.float().to(torch.bfloat16))
    torch.testing.assert_close(fast.float(), ref.float(), atol=3e-2, rtol=3e-2)


def test_compiled_latte_block_equals_eager():
    from diffusion.latte import LatteBlock

    torch.manual_seed(0)
    block = LatteBlock(384, 6).to(DEVICE)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x, c = torch.randn(2 * 4, 64, 384, device=DEVICE), torch.randn(2, 384, device=DEVICE)
    compiled = torch.compile(block)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, c), block(x, c), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("name", ["vcvae-tiny", "plain-tiny", "deco-tiny"])
def test_vae_encode_decode_on_cuda_equals_cpu(name, sample_video_paths):
    import decord

    from tokenizer import build_vae

    torch.manual_seed(0)
    vae = build_vae(name).eval()
    n = vae.num_frames(5)
    path = next(p for p in sample_video_paths if p.name == "bikes.mp4")
    frames = decord.VideoReader(str(path), width=64, height=64, num_threads=1).get_batch(list(range(n))).asnumpy()
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    with torch.no_grad():
        z_cpu = vae.encode(clip).mode()
        x_cpu = vae.decode(z_cpu)
        vae.to(DEVICE)
        z_gpu = vae.encode(clip.to(DEVICE)).mode()
        x_gpu = vae.decode(z_cpu.to(DEVICE))
    torch.testing.assert_close(z_gpu.cpu(), z_cpu, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(x_gpu.cpu(), x_cpu, atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory, ucf_tree, tiny_data_cfg):
    """A latent cache of the tiny UCF101 tree made on CUDA, then a 20-step bf16 Latte run on it."""
    from diffusion.train_latte import main as train_main
    from tokenizer import build_vae
    from tokenizer.cache import CacheConfig, run_cache

    root = tmp_path_factory.mktemp("gpu")
    torch.manual_seed(0)
    vae = build_vae("plain-tiny").eval()
    vae_dir = vae.save_pretrained(root / "vae")
    data_cfg = tiny_data_cfg("ucf101", ucf_tree, split="train", fold=1, num_frames=9)
    cfg = CacheConfig(dtype="fp32", clips_per_shard=4, batch_size=4, num_workers=0, device=DEVICE)
    run_cache(vae, data_cfg, cfg, root / "cache", vae_source=str(vae_dir), show_progress=False,
              log=lambda *a, **k: None)
    run = root / "run"
    rc = train_main(["--config", "configs/diffusion/latte_tiny.yaml", f"data.cache_dir={root / 'cache'}",
                     f"vae.ckpt={vae_dir}", f"train.run_dir={run}", "train.max_steps=20", "train.batch_size=2",
                     "train.checkpoint_every=20", "train.tracker=none", "train.progress_bar=false",
                     "train.mixed_precision=bf16", f"train.cpu={str(DEVICE == 'cpu').lower()}"])
    assert rc in (0, None)
    return run


def test_train_latte_20_steps_on_cuda(cuda_run):
    from diffusion.latte_run import load_latte_run

    for which in ("ema", "raw"):
        run = load_latte_run(cuda_run, which=which)
        assert run.step == 20
        assert all(torch.isfinite(p).all() for p in run.model.parameters())


def test_sample_4_videos_on_cuda(cuda_run, tmp_path):
    from pipelines.sample import main

    out = tmp_path / "samples"
    assert main(["--vae", "plain-tiny", "--ckpt", str(cuda_run), "--out", str(out), "--sampler", "ddim",
                 "--steps", "10", "--num-videos", "4", "--batch-size", "4", "--device", DEVICE]) == 0
    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == 4 and all(v.stat().st_size > 0 for v in videos)
