"""Data-parallel layouts of a Latte run: replicated (DDP through accelerate) or sharded (FSDP2).

Replicated (default): every process holds the whole model and optimiser; accelerate wraps the model in DDP, which
averages gradients in backward. Sharded (``train.fsdp=true``): parameters, gradients and AdamW state are split
over the processes with torch's ``fully_shard`` (one unit per Latte block, the embedders and final layer in the
root unit), for models whose training state does not fit one device; the EMA copy is sharded the same way, so its
update stays local. The launch is the same (``accelerate launch ...``); only the config switch differs.

Checkpoints hold full (unsharded) state dicts in both layouts, with the optimiser state keyed by parameter name
(``torch.distributed.checkpoint.state_dict``): a run can resume under the other layout or another process count.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered, on the CPU
LOAD = StateDictOptions(full_state_dict=True)  # every process passes the whole state; each keeps its shard


def shard_latte(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """Shard a Latte model in place over all processes (FSDP2): each block its own unit, then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on the CPU (collective for a sharded model: every process must call)."""
    if is_sharded(model):
        return get_model_state_dict(model, options=FULL)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    if is_sharded(model):
        set_model_state_dict(model, state, options=LOAD)
    else:
        model.load_state_dict(state, strict=True)


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimiser state keyed by parameter name, gathered (collective for a sharded model)."""
    return get_optimizer_state_dict(model, opt, options=FULL)


def load_full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, opt, state, options=LOAD)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, wrapped: nn.Module, accelerator, enabled: bool):
    """Reduce gradients over processes in this backward (``enabled``) or keep accumulating them locally."""
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)
        yield
    elif enabled:
        yield
    else:
        with accelerator.no_sync(wrapped):
            yield


def total_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s result as a plain tensor (a sharded model returns a DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
