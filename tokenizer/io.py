"""Artifact I/O shared by every stage: atomic writes, safetensors with config metadata, safe torch.load, hashing.

A file is never half-written: :func:`atomic_write` writes to a temporary file in the same folder, fsyncs it and
renames it over the target, so a kill at any moment leaves either the old file or the new one. A write that fails
(disk full, permission) raises an ``OSError`` that names the target; :func:`write_error_line` turns it into the one
line the entry points print.

Weights files are read through one gate: :func:`file_kind` tells what a file is by its bytes (safetensors, a torch
state dict as zip or legacy pickle, a TorchScript archive, text, other), and :func:`load_state_dict_file` /
:func:`load_torch_file` refuse the wrong kind with a :class:`WeightsFileError` that says what the file is and what
was expected. TorchScript (:func:`load_torchscript`) can run code from the file and is loaded only when trusted.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
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
    except BaseException as err:
        full = isinstance(err, Exception) and _disk_full(path.parent)  # before the temporary file frees its space
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_naming(err, path, full)
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
    except BaseException as err:
        full = isinstance(err, Exception) and _disk_full(path.parent)  # before the temporary file frees its space
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _raise_naming(err, path, full)
        raise


def _raise_naming(err: BaseException, path: Path, disk_full: bool) -> None:
    """Re-raise a failed write as an ``OSError`` naming the file it was for (ENOSPC from ``f.write`` carries no
    name). Library writers report I/O errors in their own types: safetensors' carries the errno ("os error 28"),
    torch.save's RuntimeError none, so a failure with under 1 MiB left in the folder is taken as ``ENOSPC``."""
    if isinstance(err, OSError):
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        return
    code = re.search(r"\(os error (\d+)\)", str(err))  # safetensors: "I/O error: File too large (os error 27)"
    if isinstance(err, Exception) and code:
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from err
    if disk_full and isinstance(err, RuntimeError):  # torch.save's failed write; the caller's own errors pass
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({type(err).__name__})", str(path)) from err


def _disk_full(folder: Path) -> bool:
    free = _free_bytes(folder)
    return free is not None and free < (1 << 20)


def _free_bytes(folder: Path) -> int | None:
    for p in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(p).free
    return None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def write_error_line(err: OSError, resume_hint: str = "nothing written before is lost; re-run the same command "
                                                        "to resume") -> str:
    """One line for a failed write: the file, the reason, the free space where it was going, what to do."""
    target = Path(err.filename) if err.filename else None
    where = target.parent if target is not None else Path.cwd()
    free = _free_bytes(where)
    space = f"{_human(free)} free in {where}" if free is not None else f"free space of {where} unknown"
    reason = err.strerror or str(err)
    return f"cannot write {target if target is not None else '(unnamed file)'}: {reason} ({space}); {resume_hint}"


# The names atomic_write / atomic_path give their temporary files: ".<target name>.<8 random chars>.tmp[.<suffix>]".
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def is_stale_temp(name: str) -> bool:
    """Whether ``name`` is one of this module's temporary files (left behind only by a killed writer)."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files killed writers left directly in ``folder`` (only this module's name pattern);
    call it only while no writer is at work there (a run folder's lock holder, before its first write)."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if is_stale_temp(p.name) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


# ------------------------------------------------------------------------------------------- one job per folder
LOCK_FILE = ".lock"
_HELD: dict[str, int] = {}  # folders this process holds: resolved path -> the locked file descriptor


class FolderLockedError(ValueError):
    """A run or cache folder held by another running job."""


def hold_folder(folder: str | Path, option: str = "another folder") -> None:
    """Take the exclusive ``fcntl.flock`` of ``folder/.lock`` for this process (re-entrant within it); the file
    records the holder's pid and host. The kernel drops the lock when the process ends, however it ends. Another
    live holder is a :class:`FolderLockedError` naming it (``option``: what the user can change instead)."""
    import fcntl
    import socket

    folder = Path(folder)
    key = str(folder.resolve())
    if key in _HELD:
        return
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by a live process
        holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise FolderLockedError(f"{folder} is in use by {holder}: one job per folder; wait for it to end (a re-run "
                                f"then resumes) or use {option}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    _HELD[key] = fd


def release_folder(folder: str | Path) -> None:
    import fcntl

    fd = _HELD.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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
    path = _expect(path, ("safetensors",), "a safetensors weights file")
    try:
        return load_file(str(path), device=device), read_weights_config(path)
    except Exception as err:  # safetensors_rust.SafetensorError: a truncated or corrupt file
        raise WeightsFileError(f"{path}: unreadable safetensors file ({err})") from None


def read_weights_config(path: str | Path) -> dict | None:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in meta else None


def torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` made atomic (for training state that is not a flat tensor dict)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ------------------------------------------------------------------------------------------ what a file is

class WeightsFileError(ValueError):
    """A weights file of the wrong kind (text, TorchScript where a state dict is expected, pickled code, ...)."""


FILE_KINDS = {"safetensors": "a safetensors file", "torch-zip": "a torch.save file (zip)",
              "torch-pickle": "a legacy torch.save file (pickle)", "torchscript": "a TorchScript archive",
              "text": "a text file", "empty": "an empty file", "other": "not a weights file (unknown format)"}


def file_kind(path: str | Path) -> str:
    """What a file is, by its first bytes (never by its name): one of :data:`FILE_KINDS`."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "empty"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"  # 8-byte little-endian header length, then the JSON header
    if head[:4] == b"PK\x03\x04":  # torch.save and torch.jit.save both write zip archives
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "other"
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return "torchscript"  # scripted code beside the tensors
        return "torch-zip" if any(n.endswith("/data.pkl") for n in names) else "other"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-pickle"  # pickle protocol 2+ header: the pre-1.6 torch.save format
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text"
        except UnicodeDecodeError as err:
            if err.start >= len(head) - 4:  # a multi-byte character cut by the 4 KiB window
                return "text"
    return "other"


