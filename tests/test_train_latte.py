"""diffusion/train_latte.py on CPU: Latte-tiny/2 on a real latent cache of the tiny UCF101 tree (plain-tiny VAE)."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tokenizer.cache import CacheConfig, CacheError, LatentCacheDataset, run_cache
from tokenizer.config import ConfigError, load_config
from tokenizer.io import load_weights, state_dict_fingerprint
from tokenizer.training.rundir import RunDir

from diffusion.latte_run import load_latte_run
from diffusion.train_config import LatteTrainConfig
from diffusion.training import LatteTrainer

from tests.helpers import Poisoned, assert_same

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "diffusion", "latte_tiny.yaml")


# --- fixtures -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory, ucf_tree, tiny_data_cfg):
    """A real cache: 6 train videos (3 classes) x 2 clips of 9 frames at 32 px, encoded by a saved plain-tiny VAE:
    12 latents of (16, 3, 4, 4), posterior mean and std in fp32. Returns (cache dir, VAE folder)."""
    from tokenizer import build_vae

    root = tmp_path_factory.mktemp("latte_cache")
    torch.manual_seed(0)
    vae = build_vae("plain-tiny").eval()
    vae_dir = vae.save_pretrained(root / "vae")
    data_cfg = tiny_data_cfg("ucf101", ucf_tree, split="train", fold=1, num_frames=9, clips_per_video=2)
    cfg = CacheConfig(dtype="fp32", clips_per_shard=5, batch_size=4, num_workers=0, device="cpu")
    run_cache(vae, data_cfg, cfg, root / "cache", vae_source=str(vae_dir), show_progress=False, log=lambda *a: None)
    return root / "cache", vae_dir


def tiny_cfg(cache_dir, run_dir, *overrides):
    base = [f"data.cache_dir={cache_dir}", f"train.run_dir={run_dir}", "train.tracker=none",
            "train.progress_bar=false"]
    return load_config(LatteTrainConfig, TINY, base + list(overrides))


def trainer(cache, run_dir, *overrides, **kw):
    return LatteTrainer(tiny_cfg(cache[0], run_dir, *overrides), **kw)


def full_state(tr):
    s = tr.state_dict()
    return {k: s[k] for k in ("model", "ema", "opt", "data", "step", "guard")}


def assert_close(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"largest difference {worst:.3g} > {atol}"
    return worst


# --- resume -------------------------------------------------------------------------------------------------------
# 2 micro-batches of 2 per step (accumulation), posterior sampling on, a checkpoint every step
RESUME = ("train.max_steps=8", "train.checkpoint_every=1", "train.batch_size=2", "train.grad_accum=2",
          "train.keep_last=20")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    tr = trainer(cache, tmp_path_factory.mktemp("full") / "run", *RESUME)
    tr.fit()
    return tr


def test_resume_equals_uninterrupted_run(tmp_path, cache, uninterrupted):
    """4 steps, stop, the same command to 8: the same losses and the same final state, bit for bit (CPU)."""
    first = trainer(cache, tmp_path / "run", *RESUME[1:], "train.max_steps=4")
    first.fit()
    second = trainer(cache, tmp_path / "run", *RESUME)
    second.fit()
    assert first.history + second.history == uninterrupted.history
    assert_same(full_state(second), full_state(uninterrupted))


def test_a_refused_resume_exits_2_and_leaves_the_run_folder_alone(tmp_path, cache, capsys):
    """Another model pointed at an existing run: `error: ...` and exit code 2, no traceback, and the run's
    config, record and checkpoints are the first run's, byte for byte."""
    from diffusion.train_latte import main

    run = tmp_path / "run"
    base = ["--config", TINY, f"data.cache_dir={cache[0]}", f"train.run_dir={run}", "train.tracker=none",
            "train.progress_bar=false", "train.max_steps=1"]
    assert main(base) == 0
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(base + ["train.max_steps=2", "data.conditioning=none"]) == 2
    assert "use another train.run_dir" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_sigkill_then_rerun_resumes_exactly(tmp_path, cache, uninterrupted):
    """kill -9 the script (run as a file) after its first checkpoint; the same command resumes exactly."""
    run = tmp_path / "run"
    cmd = [sys.executable, "diffusion/train_latte.py", "--config", TINY, f"data.cache_dir={cache[0]}",
           f"train.run_dir={run}", "train.tracker=none", "train.progress_bar=false", *RESUME]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "latest").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    done = RunDir(run).latest()
    assert done is not None, err.decode()[-2000:]
    k = int(done.name.split("-")[1])
    assert 1 <= k < 8  # killed mid-run: something is left to resume
    resumed = trainer(cache, run, *RESUME)
    resumed.fit()
    assert resumed.history == uninterrupted.history[k:]
    assert_same(full_state(resumed), full_state(uninterrupted))


