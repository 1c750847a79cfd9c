"""Every failure is one clear line, found before work starts (issue 16): broken inputs by kind, wrong weights files,
a full disk, NaN in a cache, two jobs in one run folder, stale temporary files of killed writers.

Each test feeds a real broken input (a text file, a TorchScript archive, a pickle that runs code, an mp4 whose
middle is zeroed, a truncated shard, a second process holding the folder) and checks the one line and the exit
status, and that nothing was written or lost. Every test here fails on the code before issue 16; besides, the FVD
replacement test fails when replacements are not drawn (4 of 5 clips) and the temp-file test when the name pattern is
loosened to any hidden ``*.tmp``.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import encode_video

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:LPIPS with a RANDOM", "ignore:FVD. skipping",
                                        "ignore:.*jit.*is deprecated")


def one_line(text: str) -> str:
    """The error an entry point printed on stderr: exactly one line, the last, starting with 'error: ' (or 'config
    error: '), never a traceback (a training run's log lines may come before it)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("error: ", "config error: "))]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in text, text
    return errors[0]


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory, ucf_tree, tiny_data_cfg):
    """A latent cache of the tiny UCF101 tree (6 clips, 2 shards) made with a saved plain-tiny VAE."""
    from tokenizer import build_vae, load_vae
    from tokenizer.cache import CacheConfig, run_cache

    root = tmp_path_factory.mktemp("rel_cache")
    torch.manual_seed(0)
    vae_dir = build_vae("plain-tiny").eval().save_pretrained(root / "vae")
    data_cfg = tiny_data_cfg("ucf101", ucf_tree, split="train", fold=1, num_frames=9)
    cfg = CacheConfig(dtype="fp32", clips_per_shard=4, batch_size=4, num_workers=0, device="cpu")
    run_cache(load_vae(vae_dir), data_cfg, cfg, root / "cache", vae_source=str(vae_dir), show_progress=False,
              log=lambda *a, **k: None)
    return root / "cache", vae_dir


def _latte_overrides(cache, vae_dir, run):
    from diffusion import LATTE_NAMES

    tiny = next(n for n in LATTE_NAMES if "tiny" in n.lower())
    return [f"model.name={tiny}", f"data.cache_dir={cache}", f"vae.ckpt={vae_dir}", f"train.run_dir={run}",
            "train.batch_size=2", "train.tracker=none", "train.progress_bar=false", "train.log_every=1"]


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory, tiny_cache):
    """An unconditional Latte run (one step): sampled with --cfg-scale, and given where a VAE is expected."""
    from diffusion.train_config import LatteTrainConfig
    from diffusion.training import train
    from tokenizer.config import load_config

    cache, vae_dir = tiny_cache
    run = tmp_path_factory.mktemp("rel_latte") / "run"
    cfg = load_config(LatteTrainConfig, REPO / "configs/diffusion/latte_tiny.yaml",
                      _latte_overrides(cache, vae_dir, run) + ["data.conditioning=none", "train.max_steps=1",
                                                               "train.checkpoint_every=1"])
    train(cfg)
    return run


def _weights_files(tmp_path: Path) -> dict[str, Path]:
    """One file of each wrong kind a user can point a weights option at."""
    from tokenizer.io import save_weights

    files = {"text": tmp_path / "notes.pt", "torchscript": tmp_path / "script.pt", "pickle": tmp_path / "code.pt",
             "vae": tmp_path / "vae.safetensors"}
    files["text"].write_text("this is a README, not weights\n")
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(files["torchscript"]))
    torch.save({"weight": torch.ones(2), "args": _Args()}, files["pickle"])  # a checkpoint that pickles a class
    save_weights({"encoder.conv.weight": torch.zeros(4, 3, 3, 3)}, files["vae"], config={"name": "plain-tiny"})
    return files


class _Args:
    """Stands in for argparse.Namespace & co. inside a released checkpoint: unpickling it would import this class."""


# ------------------------------------------------------------------------------------ 2. the weights gate

