"""Model and data helpers of video-VAE training: parameter groups, the decoder's last layer, start weights, buckets."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import ConfigError
from ..base import resolve_weights
from ..io import load_state_dict_file
from .rundir import RunDir
from .vae_config import VAETrainConfig


# --- model helpers ---------------------------------------------------------------------------------------------
def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Named groups of parameters that phases freeze: the model's own ``parameter_groups()`` (DeCo-VAE: motion,
    enc_k, enc_m, enc_r, decoder) or else its top-level children (encoder, decoder, ...)."""
    fn = getattr(model, "parameter_groups", None)
    groups = fn() if callable(fn) else dict(model.named_children())
    out = {}
    for name, g in groups.items():
        out[name] = list(g.parameters()) if isinstance(g, nn.Module) else list(g)
    return out


def find_last_layer(model: nn.Module, name: str | None = None) -> nn.Parameter:
    """The decoder's last weight (where the adaptive GAN weight compares gradients)."""
    params = dict(model.named_parameters())
    if name is not None:
        if name not in params:
            raise ConfigError(f"model.last_layer='{name}' is not a parameter of {type(model).__name__}")
        return params[name]
    fn = getattr(model, "last_layer", None)
    if callable(fn):
        return fn()
    candidates = [n for n in params if "decoder" in n and "conv_out" in n and n.endswith("weight")]
    if not candidates:
        raise ConfigError(f"cannot find the decoder's last layer of {type(model).__name__}: set model.last_layer "
                          "to a parameter name")
    return params[candidates[-1]]


def load_init_weights(path: str | Path, which: str = "model") -> dict[str, torch.Tensor]:
    """Weights to start a run from: a run folder (its latest checkpoint's raw model, or its EMA weights), a
    ``save_pretrained`` folder, or a weights file (safetensors / torch); folders are read as
    :func:`tokenizer.base.resolve_weights` reads them."""
    path = Path(path)
    if which == "model" and path.is_dir():
        run = RunDir(path, keep_last=None, is_main=False)  # read-only view of another run
        ckpt = run.latest()
        if ckpt is not None:
            return run.load_checkpoint(ckpt)[0]["model"]
    try:
        return load_state_dict_file(resolve_weights(path))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"model.init_from_run={path}: {err}") from None


class CachedItems(Dataset):
    """Decoded clips kept in memory by index (only for data configs without random draws)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.cache: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if i not in self.cache:
            self.cache[i] = self.dataset[i]
        return self.cache[i]


def bucket_data_configs(cfg: VAETrainConfig) -> list[tuple[Any, int]]:
    """(DataConfig, per-process batch size) of each bucket (one bucket: the data config itself)."""
    if not cfg.buckets:
        return [(cfg.data, cfg.train.batch_size)]
    out = []
    for b in cfg.buckets:
        changes = {k: getattr(b, k) for k in ("resolution", "num_frames", "frame_interval") if getattr(b, k)}
        out.append((dataclasses.replace(cfg.data, **changes), b.batch_size or cfg.train.batch_size))
    return out


def video_of(batch: Any) -> torch.Tensor:
    return batch["video"] if isinstance(batch, dict) else batch