# --- Latte's recipe: one cached variant per video and epoch ------------------------------------------------------
def test_one_variant_per_video_per_epoch_is_seeded_and_changes(cache):
    """VideoVariants: one item per video; epoch e shows one of the video's cached clips, drawn from (seed, e, video);
    the draw moves on with the epoch, repeats with the seed, and every variant turns up."""
    from tokenizer.cache import VideoVariants

    base = LatentCacheDataset(cache[0], normalize="none")
    ds, same, other = VideoVariants(base, seed=1), VideoVariants(base, seed=1), VideoVariants(base, seed=2)
    assert len(ds) == 6 and len(base) == 12  # 6 videos x 2 cached windows
    shown = {i: set() for i in range(len(ds))}
    draws, other_draws = [], []
    for epoch in range(8):
        for d in (ds, same, other):
            d.set_epoch(epoch)
        row = [ds.variant(i) for i in range(len(ds))]
        assert row == [same.variant(i) for i in range(len(ds))]  # seeded: the same draws
        draws.append(row)
        other_draws.append([other.variant(i) for i in range(len(ds))])
        for i in range(len(ds)):
            item = ds[i]
            assert item["path"] == base.paths[ds.video_ids[i]] and item["index"] == row[i]  # its own video
            assert torch.equal(item["latent"], base[row[i]]["latent"])
            shown[i].add(item["clip"])
    assert len({tuple(r) for r in draws}) > 1 and draws != other_draws  # changes with the epoch and the seed
    assert all(s == {0, 1} for s in shown.values())  # both windows of every video within 8 epochs


VARIANTS = ("data.variants=one_per_video", "train.max_steps=8", "train.checkpoint_every=1", "train.batch_size=2",
            "train.grad_accum=2", "train.keep_last=20")


def test_one_variant_per_video_training_resumes_exactly(tmp_path, cache):
    """data.variants=one_per_video: an epoch is 6 videos (3 micro-batches); 8 steps of 2 micro-batches cross 5
    epochs. Stopped after 3 steps and resumed: the same losses and state as the uninterrupted run."""
    from tokenizer.cache import VideoVariants

    full = trainer(cache, tmp_path / "full", *VARIANTS)
    assert isinstance(full.dataset, VideoVariants) and full.stream.steps_per_epoch == 3
    full.fit()
    first = trainer(cache, tmp_path / "run", *VARIANTS[:1], *VARIANTS[2:], "train.max_steps=3")
    first.fit()
    second = trainer(cache, tmp_path / "run", *VARIANTS)
    second.fit()
    assert first.history + second.history == full.history
    assert_same(full_state(second), full_state(full))
    assert second.stream.position.epoch == 5
    record = load_latte_run(tmp_path / "full").record["cache"]
    assert (record["variants"], record["clips_per_video"], record["flip_copies"]) == ("one_per_video", 2, False)