def test_file_kind_reads_the_bytes_not_the_name(tmp_path):
    from tokenizer.io import file_kind

    files = _weights_files(tmp_path)
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    torch.save({"w": torch.ones(2)}, tmp_path / "zip.safetensors")  # a misleading name
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 4)
    got = {p.name: file_kind(p) for p in [*files.values(), *(tmp_path / n for n in (
        "legacy.bin", "zip.safetensors", "empty.pt", "noise.pt"))]}
    assert got == {"notes.pt": "text", "script.pt": "torchscript", "code.pt": "torch-zip",
                   "vae.safetensors": "safetensors", "legacy.bin": "torch-pickle", "zip.safetensors": "torch-zip",
                   "empty.pt": "empty", "noise.pt": "other"}


def _loaders():
    """Every option that takes a weights file by path, as the toolkit loads it."""
    from diffusion.latte_run import load_init_state
    from pipelines.i3d import build_detector
    from tokenizer.inflate import load_image_vae
    from tokenizer.losses import build_lpips

    return {"model.init_from (Latte)": load_init_state,
            "model.init_from (VC-VAE)": load_image_vae,
            "lpips_backbone": lambda p: build_lpips("alex", p),
            "detector_path": lambda p: build_detector("i3d_pt", p)}


@pytest.mark.parametrize("kind", ["text", "torchscript", "pickle", "vae"])
@pytest.mark.parametrize("option", ["model.init_from (Latte)", "model.init_from (VC-VAE)", "lpips_backbone",
                                    "detector_path"])
def test_wrong_weights_file_is_one_clear_line(tmp_path, kind, option):
    """Never torch's advice to re-run with weights_only=False; the message says what the file is."""
    path = _weights_files(tmp_path)[kind]
    loader = _loaders()[option]
    if kind == "vae" and option.startswith("model.init_from"):
        pytest.skip("a safetensors state dict is a valid init_from file (its names are checked by the model)")
    with pytest.raises(ValueError) as info:
        loader(path)
    msg = str(info.value)
    assert "\n" not in msg and "weights_only" not in msg and str(path) in msg, msg
    want = {"text": "is a text file", "torchscript": "is a TorchScript archive", "pickle": "pickles objects besides "
            "tensors (it calls test_reliability._Args)", "vae": "missing"}[kind]
    assert want in msg, msg


def test_torchscript_detector_loads_only_when_trusted(tmp_path, monkeypatch):
    """torch.jit.load can run code from the file: the TorchScript I3D needs an explicit opt-in."""
    import pipelines.i3d as i3d
    from tokenizer.io import sha256_file

    file = _weights_files(tmp_path)["torchscript"]
    monkeypatch.delenv(i3d.TRUST_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="TorchScript archive, which can run code when loaded: refused unless "
                                         "trusted"):
        i3d.build_detector("i3d_torchscript", file)
    assert i3d.build_detector("i3d_torchscript", file, trust_torchscript=True).torchscript
    monkeypatch.setenv(i3d.TRUST_ENV_VAR, "1")
    assert i3d.build_detector("i3d_torchscript", file).info.sha256 == sha256_file(file)
    monkeypatch.delenv(i3d.TRUST_ENV_VAR)
    monkeypatch.setitem(i3d.PUBLISHED_SHA256, "i3d_torchscript", sha256_file(file))  # the published file itself
    assert i3d.build_detector("i3d_torchscript", file).torchscript
    text = _weights_files(tmp_path)["text"]
    with pytest.raises(ValueError, match="is a text file"):  # trust opens TorchScript archives only
        i3d.build_detector("i3d_torchscript", text, trust_torchscript=True)


# ------------------------------------------------------------------------- 1. validation before any work

