"""The model-agnostic training machinery: run directory, checkpoints under SIGKILL, RNG, data streams, EMA, guard."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from tokenizer.training import (EMA, BucketedStream, ClipStream, NonFiniteGuard, NonFiniteLossError, RunDir,
                                capture_rng, derive_seed, motion_panels, restore_rng, side_by_side, write_panels)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- run directory ------------------------------------------------------------------------------------------------
def _state(step):
    return {"step": step, "w": torch.full((3,), float(step))}


def test_rundir_checkpoints_latest_and_keep_last(tmp_path):
    run = RunDir(tmp_path / "run", keep_last=2)
    assert run.latest() is None
    for step in (10, 20, 30):
        run.save_checkpoint(step, _state(step), rng=capture_rng(),
                            weights={"ema.safetensors": ({"w": torch.ones(2) * step}, {"name": "x", "config": {}})})
    assert [s for s, _ in run.checkpoints()] == [20, 30]  # keep-last-2 pruned step 10
    assert (tmp_path / "run" / "latest").read_text().strip() == "step-000030"
    state, rng = run.load_checkpoint(run.latest())
    assert state["step"] == 30 and torch.equal(state["w"], torch.full((3,), 30.0)) and rng is not None
    # a kill during a checkpoint leaves a .partial folder: ignored, removed at the next start, latest unchanged
    (tmp_path / "run" / ".step-000040.partial").mkdir()
    (tmp_path / "run" / ".step-000040.partial" / "state.pt").write_bytes(b"half")
    run2 = RunDir(tmp_path / "run", keep_last=2)
    assert run2.latest().name == "step-000030" and not list((tmp_path / "run").glob(".*partial"))
    # config differences on resume are reported by dotted key
    assert run2.write_config({"a": {"b": 1}, "c": 2}) == []
    assert run2.write_config({"a": {"b": 5}, "c": 2}) == ["a.b"]


def test_rundir_survives_sigkill_at_any_moment(tmp_path):
    """A writer killed with SIGKILL mid-way leaves `latest` naming a complete, loadable checkpoint."""
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {REPO!r})
        from tokenizer.training.rundir import RunDir
        run = RunDir(sys.argv[1], keep_last=2)
        step = 0
        while True:
            step += 1
            big = {{"w": torch.full((256, 1024), float(step))}}  # ~1 MB per file: kills land mid-write
            run.save_checkpoint(step, {{"step": step, **big}}, weights={{"ema.safetensors": (big, {{"name": "x"}})}})
            print(step, flush=True)
    """))
    root = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # at least one checkpoint exists
    time.sleep(random.uniform(0.2, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = RunDir(root, keep_last=2)
    latest = run.latest()
    state, _ = run.load_checkpoint(latest)
    assert latest.name == RunDir.checkpoint_name(state["step"])
    assert torch.equal(state["w"], torch.full((256, 1024), float(state["step"])))


# --- RNG ---------------------------------------------------------------------------------------------------------
def test_rng_capture_restore_round_trip():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng()
    a = (random.random(), np.random.randn(3).tolist(), torch.randn(3))
    restore_rng(state)
    b = (random.random(), np.random.randn(3).tolist(), torch.randn(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    seeds = {derive_seed(0, s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)


# --- data streams ------------------------------------------------------------------------------------------------
class _Items(Dataset):
    """Item i at epoch e is (i, e): enough to see the order and the epoch every item was read at."""

    def __init__(self, n):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def set_epoch(self, e):
        self.epoch = e

    def __getitem__(self, i):
        return torch.tensor([i, self.epoch])


def _take(stream, k):
    return [stream.next().tolist() for _ in range(k)]


def test_clip_stream_resume_and_sharding():
    ds = _Items(10)
    full = _take(ClipStream(ds, batch_size=3, seed=5), 8)  # 3 steps per epoch (drop last), ~3 epochs
    firsts = [i for b in full[:3] for i, e in b]
    assert len(set(firsts)) == 9 and firsts != sorted(firsts)  # one epoch: 9 distinct items, shuffled
    assert [i for b in full[3:6] for i, _ in b] != firsts  # a new order each epoch
    assert [b[0][1] for b in full] == [0, 0, 0, 1, 1, 1, 2, 2]  # set_epoch reached the items
    # resume from a saved position: the same batches as the uninterrupted stream
    s = ClipStream(_Items(10), batch_size=3, seed=5)
    _take(s, 4)
    resumed = ClipStream(_Items(10), batch_size=3, seed=5)
    resumed.load_state_dict(s.state_dict())
    assert _take(resumed, 4) == full[4:]
    # two processes of batch 2 see disjoint halves of the global batch of 4; workers do not change anything
    r0 = _take(ClipStream(_Items(10), batch_size=2, seed=5, rank=0, world_size=2, num_workers=2), 4)
    r1 = _take(ClipStream(_Items(10), batch_size=2, seed=5, rank=1, world_size=2), 4)
    one = _take(ClipStream(_Items(10), batch_size=4, seed=5), 4)
    assert [a + b for a, b in zip(r0, r1)] == one
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ClipStream(_Items(3), batch_size=2, seed=0, world_size=2)


def test_bucketed_stream_is_a_function_of_seed_and_step():
    streams = [ClipStream(_Items(8), 2, seed=1), ClipStream(_Items(8), 1, seed=2)]
    b = BucketedStream(streams, seed=3, weights=[1.0, 3.0])
    picks = [b.bucket_for_step(s) for s in range(400)]
    assert picks == [BucketedStream(streams, seed=3, weights=[1, 3]).bucket_for_step(s) for s in range(400)]
    assert 0.65 < sum(picks) / 400 < 0.85  # weight 3/4 for bucket 1
    for s in range(5):
        b.next(s)
    saved = b.state_dict()
    ref = [b.next(s)[1].tolist() for s in range(5, 10)]
    c = BucketedStream([ClipStream(_Items(8), 2, seed=1), ClipStream(_Items(8), 1, seed=2)], seed=3, weights=[1, 3])
    c.load_state_dict(saved)
    assert [c.next(s)[1].tolist() for s in range(5, 10)] == ref


# --- EMA ---------------------------------------------------------------------------------------------------------
def test_ema_follows_its_recursion_and_resumes_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    saved = None
    for step in range(1, 7):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 4))  # moves BatchNorm's running statistics (buffers are averaged too)
        ema.update(model, step)
        d = 0.0 if step == 1 else 0.9  # the first update copies
        for k, v in model.state_dict().items():
            ref[k] = v.clone() if not v.is_floating_point() else d * ref[k] + (1 - d) * v
        if step == 3:
            saved = ({k: v.clone() for k, v in ema.state_dict().items()}, {k: v.clone() for k, v in
                                                                           model.state_dict().items()})
    for k, v in ema.state_dict().items():
        assert torch.allclose(v.float(), ref[k].float(), atol=1e-6), k
    assert all(not p.requires_grad for p in ema.module.parameters())
    # a fresh EMA loaded from a saved state continues identically
    torch.manual_seed(0)
    model2 = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model2.load_state_dict(saved[1])
    ema2 = EMA(model2, decay=0.9)
    ema2.load_state_dict(saved[0])
    assert all(torch.equal(a, b) for a, b in zip(ema2.state_dict().values(), saved[0].values()))


# --- non-finite guard --------------------------------------------------------------------------------------------
def test_guard_skips_counts_and_stops():
    msgs = []
    g = NonFiniteGuard(3, log=msgs.append)
    assert g.check(1, {"loss": torch.tensor(1.0)})
    assert not g.check(2, {"loss": torch.tensor(float("nan"))})
    assert not g.check(3, {"loss": torch.tensor(1.0), "grad": float("inf")})
    assert g.check(4, {"loss": torch.tensor(2.0)}, final=False) and g.streak == 2  # a partial check keeps it
    assert g.check(4, {"grad": 1.0}) and g.streak == 0 and g.total == 2
    assert "step 2" in msgs[0] and "loss=nan" in msgs[0]
    g.check(5, {"loss": float("nan")})
    g.check(6, {"loss": float("nan")})
    with pytest.raises(NonFiniteLossError, match="3 consecutive.*step-000004"):
        g.check(7, {"loss": float("nan")}, last_good="step-000004")


# --- samples -----------------------------------------------------------------------------------------------------
def test_motion_panels_and_side_by_side_gif(tmp_path):
    from torchvision.utils import flow_to_image

    motion = torch.zeros(3, 1, 3, 3)  # flow x, flow y, scale
    motion[0, 0, 0, 0] = 8.0 * 2 / 3  # +x, 8 px (the fixed scale): torchvision's colour of a unit +x flow
    motion[2] = torch.linspace(0, 5, 9).view(1, 3, 3)
    flow, scale = [(p + 1) / 2 for p in motion_panels(motion)]
    unit = flow_to_image(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)).float()[0, :, 0, 0] / 255
    assert torch.allclose(flow[:, 0, 0, 0], unit, atol=3e-3)
    assert torch.allclose(flow[:, 0, 2, 2], torch.ones(3))  # no motion: white
    assert torch.allclose(scale[:, 0, 0, 0], torch.zeros(3)) and torch.allclose(scale[:, 0, 2, 2], torch.ones(3))
    clip = torch.rand(3, 5, 8, 8) * 2 - 1
    key = clip[:, :1]
    grid = side_by_side([clip, key, clip])
    assert grid.shape == (3, 5, 8, 3 * 8 + 2 * 2) and torch.equal(grid[:, 4, :, 10:18], key[:, 0])
    path = write_panels(tmp_path / "s.gif", [[clip, clip], [clip, key]])
    from PIL import Image

    im = Image.open(path)
    assert im.n_frames == 5 and im.size == (8 * 2 + 2, 8 * 2 + 2)
    labelled = Image.open(write_panels(tmp_path / "l.gif", [[clip, clip]], labels=[["a", "b"]])).convert("RGB")
    assert labelled.size == (8 * 2 + 2, 12 + 8)
    strip = np.asarray(labelled)[:12]
    assert strip.min() < 100 and (strip[:, :8] < 100).any() and (strip[:, 10:] < 100).any()  # text over each panel


# --- learning-rate schedule of the VAE trainer ------------------------------------------------------------------
@pytest.mark.parametrize("warmup,schedule,floor", [(5, "cosine", 0.1), (0, "cosine", 0.0), (3, "constant", 0.0)])
def test_vae_lr_schedule_matches_torch_schedulers(warmup, schedule, floor):
    """optim.warmup_steps + optim.schedule against torch's own LinearLR -> CosineAnnealingLR (SequentialLR): the
    same lr at every one of train.max_steps steps, 1/w at the first step, floor * lr at the last."""
    from tokenizer.training.vae_config import VAETrainConfig, lr_factor, validate
    from tokenizer.config import from_dict

    steps, lr = 20, 2e-3
    cfg = from_dict(VAETrainConfig, {"model": {"name": "plain-tiny"}, "train": {"run_dir": "x", "max_steps": steps},
                                     "optim": {"lr": lr, "warmup_steps": warmup, "schedule": schedule,
                                               "min_lr_ratio": floor}})
    validate(cfg)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    S = torch.optim.lr_scheduler
    after = (S.CosineAnnealingLR(opt, T_max=steps - warmup - 1, eta_min=floor * lr) if schedule == "cosine"
             else S.ConstantLR(opt, factor=1.0, total_iters=0))
    ref = S.SequentialLR(opt, [S.LinearLR(opt, 1 / warmup, 1.0, total_iters=warmup - 1), after], [warmup]) \
        if warmup else after
    expected = []
    for _ in range(steps):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    got = [lr * lr_factor(cfg, taken) for taken in range(steps)]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert got[0] == pytest.approx(lr / max(warmup, 1)) and got[-1] == pytest.approx(lr if schedule == "constant"
                                                                                      else floor * lr)