# --- the EMA, the run folder and loading it -----------------------------------------------------------------------
def test_ema_follows_its_formula_and_the_run_reloads(uninterrupted, tmp_path, cache):
    """Step 1 copies the weights, step 2 is theta_ema = d theta_ema + (1 - d) theta; later the EMA lags the raw
    weights. The EMA file and load_latte_run give back exactly the trainer's EMA / raw weights."""
    tr = trainer(cache, tmp_path / "run", "train.max_steps=2", "train.batch_size=4")
    tr.setup()
    w0 = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train_step()
    w1 = {k: v.clone() for k, v in tr.model.state_dict().items()}
    assert_same(tr.ema.state_dict(), w1)  # the first update copies (decay 0 at step 1)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)
    tr.train_step()
    d = tr.cfg.train.ema_decay
    for k, v in tr.model.state_dict().items():
        expect = d * w1[k] + (1 - d) * v if v.is_floating_point() else v
        torch.testing.assert_close(tr.ema.state_dict()[k], expect, rtol=1e-6, atol=1e-7)
    tr.monitor.close()

    run = uninterrupted.run.root
    ema, raw = uninterrupted.ema.state_dict(), uninterrupted.model.state_dict()
    moved = [k for k in raw if not torch.equal(ema[k], raw[k])]
    assert len(moved) > len(raw) // 2  # after 8 steps with decay 0.99 the EMA lags the raw weights
    assert_same(load_weights(run / "step-000008" / "ema.safetensors")[0], ema)
    got = load_latte_run(run)
    assert got.which == "ema" and got.step == 8 and got.num_classes == 3 and got.latent_shape == (16, 3, 4, 4)
    assert_same(got.model.state_dict(), ema)
    assert_same(load_latte_run(run, which="raw").model.state_dict(), raw)
    assert_same(load_latte_run(run, which="raw", checkpoint="step-000003").model.state_dict(),
                RunDir(run).load_checkpoint(run / "step-000003")[0]["model"])
    # the record and the manifest copy say what the run was trained on
    assert got.record["vae"]["name"] == "plain-tiny" and got.record["class_names"] == ["Biking", "CartoonBunny",
                                                                                          "PhoneCall"]
    assert got.manifest["identity"]["vae"]["fingerprint"] == got.record["vae"]["fingerprint"]
    vae = got.vae()  # found through the cache's vae_source and verified by fingerprint
    assert vae.fingerprint() == got.record["vae"]["fingerprint"]


def test_sampling_a_trained_run_gives_latents_and_videos_of_the_right_shape(uninterrupted, tmp_path):
    import decord

    z, y = uninterrupted.sample_latents(num=3, steps=4)
    assert z.shape == (3, 16, 3, 4, 4) and torch.isfinite(z).all() and y.tolist() == [0, 1, 2]
    z2, _ = uninterrupted.sample_latents(num=3, steps=4, sampler="ddpm")
    assert z2.shape == z.shape and not torch.equal(z, z2)
    # periodic samples: decoded with the cache's VAE, 9 frames of 32 x 32 per video, 2 videos stacked
    uninterrupted.cfg.sample.format = "mp4"
    path = uninterrupted.write_samples(99)
    frames = decord.VideoReader(str(path)).get_batch(list(range(9))).asnumpy()
    assert len(decord.VideoReader(str(path))) == 9 and frames.shape[1:] == (2 * 32 + 2, 32, 3)


# --- learning -----------------------------------------------------------------------------------------------------
def test_overfitting_a_handful_of_latents_lowers_the_loss(tmp_path, cache):
    """4 fixed latents (posterior means), 40 steps: the loss on fixed (t, noise) draws falls well below its start
    (1 at initialisation: adaLN-Zero makes the untrained model predict eps = 0)."""
    ds = LatentCacheDataset(cache[0], normalize="stats")
    four = torch.utils.data.Subset(ds, [0, 3, 6, 9])
    tr = trainer(cache, tmp_path / "run", "train.max_steps=40", "train.checkpoint_every=40", "train.batch_size=4",
                 "data.sample_posterior=false", "optim.lr=5e-3", "train.tracker=tensorboard", "train.log_every=10",
                 dataset=four)
    x = torch.stack([four[i]["latent"] for i in range(4)])
    y = torch.tensor([four[i]["label"] for i in range(4)])

    def loss():
        g = torch.Generator().manual_seed(1)
        t = torch.tensor([50, 250, 500, 900]).repeat(4)
        noise = torch.randn((16, *x.shape[1:]), generator=g)
        with torch.no_grad():
            terms = tr.diffusion.training_losses(tr.model.eval(), x.repeat(4, 1, 1, 1, 1), t, noise=noise,
                                                 y=y.repeat(4))
        return terms["mse"].mean().item()

    before = loss()
    tr.fit()
    after = loss()
    print(f"overfit: eps MSE {before:.3f} -> {after:.3f}")
    assert abs(before - 1.0) < 0.05 and after < 0.6 * before
    assert tr.history[-1]["loss"] < tr.history[0]["loss"]
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents*"))
    assert re.search(r"step 40/40 loss=\S+ mse=\S+ vb=\S+ grad_norm=\S+ \S+ it/s \S+ samples/s \(batch 4\)",
                     (tmp_path / "run" / "train.log").read_text())