def test_unknown_vae_name_bad_lr_and_workers_exit_2_under_dry_run(tmp_path, capsys):
    from tokenizer.train_vae import main

    base = ["--config", str(REPO / "configs/tokenizer/plain_tiny.yaml"), "--dry-run",
            f"train.run_dir={tmp_path / 'run'}", "train.tracker=none"]
    for override, want in [("model.name=plainn", "invalid value 'model.name=plainn': valid values are deco"),
                           ("optim.lr=-1", "invalid value 'optim.lr=-1.0': must be > 0"),
                           ("train.num_workers=-1", "invalid value 'train.num_workers=-1': must be >= 0")]:
        assert main([*base, override]) == 2, override
        assert want in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_latte_optim_lr_and_workers_name_their_key(tmp_path, capsys):
    from diffusion.train_latte import main

    base = ["--config", str(REPO / "configs/diffusion/latte_tiny.yaml"), "--dry-run",
            f"train.run_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path}"]
    assert main([*base, "optim.lr=-1"]) == 2
    assert "'optim.lr=-1.0': must be > 0" in one_line(capsys.readouterr().err)
    assert main([*base, "data.num_workers=-1"]) == 2
    assert "'data.num_workers=-1': must be >= 0" in one_line(capsys.readouterr().err)
    assert main([*base, "model.config.hiden_size=32"]) == 2  # a Latte field misspelt: named, not a traceback
    err = one_line(capsys.readouterr().err)
    assert "unknown Latte field(s) hiden_size" in err and "hidden_size" in err
    main([*base, "model.config.hidden_size=32"])  # a real field passes the check (and stops at the empty cache)
    assert "unknown Latte field" not in capsys.readouterr().err


def test_a_latte_run_where_a_vae_is_expected(uncond_run, tiny_cache, tmp_path, capsys):
    """sample --vae-ckpt, train_latte vae.ckpt=, eval_recon --ckpt: each names the option and says what it got."""
    from diffusion.train_latte import main as train_latte
    from pipelines.eval_recon import main as eval_recon
    from pipelines.sample import main as sample

    cache, _ = tiny_cache
    assert sample(["--vae", "plain-tiny", "--ckpt", str(uncond_run), "--vae-ckpt", str(uncond_run), "--out",
                   str(tmp_path / "s"), "--device", "cpu", "--dry-run"]) == 2
    assert f"--vae-ckpt {uncond_run}: {uncond_run} is a Latte run" in one_line(capsys.readouterr().err)
    assert train_latte(["--config", str(REPO / "configs/diffusion/latte_tiny.yaml"), "--dry-run",
                        *_latte_overrides(cache, uncond_run, tmp_path / "r")]) == 2
    assert f"vae.ckpt={uncond_run}: {uncond_run} is a Latte run" in one_line(capsys.readouterr().err)
    assert eval_recon(["--vae", "plain-tiny", "--ckpt", str(uncond_run), "--data",
                       str(REPO / "configs/data/samples_tiny.yaml"), "--no-lpips", "--fvd-detector", "none",
                       "--out", str(tmp_path / "e")]) == 2
    assert "is a Latte run" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists() and not (tmp_path / "e").exists()


def test_sample_refuses_cfg_scale_on_unconditional_run_before_writing(uncond_run, tmp_path, capsys):
    from pipelines.sample import SETTINGS_FILE, main

    out = tmp_path / "samples"
    args = ["--vae", "plain-tiny", "--ckpt", str(uncond_run), "--out", str(out), "--sampler", "ddim", "--steps", "2",
            "--num-videos", "1", "--device", "cpu"]
    assert main([*args, "--cfg-scale", "2"]) == 2
    assert "--cfg-scale 2: the run is unconditional" in one_line(capsys.readouterr().err)
    assert not (out / SETTINGS_FILE).exists()
    out.mkdir()  # a folder refused by the old code: its settings file, written before the failure, and no video
    (out / SETTINGS_FILE).write_text(json.dumps({"cfg_scale": 2.0}))
    assert main(args) == 0
    assert json.loads((out / SETTINGS_FILE).read_text())["cfg_scale"] == 1.0
    assert (out / "videos" / "000000.mp4").is_file()