def _expect(path: str | Path, kinds: tuple[str, ...], wanted: str, role: str = "") -> Path:
    """``path`` as a Path, if it exists and is one of ``kinds``; else a one-line error saying what it is."""
    path = Path(path)
    who = f"{role} {path}" if role else str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{who}: not a file" if path.exists() else f"weights file not found: {who}")
    kind = file_kind(path)
    if kind not in kinds:
        hint = {"torchscript": "; a TorchScript file is a program, not weights (only the i3d_torchscript FVD "
                               "detector is one, and loads only when trusted)",
                "text": f" (starts {_first_line(path)!r})"}.get(kind, "")
        raise WeightsFileError(f"{who} is {FILE_KINDS[kind]}{hint}; expected {wanted}")
    return path


def _first_line(path: Path) -> str:
    with open(path, "rb") as f:
        lines = f.read(60).decode("utf-8", "replace").splitlines()
    return lines[0] if lines else ""


def load_torch_file(path: str | Path, map_location: str | torch.device = "cpu", role: str = "") -> Any:
    """Load a ``.pt``/``.pth``/``.ckpt`` file without executing pickled code (``weights_only=True``).

    A file of another kind, or one that pickles more than tensors and plain containers, is a
    :class:`WeightsFileError` saying what it is (never torch's advice to load it unsafely)."""
    path = _expect(path, ("torch-zip", "torch-pickle"), "a torch.save file of tensors", role)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # the class or function the pickle would call
        detail = f" (it calls {found.group(1)})" if found else ""
        raise WeightsFileError(f"{role + ' ' if role else ''}{path} pickles objects besides tensors{detail}: refused, "
                               "since loading it could run code from the file; save the state dict alone "
                               "(torch.save(model.state_dict())) or as safetensors") from None
    except (RuntimeError, EOFError) as err:  # a truncated or corrupt archive
        raise WeightsFileError(f"{role + ' ' if role else ''}{path}: unreadable torch file "
                               f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def load_torchscript(path: str | Path, trusted: bool = False, published_sha256: str | None = None,
                     role: str = "") -> torch.jit.ScriptModule:
    """``torch.jit.load`` a TorchScript archive, which can run code from the file: only when ``trusted`` (the
    user opted in) or when the file's SHA-256 equals ``published_sha256``; otherwise a WeightsFileError."""
    path = _expect(path, ("torchscript",), "a TorchScript archive (torch.jit.save)", role)
    if not trusted and not (published_sha256 and sha256_file(path) == published_sha256):
        raise WeightsFileError(f"{role + ' ' if role else ''}{path} is a TorchScript archive, which can run code "
                               "when loaded: refused unless trusted (trust_torchscript=true in the FVD config, or "
                               "VIDTOK_TRUST_TORCHSCRIPT=1 in the environment of any command)")
    return torch.jit.load(str(path), map_location="cpu")


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


def load_state_dict_file(path: str | Path, role: str = "") -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file (loaded with ``weights_only=True``), unwrapped by
    :func:`unwrap_state_dict`: the one rule every loader of released weights in the toolkit follows. The file's
    kind is read from its bytes; text, TorchScript, pickled code or a file without tensors is a
    :class:`WeightsFileError` naming ``role`` (e.g. ``model.init_from``) and the file."""
    path = _expect(path, ("safetensors", "torch-zip", "torch-pickle"), "weights (safetensors or a torch.save "
                                                                        "state dict)", role)
    if file_kind(path) == "safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors_rust.SafetensorError: truncated or corrupt
            raise WeightsFileError(f"{role + ' ' if role else ''}{path}: unreadable safetensors file "
                                   f"({err})") from None
    state = unwrap_state_dict(load_torch_file(path, role=role))
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(f"{role + ' ' if role else ''}{path} is a torch file without a state dict of "
                               f"tensors (found {type(state).__name__})")
    return state


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