def test_gradient_accumulation_and_checkpointing_do_not_change_the_step(tmp_path, cache):
    """One step of batch 4 == 2 micro-batches of 2 (float tolerance), and activation checkpointing is exact."""
    ref = trainer(cache, tmp_path / "a", "train.max_steps=2", "train.batch_size=4")
    ref.fit()
    acc = trainer(cache, tmp_path / "b", "train.max_steps=2", "train.batch_size=2", "train.grad_accum=2")
    acc.fit()
    assert_close(acc.model.state_dict(), ref.model.state_dict(), atol=1e-6)
    ckpt = trainer(cache, tmp_path / "c", "train.max_steps=2", "train.batch_size=4",
                   "model.gradient_checkpointing=true")
    ckpt.fit()
    assert ckpt.model.gradient_checkpointing
    assert_same(ckpt.model.state_dict(), ref.model.state_dict())
    assert ckpt.history == ref.history


def test_gradient_clipping_starts_at_its_step(tmp_path, cache):
    """Adam's first moment after step 1 is (1 - beta1) g: with clipping active it has norm (1 - beta1) max_norm,
    before clip_start_step it carries the raw gradient."""
    norms = {}
    for start in (0, 1):
        tr = trainer(cache, tmp_path / f"s{start}", "train.max_steps=1", "optim.max_grad_norm=1e-3",
                     f"optim.clip_start_step={start}")
        tr.fit()
        m = torch.cat([s["exp_avg"].flatten() for s in tr.opt.state_dict()["state"].values()])
        norms[start] = (m.norm().item(), tr.history[0]["grad_norm"])
    assert norms[0][0] == pytest.approx(0.1 * 1e-3, rel=1e-4)  # clipped at step 1
    assert norms[1][0] == pytest.approx(0.1 * norms[1][1], rel=1e-4) and norms[1][1] > 1e-2  # not yet