def test_cache_takes_options_after_overrides(tmp_path, capsys):
    from tokenizer.cache.__main__ import main

    assert main(["--vae", "plain-tiny", "--data", str(REPO / "configs/data/samples_tiny.yaml"), "device=cpu",
                 "--dry-run", "num_workers=0", "--out", str(tmp_path / "c"), "cache.batch_size=2",
                 "--no-progress"]) == 0
    assert "plan:" in capsys.readouterr().out and not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------------------ FVD

@pytest.fixture()
def fvd_folders(tmp_path, ucf_tree):
    """Real videos (the tiny UCF tree, flattened) and a folder of generated ones (copies of them)."""
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    for p in sorted(ucf_tree.rglob("*.avi")):
        shutil.copy(p, real / p.name)
        shutil.copy(p, fake / p.name)
    return real, fake


FVD_TINY = ["detector=random", "num_real=4", "num_fake=4", "num_frames=8", "resolution=32", "num_workers=0"]


@pytest.mark.parametrize("attack", ["empty", "unreadable", "too_short", "batch_size=0", "num_workers=-1"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_fvd_checks_its_inputs_before_real_statistics(fvd_folders, tmp_path, capsys, monkeypatch, attack, dry_run):
    import pipelines.fvd as fvd

    real, fake = fvd_folders
    extra = []
    if attack == "empty":
        shutil.rmtree(fake)
        fake.mkdir()
    elif attack == "unreadable":
        (fake / "v_00_broken.avi").write_text("not a video\n" * 10)
    elif attack == "too_short":
        encode_video(fake / "v_aa_short.mp4", np.zeros((5, 32, 32, 3), np.uint8))
    else:
        extra = [attack]
    monkeypatch.setattr(fvd, "extract_features", _forbidden)  # no feature may be computed
    rc = fvd.main(["--real", str(real), "--fake", str(fake), *FVD_TINY, f"stats_cache_dir={tmp_path / 'st'}",
                   f"out={tmp_path / 'out'}", *extra, *(["--dry-run"] if dry_run else [])])
    line = one_line(capsys.readouterr().err)
    assert rc == 2
    want = {"empty": "no generated videos", "unreadable": "v_00_broken.avi: cannot open",
            "too_short": "v_aa_short.mp4: generated video has 5 frames; the protocol needs frame 7",
            "batch_size=0": "'batch_size=0': must be >= 1", "num_workers=-1": "'num_workers=-1': must be >= 0"}
    assert want[attack] in line, line
    assert not (tmp_path / "st").exists() and not (tmp_path / "out").exists()


def _forbidden(*args, **kwargs):
    raise AssertionError("features computed before the inputs were checked")


def _zero_middle(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose middle third of bytes is zeroed: it opens, indexes every frame, and its later frames
    fail to decode (a real-world half-corrupted download)."""
    data = bytearray(src.read_bytes())
    n = len(data)
    data[n // 4:n // 4 + n // 2] = bytes(n // 2)
    dst.write_bytes(bytes(data))
    return dst


def test_fvd_real_video_that_fails_to_decode_is_replaced_and_listed(tmp_path, ucf_tree):
    """The real clip of a video that opens but does not decode at its drawn offset is dropped, the next eligible
    video of the seeded walk replaces it, and the result lists it; a truncated video is skipped by the probe."""
    import pipelines.fvd as fvd
    from tokenizer.data.video_io import video_num_frames

    real = tmp_path / "real"
    real.mkdir()
    for i, src in enumerate(sorted(ucf_tree.rglob("*.avi"))[:6]):
        shutil.copy(src, real / f"v{i}.avi")
    frames = np.random.default_rng(0).integers(0, 255, (36, 32, 32, 3), dtype=np.uint8)
    good = encode_video(tmp_path / "good.mp4", frames)  # H.264: zeroing its middle bytes breaks its later frames
    bad = _zero_middle(good, real / "v_corrupt.mp4")
    trunc = real / "v_trunc.avi"
    data = sorted(ucf_tree.rglob("*.avi"))[7].read_bytes()
    trunc.write_bytes(data[: len(data) * 4 // 5])  # cut short: 13 of the 36 frames its header declares
    protocol = fvd.FVDProtocol("t", num_real=5, num_fake=2, num_frames=8, resolution=32, seed=3)
    videos = [str(p) for p in fvd.list_clip_sources(real)]
    order = [videos[i] for i in np.random.default_rng([3, 0]).permutation(len(videos))]
    assert order.index(str(bad)) < 4 and video_num_frames(bad) == 36  # drawn early; opens; every frame indexed
    assert order.index(str(trunc)) < 5 and 8 <= video_num_frames(trunc) < 36  # long enough by its index
    walk = fvd.RealClipWalk(videos, protocol)
    clean = [c for c in walk.take(len(videos)) if c.path != str(bad)][:5]  # what a walk without the bad video uses
    with pytest.raises(Exception):
        fvd.read_clip(next(c for c in fvd.RealClipWalk(videos, protocol).take(9) if c.path == str(bad)))
    gen = torch.rand(2, 3, 8, 32, 32) * 2 - 1
    det = fvd.build_detector("random")
    res = fvd.compute_fvd(real, gen, protocol, det, device="cpu", num_workers=0, progress=False, verbose=False,
                          cache_dir=tmp_path / "st", out=tmp_path / "fvd.json")
    skipped = json.loads((tmp_path / "fvd.json").read_text())["real"]["skipped"]
    assert res.num_real == 5 and skipped["undecodable"] == 1 and skipped["undecodable_videos"][0].startswith(str(bad))
    assert any("truncated" in r and str(trunc) in r for r in skipped["unreadable_videos"])
    from tokenizer.io import read_weights_config

    stored = read_weights_config(next((tmp_path / "st").iterdir()))["clips"]  # the clips the statistics used
    assert stored == [[c.path, c.indices[0]] for c in clean]


# ------------------------------------------------------------------------------- 3. disk full, shards, NaN

def test_disk_full_while_checkpointing_is_one_line_and_resumes(tmp_path, capsys, monkeypatch):
    """The safetensors writer fails half-way with ENOSPC (what a full disk does to f.write): one line naming the
    file and the free space, exit 4; the run folder keeps its last complete checkpoint and the same command then
    finishes the run."""
    import tokenizer.io as tio
    from tokenizer.train_vae import main
    from tokenizer.training.rundir import RunDir

    run = tmp_path / "run"
    args = ["--config", str(REPO / "configs/tokenizer/plain_tiny.yaml"), f"train.run_dir={run}", "train.max_steps=2",
            "train.checkpoint_every=1", "train.sample_every=100", "train.tracker=none", "train.progress_bar=false",
            "loss.lpips_net=squeeze", "loss.perceptual_weight=0"]
    real_save = tio.save_file
    calls = []

    def full_disk(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(tio, "save_file", full_disk)
    assert main(args) == 4
    line = one_line(capsys.readouterr().err)
    assert "cannot write" in line and ".step-000002.partial/ema.safetensors" in line and "No space left" in line
    assert " free in " in line and "re-run the same command to resume" in line
    assert RunDir(run, is_main=False).latest().name == "step-000001"
    monkeypatch.setattr(tio, "save_file", real_save)
    assert main(args) == 0
    assert RunDir(run, is_main=False).latest().name == "step-000002"
    assert not [p for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_a_real_write_failure_names_the_file_and_keeps_the_old_one(tmp_path):
    """The kernel refuses the write (RLIMIT_FSIZE: EFBIG, as ENOSPC, from f.write with no file name): the OSError
    names the target, the previous file is intact and no temporary file is left."""
    code = textwrap.dedent("""
        import resource, signal, sys, torch
        from tokenizer.io import load_weights, save_weights, write_error_line, write_json
        save_weights({"w": torch.ones(4)}, sys.argv[1] + "/m.safetensors")
        write_json(sys.argv[1] + "/r.json", {"old": 1})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        for write in (lambda: save_weights({"w": torch.zeros(10000)}, sys.argv[1] + "/m.safetensors"),
                      lambda: write_json(sys.argv[1] + "/r.json", {"new": "x" * 10000})):
            try:
                write()
            except OSError as err:
                print(write_error_line(err))
        """)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, text=True, capture_output=True,
                         timeout=60)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    for line, name in zip(lines, ("m.safetensors", "r.json")):
        assert line.startswith(f"cannot write {tmp_path / name}: File too large (") and " free in " in line, line
    from tokenizer.io import load_weights

    assert torch.equal(load_weights(tmp_path / "m.safetensors")[0]["w"], torch.ones(4))
    assert json.loads((tmp_path / "r.json").read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "r.json"]


def test_eval_recon_write_failure_is_one_line(tiny_cache, tmp_path, capsys):
    """--out below a regular file: the results cannot be written (ENOTDIR, a real OSError), exit 4 naming it."""
    from pipelines.eval_recon import main

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    rc = main(["--vae", "plain-tiny", "--ckpt", str(tiny_cache[1]), "--data",
               str(REPO / "configs/data/samples_tiny.yaml"), "--frames", "5", "--resolution", "32", "--num-clips", "1",
               "--no-lpips", "--fvd-detector", "none", "--num-workers", "0", "--device", "cpu",
               "--out", str(blocker / "eval")])
    line = one_line(capsys.readouterr().err)
    assert rc == 4 and line.startswith(f"error: cannot write {blocker / 'eval'}") and " free in " in line, line


def _copy_cache(cache: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "cache"
    shutil.copytree(cache, dst)
    return dst


def test_truncated_shard_names_itself_and_suggests_verify(tiny_cache, tmp_path):
    from tokenizer.cache import CacheError, LatentCacheDataset

    cache = _copy_cache(tiny_cache[0], tmp_path)
    ds = LatentCacheDataset(cache)
    shard = Path(ds.files[1])
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    ds[0]  # shard 0 is intact
    with pytest.raises(CacheError) as info:
        ds[len(ds) - 1]
    msg = str(info.value)
    assert str(shard) in msg and f"python -m tokenizer.cache --verify --out {cache}" in msg and "\n" not in msg


def test_latte_training_on_a_truncated_shard_is_one_line(tiny_cache, tmp_path, capsys):
    """The issue's attack: Latte training on a cache whose shard was cut short ends in one line naming the shard."""
    from diffusion.train_latte import main

    cache = _copy_cache(tiny_cache[0], tmp_path)
    shard = sorted((cache / "shards").glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    overrides = _latte_overrides(cache, tiny_cache[1], tmp_path / "run")
    assert main(["--config", str(REPO / "configs/diffusion/latte_tiny.yaml"), *overrides, "train.max_steps=4",
                 "train.checkpoint_every=100"]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"cache shard {shard} cannot be read" in line and "--verify" in line, line


def test_nan_in_a_cached_latent_is_reported_once_with_the_clip(tiny_cache, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from tokenizer.cache import LatentCacheDataset

    cache = _copy_cache(tiny_cache[0], tmp_path)
    ds = LatentCacheDataset(cache)
    shard = Path(ds.files[0])
    with safe_open(str(shard), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(shard))
    tensors["mean"][1, 0, 0, 0, 0] = float("nan")
    save_file(tensors, str(shard), metadata=meta)
    ds = LatentCacheDataset(cache)
    with pytest.warns(UserWarning, match=r"clip 1 \(shard .* row 1, .*\) holds 1 non-finite latent values") as rec:
        assert torch.isnan(ds[1]["latent"]).any()
    assert len([w for w in rec if "non-finite" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second read of the same clip is silent, a clean clip too
        ds[1]
        ds[0]


# ------------------------------------------------------------------------------------------- 4. run folders

def test_second_launch_into_a_held_run_folder_is_refused(tmp_path, capsys):
    """A live job holds the folder (its .partial checkpoint in progress); a second launch exits 2 naming its pid
    and removes nothing of it; once the holder ends, the folder opens again."""
    from tokenizer.train_vae import main

    run = tmp_path / "run"
    code = textwrap.dedent("""
        import sys, time
        from tokenizer.training.rundir import RunDir
        RunDir(sys.argv[1], lock=True)  # what a training job opens
        (RunDir(sys.argv[1], lock=True).root / ".step-000001.partial").mkdir()
        print("held", flush=True)
        time.sleep(60)
        """)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main(["--config", str(REPO / "configs/tokenizer/plain_tiny.yaml"), f"train.run_dir={run}",
                   "train.max_steps=1", "train.tracker=none", "train.progress_bar=false", "loss.perceptual_weight=0"])
        line = one_line(capsys.readouterr().err)
        assert rc == 2 and f"is in use by pid {holder.pid} on host" in line and "train.run_dir" in line
        assert (run / ".step-000001.partial").is_dir() and not (run / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    from tokenizer.training.rundir import RunDir

    opened = RunDir(run, lock=True)  # the kernel dropped the dead holder's lock: the folder opens, its .partial goes
    assert not (run / ".step-000001.partial").exists()
    opened.unlock()


def test_stale_temp_files_of_killed_writers_removed_on_resume(tmp_path):
    """Only the toolkit's own temporary names go (.<name>.<8 chars>.tmp[.<suffix>]); a user's files stay."""
    from tokenizer.io import is_stale_temp
    from tokenizer.training.rundir import RunDir

    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    stale = [run / ".config.yaml.k2j4_x9a.tmp", run / ".latte_run.json.abcdefgh.tmp", run / ".latest.0a1b2c3d.tmp",
             run / "samples" / ".step-000010.gif.zz11yy22.tmp.gif"]
    kept = [run / ".keepme", run / "notes.tmp", run / ".hidden.tmp", run / "samples" / "step-000010.gif",
            run / ".x.toolong123.tmp"]
    for p in stale + kept:
        p.write_bytes(b"")
    assert all(is_stale_temp(p.name) for p in stale) and not any(is_stale_temp(p.name) for p in kept)
    RunDir(run, is_main=False)  # a reader removes nothing
    RunDir(run)  # nor a main-process view that does not hold the folder (a live job may be writing them)
    assert all(p.exists() for p in stale)
    RunDir(run, lock=True).unlock()  # a training job's start
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_sample_removes_its_stale_temp_videos_and_holds_its_folder(uncond_run, tmp_path, capsys):
    from pipelines.sample import main

    out = tmp_path / "s"
    (out / "videos").mkdir(parents=True)
    stale = out / "videos" / ".000003.mp4.a1b2c3d4.tmp.mp4"  # a zero-byte temporary of a killed run
    stale.write_bytes(b"")
    args = ["--vae", "plain-tiny", "--ckpt", str(uncond_run), "--out", str(out), "--sampler", "ddim", "--steps", "2",
            "--num-videos", "1", "--device", "cpu"]
    assert main(args) == 0
    assert not stale.exists() and (out / "videos" / "000000.mp4").is_file()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    other = subprocess.run([sys.executable, "-m", "pipelines.sample", *args], env=env, text=True,
                           capture_output=True, timeout=120)  # this process still holds the folder
    assert other.returncode == 2 and f"{out} is in use by pid {os.getpid()}" in one_line(other.stderr)


def test_a_callers_own_error_inside_an_atomic_write_is_not_relabelled_disk_full(tmp_path, monkeypatch):
    """Only a writer's failure becomes ENOSPC on a nearly full disk: a KeyError of the code inside the block stays
    a KeyError (and the target is left untouched)."""
    import tokenizer.io as tio

    monkeypatch.setattr(tio, "_disk_full", lambda folder: True)
    with pytest.raises(KeyError):
        with tio.atomic_path(tmp_path / "w.bin"):
            raise KeyError("a bug of the caller")
    with pytest.raises(OSError, match="No space left"):  # torch.save's RuntimeError on a full disk still is
        with tio.atomic_path(tmp_path / "w.bin"):
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")
    assert not (tmp_path / "w.bin").exists()
