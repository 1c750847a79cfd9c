"""Initialise a 3D video VAE from a 2D image VAE (VC-VAE sec. 3.2, "keyframe reconstruction").

Two sources are read, both from a local path (nothing is downloaded):

- a diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, or a model
  repository with it in ``vae/``), e.g. the ``vae`` folder of black-forest-labs/FLUX.1-dev or stabilityai's SD3.5;
- a Flux ``ae.safetensors`` file (original LDM key names: ``encoder.down.N.block.M.conv1``,
  ``encoder.mid.attn_1.q`` as 1x1 convs, ...), as published with black-forest-labs/FLUX.1-schnell and FLUX.1-dev.

Key mapping: LDM names are converted to diffusers names (the same map as diffusers'
``convert_ldm_vae_checkpoint``); diffusers names are the 3D model's own, so the rest is identity except:

- every 3x3 kernel goes to the anchor tap of its temporal kernel, the other taps zero: tail initialisation for
  causal convs (the current frame), centre initialisation for group causal convs (Chen et al. 2024;
  Carreira & Zisserman 2017), the current tap for groups of one frame (``GroupOfOneConv3d``, k_t = 2: the centre of
  the k_t = 3 group kernel it replaces); with TDC this anchor tap is ``W_a`` and the transformed kernel equals it;
- the temporal samplers, which the image VAE lacks, start as keyframe selection / broadcast (eqs. 3, 4);
- a wider latent (VC-VAE 8x8x8, 32 channels) takes the image VAE's channels first and zeros for the rest, in
  ``encoder.conv_out`` (mean and log-variance halves separately) and ``decoder.conv_in``.

A key of the 3D model that the image VAE lacks, or one the image VAE has that the model cannot use, or a shape that
does not fit, is an error that lists them all.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .io import load_state_dict_file
from .modules import CausalConv3d, FrameConv3d, GroupCausalConv3d, TemporalDownsample, TemporalUpsample

FLUX_AE_SOURCE = "ae.safetensors of https://huggingface.co/black-forest-labs/FLUX.1-schnell (or FLUX.1-dev)"
DIFFUSERS_VAE_SOURCE = "the 'vae' folder of https://huggingface.co/black-forest-labs/FLUX.1-dev"
# Flux VAE latent normalisation (its diffusers config): diffusion uses (z - shift) * scale
FLUX_SCALING_FACTOR, FLUX_SHIFT_FACTOR = 0.3611, 0.1159
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class ImageVAEError(ValueError):
    """An image VAE that cannot initialise the requested video VAE (missing file, keys or shapes)."""


@dataclass
class ImageVAE:
    """An image VAE's weights in diffusers ``AutoencoderKL`` names, plus its latent normalisation if known."""

    state: dict[str, torch.Tensor]
    scaling_factor: float | None
    shift_factor: float | None
    source: str


def load_image_vae(path: str | Path) -> ImageVAE:
    """Read a diffusers AutoencoderKL folder or a Flux/LDM ``ae.safetensors`` file from ``path``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image VAE not found at {path}. Expected a Flux {FLUX_AE_SOURCE}, or a diffusers "
                                f"AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors), e.g. "
                                f"{DIFFUSERS_VAE_SOURCE}; download it and pass its local path")
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        cfg_file = folder / "config.json"
        weights = next((folder / f for f in _WEIGHT_FILES if (folder / f).is_file()), None)
        if not cfg_file.is_file() or weights is None:
            raise FileNotFoundError(f"{folder} is not a diffusers AutoencoderKL folder: need config.json and one of "
                                    f"{', '.join(_WEIGHT_FILES)} ({DIFFUSERS_VAE_SOURCE})")
        config = json.loads(cfg_file.read_text())
        state = _rename_old_attention(load_state_dict_file(weights, role="model.init_from"))
        return ImageVAE(state, config.get("scaling_factor"), config.get("shift_factor"), str(folder))
    state = load_state_dict_file(path, role="model.init_from")
    if any(k.startswith("encoder.down.") for k in state):  # original LDM / Flux names
        is_flux = not any(k.startswith("quant_conv") for k in state)
        return ImageVAE(ldm_to_diffusers(state), FLUX_SCALING_FACTOR if is_flux else None,
                        FLUX_SHIFT_FACTOR if is_flux else None, str(path))
    return ImageVAE(_rename_old_attention(state), None, None, str(path))


def ldm_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM / Flux VAE names -> diffusers ``AutoencoderKL`` names (attention 1x1 convs become Linear weights)."""
    levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    out = {}
    for key, value in state.items():
        new = key
        new = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", new)
        new = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", new)
        # LDM counts decoder levels from the top resolution, diffusers from the bottom
        new = re.sub(r"^decoder\.up\.(\d+)\.",
                     lambda m: f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.", new)
        new = new.replace(".block.", ".resnets.").replace(".upsample.", ".upsamplers.0.")
        new = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m.group(1)) - 1}.", new)
        new = new.replace("nin_shortcut", "conv_shortcut").replace(".norm_out.", ".conv_norm_out.")
        if ".mid.attn_1." in new:
            new = new.replace(".mid.attn_1.", ".mid_block.attentions.0.")
            new = re.sub(r"\.norm\.(weight|bias)$", r".group_norm.\1", new)
            new = re.sub(r"\.(q|k|v)\.(weight|bias)$", r".to_\1.\2", new)
            new = re.sub(r"\.proj_out\.(weight|bias)$", r".to_out.0.\1", new)
            if value.ndim == 4:  # 1x1 conv -> Linear
                value = value[:, :, 0, 0]
        out[new] = value
    return out