def test_unconditional_bf16_run(tmp_path, cache, monkeypatch):
    """SkyTimelapse-style: no label embedder, no labels; the training forward runs under bf16 autocast (a block's
    Linear computes in bf16) while the weights and their gradients stay fp32 and the losses are float32 (split_output
    casts the network's output); samples decode."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        tr = trainer(cache, tmp_path / "run", "train.max_steps=2", "train.mixed_precision=bf16",
                     "data.conditioning=none", "sample.every=2", "sample.num=1", "sample.steps=2")
        qkv = tr.model.blocks[0].attn.qkv
        seen = {"qkv": [], "grad": [], "losses": []}
        # the EMA copy (sampling, no autocast) inherits the hooks: record the trained module's calls only
        qkv.register_forward_hook(lambda m, args, out: seen["qkv"].append(out.dtype) if m is qkv else None)
        qkv.weight.register_hook(lambda g: seen["grad"].append(g.dtype))
        losses = tr.diffusion.training_losses

        def spy(*args, **kw):
            terms = losses(*args, **kw)
            seen["losses"].append({k: v.dtype for k, v in terms.items()})
            return terms

        monkeypatch.setattr(tr.diffusion, "training_losses", spy)
        tr.fit()
        assert tr.accelerator.mixed_precision == "bf16"
        assert seen["qkv"] == [torch.bfloat16] * 2  # one training forward per step, computed in bf16
        assert seen["grad"] == [torch.float32] * 2  # ... whose gradients reach the fp32 weights in fp32
        assert seen["losses"] == [dict(mse=torch.float32, vb=torch.float32, loss=torch.float32)] * 2
        assert tr.model.y_embedder is None and tr.record["num_classes"] == 0 and tr.record["class_names"] == []
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in tr.history)
        assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # master weights stay fp32
        z, y = tr.sample_latents(num=2, steps=2)
        assert y is None and z.shape == (2, 16, 3, 4, 4)
        assert (tmp_path / "run" / "samples" / "step-000002.gif").is_file()
        assert load_latte_run(tmp_path / "run").num_classes == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


# --- faults -------------------------------------------------------------------------------------------------------
def test_nonfinite_loss_skips_the_step_and_stops_after_k(tmp_path, cache):
    from tokenizer.training.guard import NonFiniteLossError

    ds = Poisoned(LatentCacheDataset(cache[0]), bad_reads={2, 5, 6, 7}, key="latent")  # batch 1: one read per step
    tr = trainer(cache, tmp_path / "run", "train.max_steps=20", "train.checkpoint_every=2", "train.batch_size=1",
                 "train.max_nonfinite=3", dataset=ds)
    tr.setup()
    assert tr.train_step()  # read 1
    before = full_state(tr)
    assert not tr.train_step()  # read 2: NaN -> skipped, nothing changed ...
    after = full_state(tr)
    assert after["data"] != before["data"]  # ... except that the data moved on
    after["data"], after["guard"], before["guard"] = before["data"], None, None
    assert_same(after, before)
    assert tr.train_step() and tr.step == 2  # read 3; step 2 is checkpointed
    assert tr.train_step() and tr.step == 3  # read 4
    ckpt = tmp_path / "run" / "step-000002" / "state.pt"
    stamp = ckpt.read_bytes()
    with pytest.raises(NonFiniteLossError, match="3 consecutive.*step-000002"):
        for _ in range(3):
            tr.train_step()
    tr.monitor.close()
    assert tr.step == 3 and tr.guard.total == 4
    assert RunDir(tmp_path / "run").latest().name == "step-000002" and ckpt.read_bytes() == stamp
    assert "step 2: non-finite value" in (tmp_path / "run" / "train.log").read_text()


# --- the cache check ----------------------------------------------------------------------------------------------
def test_a_cache_of_another_vae_or_shape_is_refused(tmp_path, cache, capsys):
    from tokenizer import build_vae

    from diffusion.train_latte import main

    torch.manual_seed(1)
    other = build_vae("plain-tiny").save_pretrained(tmp_path / "other_vae")  # same preset, other weights
    with pytest.raises(CacheError, match="fingerprint"):
        trainer(cache, tmp_path / "run", f"vae.ckpt={other}")
    trainer(cache, tmp_path / "run", f"vae.ckpt={cache[1]}")  # the cache's own VAE is accepted
    with pytest.raises(CacheError, match="made with VAE 'plain-tiny', but vae.name=vcvae-tiny"):
        trainer(cache, tmp_path / "run", "vae.name=vcvae-tiny")
    with pytest.raises(ConfigError, match="model.in_channels=32.*set model.in_channels=16"):
        trainer(cache, tmp_path / "run", "model.in_channels=32")
    with pytest.raises(ConfigError, match="no such folder"):
        trainer((tmp_path / "nowhere", None), tmp_path / "run")
    # the CLI: a clear message and exit status 2, nothing written; a dry run prints the resolved config
    args = ["--config", TINY, f"data.cache_dir={cache[0]}", f"train.run_dir={tmp_path / 'cli'}"]
    assert main(args + [f"vae.ckpt={other}"]) == 2
    assert "fingerprint" in capsys.readouterr().err and not (tmp_path / "cli").exists()
    assert main(args + ["--dry-run", "train.tracker=none"]) == 0
    out = capsys.readouterr().out
    assert "resolved config" in out and "effective batch 4 = 4 x 1 process(es) x 1" in out
    assert not (tmp_path / "cli").exists()


def test_init_from_a_checkpoint_with_the_public_names(tmp_path, cache):
    """A torch checkpoint {"ema": state dict} with the public Latte names loads strictly into a fresh run."""
    from diffusion.latte import build_latte

    tr = trainer(cache, tmp_path / "probe", "train.max_steps=1")
    torch.manual_seed(123)
    donor = build_latte("Latte-tiny/2", **tr.record["config"]).state_dict()
    public = ("x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight",
              "y_embedder.embedding_table.weight", "pos_embed", "temp_embed", "blocks.0.attn.qkv.weight",
              "blocks.1.attn.proj.weight", "blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc2.bias",
              "blocks.2.adaLN_modulation.1.weight", "final_layer.linear.weight", "final_layer.adaLN_modulation.1.bias")
    assert set(public) <= set(donor)
    torch.save({"ema": donor, "model": {k: v * 0 for k, v in donor.items()}}, tmp_path / "latte.pt")
    run = trainer(cache, tmp_path / "run", "train.max_steps=1", f"model.init_from={tmp_path / 'latte.pt'}")
    run.setup()
    assert_same(run.model.state_dict(), donor)  # the EMA entry, strictly
    run.monitor.close()
    bad = {k: v for k, v in donor.items() if k != "temp_embed"}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"does not fit Latte-tiny/2.*missing \['temp_embed'\]"):
        trainer(cache, tmp_path / "run2", "train.max_steps=1", f"model.init_from={tmp_path / 'bad.pt'}").setup()
    # the released checkpoints are for 4-channel SD-VAE latents: refused for a 16-channel cache, naming the layers
    four = build_latte("Latte-tiny/2", **dict(tr.record["config"], in_channels=4)).state_dict()
    torch.save({"ema": four}, tmp_path / "four.pt")
    with pytest.raises(ConfigError, match=r"shapes differ.*x_embedder.proj.weight \(64, 4, 2, 2\) vs \(64, 16, 2, 2\)"):
        trainer(cache, tmp_path / "run3", "train.max_steps=1", f"model.init_from={tmp_path / 'four.pt'}").setup()


# --- several processes --------------------------------------------------------------------------------------------
DRIVER = """
import sys
sys.path.insert(0, {repo!r})
from diffusion.train_latte import main
args = sys.argv[1:]
assert main(args + ["train.run_dir={ddp}"]) == 0
assert main(args + ["train.run_dir={fsdp}", "train.fsdp=true", "sample.every=4"]) == 0
"""


def test_two_processes_ddp_and_fsdp_match_one_process(tmp_path, cache):
    """One `accelerate launch` of 2 CPU processes (gloo) runs the CLI twice: replicated (DDP) and sharded (FSDP2),
    each 2 clips x 2 micro-batches per process. DDP finds both ranks' weights identical at every checkpoint; both
    equal a 1-process run of 4 clips x 2 micro-batches (same global batch, same per-clip draws) to float tolerance
    (gradients are summed in another order); the sharded run's full checkpoint resumes in one process."""
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(repo=REPO, ddp=ddp, fsdp=fsdp))
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), str(driver), "--config", TINY, f"data.cache_dir={cache[0]}", "train.tracker=none",
           "train.progress_bar=false", "train.cpu=true", "train.max_steps=4", "train.checkpoint_every=2",
           "train.batch_size=2", "train.grad_accum=2", "train.log_every=1"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    one = trainer(cache, tmp_path / "one", "train.max_steps=4", "train.checkpoint_every=2", "train.batch_size=4",
                  "train.grad_accum=2")
    one.fit()
    for run, layout in ((ddp, "replicated (DDP)"), (fsdp, "sharded (FSDP2)")):
        log = (run / "train.log").read_text()
        assert f"2 process(es) on cpu:0, {layout}" in log
        assert "effective batch 8 = 2 per process x 2 process(es) x 2 accumulation" in log
        losses = [float(v) for v in re.findall(r"step \d+/4 loss=(\S+)", log)]
        assert losses == pytest.approx([h["loss"] for h in one.history], rel=2e-4)
        state = RunDir(run).load_checkpoint(run / "step-000004")[0]
        worst = assert_close(state["model"], one.model.state_dict(), atol=1e-6)
        assert_close(state["ema"], one.ema.state_dict(), atol=1e-6)
        print(f"{layout} on 2 processes vs 1 process: largest weight difference {worst:.3g}")
    same = re.findall(r"step (\d+): weights identical on all 2 processes \((\w+)\.\.\.\)",
                      (ddp / "train.log").read_text())
    assert [s for s, _ in same] == ["2", "4"]
    assert state_dict_fingerprint(RunDir(ddp).load_checkpoint(ddp / "step-000004")[0]["model"]).startswith(same[-1][1])
    assert (fsdp / "samples" / "step-000004.gif").is_file()  # sampled from the gathered EMA
    # the sharded run's step-2 checkpoint (whole tensors, optimiser state by name) resumes in one process
    (fsdp / "latest").write_text("step-000002\n")
    for extra in ("step-000004", "samples"):
        subprocess.run(["rm", "-rf", str(fsdp / extra)], check=True)
    resumed = trainer(cache, fsdp, "train.max_steps=4", "train.checkpoint_every=2", "train.batch_size=4",
                      "train.grad_accum=2")
    resumed.fit()
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in one.history[2:]], rel=1e-5)
    assert_close(resumed.model.state_dict(), one.model.state_dict(), atol=1e-6)
