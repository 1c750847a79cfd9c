"""Artifact I/O: atomic writes survive a kill at any moment; safetensors keep the config; torch files load safely."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tokenizer.io import (WeightsFileError, atomic_write, load_state_dict_file, load_torch_file, load_weights,
                          read_weights_config, save_weights, torch_save)

REPO = Path(__file__).resolve().parents[1]


def _child(code: str, *args: str) -> subprocess.Popen:
    """A Python process running ``code`` (with the repo importable); its stdout is a pipe we can wait on."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            env=env, text=True)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)  # no cleanup handler can run: the harshest interruption there is
    proc.wait(timeout=30)


def test_safetensors_roundtrip_keeps_tensors_and_config(tmp_path):
    tensors = {"w": torch.randn(4, 6).t(), "half": torch.randn(3).half(), "bf": torch.randn(2, 2).bfloat16(),
               "step": torch.tensor([7], dtype=torch.int64)}  # "w" is non-contiguous on purpose
    config = {"name": "deco", "channels": [16, 16, 16], "nested": {"lr": 1e-4, "flag": True}}
    save_weights(tensors, tmp_path / "m.safetensors", config=config, metadata={"note": "x"})
    loaded, cfg = load_weights(tmp_path / "m.safetensors")
    assert cfg == config == read_weights_config(tmp_path / "m.safetensors")
    assert loaded.keys() == tensors.keys()
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    assert torch.equal(load_state_dict_file(tmp_path / "m.safetensors")["w"], tensors["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left beside it


class _Payload:
    """Unpickling this runs code: ``open(marker, 'w')`` creates a file (a stand-in for anything worse)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_load_torch_file_refuses_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.ones(2), "evil": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(WeightsFileError, match=r"evil.pt pickles objects besides tensors \(it calls io.open\)"):
        load_torch_file(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # control: the payload is live when trusted blindly
    assert marker.exists()
    state = {"state_dict": {"a": torch.arange(3), "b": torch.zeros(2, 2)}, "step": 5}
    torch_save(state, tmp_path / "ok.pt")
    assert load_torch_file(tmp_path / "ok.pt")["step"] == 5
    assert torch.equal(load_state_dict_file(tmp_path / "ok.pt")["a"], torch.arange(3))


@pytest.mark.parametrize("layout", ["bare", "ema+model", "model", "state_dict>model", "lightning"])
def test_every_released_checkpoint_layout_unwraps_to_the_same_weights(tmp_path, layout):
    """One rule for every loader: the EMA wins over the raw model, nests are descended, a bare dict is kept.
    The Latte trainer's init_from (which adds its own error messages) must agree with it on every layout."""
    from diffusion.latte_run import load_init_state

    want = {"w": torch.arange(4.0), "b": torch.ones(2)}
    decoy = {k: v * 0 - 1 for k, v in want.items()}
    obj = {"bare": want, "ema+model": {"model": decoy, "ema": want, "step": 7}, "model": {"model": want, "opt": {}},
           "state_dict>model": {"state_dict": {"model": want}},
           "lightning": {"state_dict": want, "epoch": 3}}[layout]
    torch_save(obj, tmp_path / "ckpt.pt")
    for loader in (load_state_dict_file, load_init_state):
        got = loader(tmp_path / "ckpt.pt")
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), loader.__name__


def test_error_inside_atomic_write_keeps_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("new, half written")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


# Two writers, each killed half-way through the new file: the raw context manager, and save_weights with the
# safetensors serialiser stalled after writing half of its bytes to the path save_weights gave it.
_WRITERS = {
    "atomic_write": """
        import sys, time
        from tokenizer.io import atomic_write
        data = open(sys.argv[2], "rb").read()
        with atomic_write(sys.argv[1]) as f:
            f.write(data[: len(data) // 2])
            f.flush()
            print("half written", flush=True)
            time.sleep(60)
            f.write(data[len(data) // 2:])
        """,
    "save_weights": """
        import sys, time
        import tokenizer.io as tio
        from safetensors.torch import load_file

        def stalled_save_file(tensors, path, metadata=None):
            data = open(sys.argv[2], "rb").read()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                print("half written", flush=True)
                time.sleep(60)
                f.write(data[len(data) // 2:])

        tio.save_file = stalled_save_file
        tio.save_weights(load_file(sys.argv[2]), sys.argv[1], config={"version": 2})
        """,
}


@pytest.mark.parametrize("writer", sorted(_WRITERS))
def test_kill_mid_write_leaves_previous_file(tmp_path, writer):
    """A writer killed with SIGKILL half-way through writing the new file: the previous file loads, unchanged."""
    target = tmp_path / "model.safetensors"
    old = {"w": torch.randn(64, 64)}
    save_weights(old, target, config={"version": 1})
    new = tmp_path / "staging.safetensors"
    save_weights({"w": torch.randn(64, 64)}, new, config={"version": 2})
    proc = _child(_WRITERS[writer], str(target), str(new))
    assert proc.stdout.readline().strip() == "half written"
    _kill(proc)
    tensors, cfg = load_weights(target)
    assert cfg == {"version": 1} and torch.equal(tensors["w"], old["w"])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.safetensors.")]
    assert len(leftovers) == 1  # the killed writer's temporary file: hidden, never read, safe to delete