def _rename_old_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # diffusers checkpoints saved before its attention refactor name the projections query/key/value/proj_attn
    names = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
    return {re.sub(r"\.attentions\.0\.(query|key|value|proj_attn)\.",
                   lambda m: f".attentions.0.{names[m.group(1)]}.", k): v for k, v in state.items()}


def _is_temporal_layer(name: str) -> bool:
    return ".time_downsampler." in name or ".time_upsampler." in name


@torch.no_grad()
def inflate_image_vae(model: nn.Module, image: ImageVAE) -> None:
    """Copy ``image`` into ``model`` (an Encoder3D/Decoder3D VAE) as described in the module docstring."""
    if any(k.startswith(("quant_conv.", "post_quant_conv.")) for k in image.state):
        raise ImageVAEError(f"{image.source} has quant_conv / post_quant_conv layers, which this video VAE does not "
                            "have; use an image VAE without them (Flux, SD3.5)")
    targets = {n: p for n, p in model.state_dict().items() if not _is_temporal_layer(n)}
    missing = sorted(n for n in targets if n not in image.state)
    unexpected = sorted(n for n in image.state if n not in targets)
    mismatched, new_state = [], {}
    for name, target in targets.items():
        if name in missing:
            continue
        source = image.state[name].to(target.dtype)
        module = model.get_submodule(name.rsplit(".", 1)[0])
        value = _inflate(name, module, source, target)
        if value is None:
            mismatched.append(f"{name}: image {tuple(source.shape)} vs video {tuple(target.shape)}")
        else:
            new_state[name] = value
    if missing or unexpected or mismatched:
        parts = [f"cannot initialise {type(model).__name__} from the image VAE {image.source}:"]
        for title, items in (("missing in the image VAE", missing), ("not used by the video VAE", unexpected),
                             ("shape mismatch", mismatched)):
            if items:
                parts.append(f"  {title} ({len(items)}): " + ", ".join(items))
        raise ImageVAEError("\n".join(parts))
    model.load_state_dict(new_state, strict=False)
    for module in model.modules():  # VC-VAE eqs. 3 and 4
        if isinstance(module, TemporalDownsample):
            module.init_keyframe_selection()
        elif isinstance(module, TemporalUpsample):
            module.init_broadcast()


def _inflate(name: str, module: nn.Module, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """The video-VAE tensor for ``name`` from the image tensor ``source``; None if they cannot correspond."""
    if source.shape == target.shape:
        return source.clone()
    is_conv_weight = name.endswith(".weight") and isinstance(module, (CausalConv3d, GroupCausalConv3d, FrameConv3d))
    if is_conv_weight and source.ndim == 4 and target.ndim == 5:
        source = source.unsqueeze(2)  # c_out c_in 1 k k
    wider = _widen_latent(name, source, target)
    if wider is not None:
        source = wider
    if is_conv_weight and source.ndim == 5 and source.shape[2] == 1 and target.shape[2] >= 1 \
            and source.shape[:2] + source.shape[3:] == target.shape[:2] + target.shape[3:]:
        # tail (causal) / centre (group causal) initialisation: the 2D kernel on the anchor tap, zeros elsewhere
        inflated = torch.zeros_like(target)
        inflated[:, :, module.anchor] = source[:, :, 0]
        return inflated
    return source if source.shape == target.shape else None


def _widen_latent(name: str, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """A wider latent (e.g. 16 -> 32 channels): image channels first, the new ones zero (VC-VAE sec. 4.1)."""
    if name.startswith("encoder.conv_out.") and source.shape[0] < target.shape[0] and source.shape[0] % 2 == 0:
        # rows are [mean | log-variance]; widen each half separately
        c_img, c_vid = source.shape[0] // 2, target.shape[0] // 2
        out = source.new_zeros((target.shape[0],) + source.shape[1:])
        out[:c_img], out[c_vid:c_vid + c_img] = source[:c_img], source[c_img:]
        return out
    if name == "decoder.conv_in.weight" and source.shape[1] < target.shape[1]:
        out = source.new_zeros((source.shape[0], target.shape[1]) + source.shape[2:])
        out[:, :source.shape[1]] = source
        return out
    return None
