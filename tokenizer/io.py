"""Artifact I/O shared by every stage: atomic writes, safetensors with config metadata, safe torch.load, hashing.

A file is never half-written: :func:`atomic_write` writes to a temporary file in the same folder, fsyncs it and
renames it over the target, so a kill at any moment leaves either the old file or the new one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, safe_open, save_file

CONFIG_METADATA_KEY = "config"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; a finished artifact gets the permissions an ordinary open() would give it.
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on clean exit fsync it and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, _FILE_MODE)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_write` for libraries that want a path to write to (safetensors, torch.save, PIL)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # the writer may have replaced the file we created
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_weights(tensors: dict[str, torch.Tensor], path: str | Path, config: dict | None = None,
                 metadata: dict[str, str] | None = None) -> None:
    """Save a state dict as safetensors, atomically, with ``config`` (JSON) in the file's metadata."""
    meta = dict(metadata or {})
    if config is not None:
        meta[CONFIG_METADATA_KEY] = json.dumps(config, default=str)
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=meta)


def load_weights(path: str | Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict | None]:
    """Load a safetensors file; return (state dict, config from its metadata or None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return load_file(str(path), device=device), read_weights_config(path)


def read_weights_config(path: str | Path) -> dict | None:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in meta else None


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` made atomic (for training state that is not a flat tensor dict)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``.pt``/``.pth``/``.ckpt`` file without executing pickled code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


# Where released checkpoints keep their weights, in order of preference: the EMA (what a release is sampled
# with), then the raw model, then a Lightning-style ``state_dict``.
STATE_DICT_NESTS = ("ema", "model", "state_dict")


def unwrap_state_dict(obj: Any) -> Any:
    """The weights inside a checkpoint object: descend into the first of :data:`STATE_DICT_NESTS` that holds a
    dict, as long as there is one (``{"state_dict": {"model": ...}}`` works too); a bare state dict is returned."""
    while isinstance(obj, dict):
        key = next((k for k in STATE_DICT_NESTS if isinstance(obj.get(k), dict)), None)
        if key is None:
            return obj
        obj = obj[key]
    return obj


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file (loaded with ``weights_only=True``), unwrapped by
    :func:`unwrap_state_dict`: the one rule every loader of released weights in the toolkit follows."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_weights(path)[0]
    return unwrap_state_dict(load_torch_file(path))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_dict_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict, in sorted key order.

    Independent of file format and tensor placement: the same weights always give the same fingerprint.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
