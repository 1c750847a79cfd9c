"""What a training run must remember to continue exactly: RNG states and the data position.

Everything here is made of tensors and plain Python values so that a state file loads with
``torch.load(weights_only=True)`` (:func:`tokenizer.io.load_torch_file`): resuming never executes pickled code.
"""
from __future__ import annotations

import random

import numpy as np
import torch


# --- random number generators ---------------------------------------------------------------------------------
def capture_rng() -> dict:
    """The states of Python's, NumPy's and torch's global generators (CPU and every visible CUDA device)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        # numpy's key array is stored as a tensor: weights_only loading refuses numpy arrays
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, rank, ...), stable across processes and Python versions.

    Uses the SplitMix64 finaliser on each part so that neighbouring inputs give unrelated seeds.
    """
    mask = (1 << 64) - 1
    h = 0x9E3779B97F4A7C15
    for p in parts:
        z = (h ^ (int(p) & mask)) + 0x9E3779B97F4A7C15 & mask
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & mask
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & mask
        h = z ^ (z >> 31)
    return h >> 1

