"""The configurable 3D VAE backbone shared by VC-VAE, the plain baseline and DeCo-VAE.

Layout = the Flux / LDM image VAE (diffusers ``AutoencoderKL`` names and sizes) inflated to 3D:

    encoder: conv_in -> down_blocks[i] = {resnets x layers_per_block, downsamplers.0 (spatial),
             time_downsampler (temporal, at ``temporal_down_levels``)} -> mid_block {resnet, attention, resnet}
             -> conv_norm_out -> SiLU -> conv_out (2 x latent channels: mean and log-variance)
    decoder: conv_in -> mid_block -> up_blocks[i] = {resnets x (layers_per_block + 1), time_upsampler,
             upsamplers.0 (spatial)} -> conv_norm_out -> SiLU -> conv_out

Every 3x3 conv of the image VAE becomes a 3x3x3 temporal conv of ``conv_type`` ('causal' | 'group_causal',
optionally TDC); the spatial samplers stay per-frame. Group sizes follow the temporal level: a group holds the
frames that end up in one latent frame (4 / 2 / 1 at 4x temporal compression, 8 / 4 / 2 / 1 at 8x).

``first_frame='in_sequence'`` (VC-VAE): clips of ``t_c * k`` frames, no frame is special.
``first_frame='separate'`` (causal VAEs, VC-VAE's Table 6 ablation): clips of ``1 + t_c * k`` frames; the first
frame is a group of its own and maps alone to the first latent frame.

Chunked inference: ``encode(video, chunk_size)`` / ``decode(z, chunk_size)`` run the clip chunk by chunk with a
:class:`~tokenizer.modules.FrameCache` and give the whole-clip result (to float32 rounding). Without gradients
(inference, latent caching, evaluation) the default is one latent frame at a time; ``chunk_size=0`` asks for the
whole clip at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..base import VideoVAE
from ..distributions import DiagonalGaussian
from ..modules.conv import BACK_PADS
from ..modules import (ConvSpec, FrameAttention, FrameCache, FrameGroupNorm, ResnetBlock3D, SpatialDownsample,
                       SpatialUpsample, TemporalDownsample, TemporalUpsample)

# Sizes of the plain baseline's encoder and decoder. DeCo-VAE builds its encoders and its decoder from the same
# numbers, so that "plain vs DeCo" compares like with like; whoever changes them says so.
# [64, 128, 160, 192]: three encoders + the shared decoder + the motion module = 61.62M, DeCo-VAE's 62M (Table 3).
PLAIN_SIZES = dict(block_out_channels=[64, 128, 160, 192], layers_per_block=2, norm_num_groups=32)
# Tiny sizes for tests and the demo (encode + decode of 17x64x64 well under a second on a CPU core).
TINY_SIZES = dict(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=2)


@dataclass
class BackboneConfig:
    """Encoder3D / Decoder3D hyper-parameters (diffusers ``AutoencoderKL`` names where they exist)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = 2
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    conv_type: str = "group_causal"  # 'causal' | 'group_causal'
    tdc: bool = True  # Temporal Dynamic Difference Convolution (VC-VAE eqs. 5-7) in every temporal conv
    first_frame: str = "in_sequence"  # 'in_sequence' | 'separate'
    group_end_pad: str = "zeros"  # group causal convs: 'zeros' behind each group (IV-VAE) | 'replicate' its last frame
    temporal_down_levels: list[int] = field(default_factory=lambda: [0, 1])  # encoder levels that halve time
    mid_attention: bool = True

    def validate(self) -> None:
        n = len(self.block_out_channels)
        if self.conv_type not in ("causal", "group_causal"):
            raise ValueError(f"conv_type must be 'causal' or 'group_causal', got '{self.conv_type}'")
        if self.first_frame not in ("in_sequence", "separate"):
            raise ValueError(f"first_frame must be 'in_sequence' or 'separate', got '{self.first_frame}'")
        if self.group_end_pad not in BACK_PADS:
            raise ValueError(f"group_end_pad must be one of {', '.join(BACK_PADS)}, got '{self.group_end_pad}'")
        if self.group_end_pad != "zeros" and self.conv_type != "group_causal":
            raise ValueError(f"group_end_pad='{self.group_end_pad}' needs conv_type='group_causal' (causal convs pad "
                             "nothing behind)")
        levels = list(self.temporal_down_levels)
        if len(set(levels)) != len(levels) or any(not 0 <= l < n - 1 for l in levels):  # levels with a spatial down
            raise ValueError(f"temporal_down_levels {levels} must be distinct levels in 0..{n - 2}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block width {c} is not divisible by norm_num_groups={self.norm_num_groups}")
        if self.layers_per_block < 1:
            raise ValueError("layers_per_block must be >= 1")

    @property
    def temporal_compression(self) -> int:
        return 2 ** len(self.temporal_down_levels)

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def group_size(self, level: int) -> int:
        """Frames per group at encoder level ``level`` (before that level's temporal downsample)."""
        halvings = sum(1 for l in self.temporal_down_levels if l < level)
        return self.temporal_compression // 2 ** halvings

    def conv_spec(self, level: int) -> ConvSpec:
        return ConvSpec(self.conv_type, self.tdc, self.group_size(level), self.first_frame == "separate",
                        self.group_end_pad)


class MidBlock3D(nn.Module):
    """resnet -> per-frame attention -> resnet at the lowest resolution."""

    def __init__(self, channels: int, conv: ConvSpec, cfg: BackboneConfig):
        super().__init__()
        groups, eps = cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock3D(channels, channels, conv, groups, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([FrameAttention(channels, groups, eps)]) if cfg.mid_attention else None

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c t h w) -> (b c t h w)."""
        x = self.resnets[0](x, cache)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, cache)


class DownBlock3D(nn.Module):
    """Resnets, then the per-frame spatial downsampler, then the temporal downsampler."""

    def __init__(self, in_ch: int, out_ch: int, level: int, cfg: BackboneConfig, spatial: bool, temporal: bool):
        super().__init__()
        conv, groups, eps = cfg.conv_spec(level), cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock3D(in_ch if j == 0 else out_ch, out_ch, conv, groups, eps)
                                      for j in range(cfg.layers_per_block)])
        self.downsamplers = nn.ModuleList([SpatialDownsample(out_ch)]) if spatial else None
        self.time_downsampler = TemporalDownsample(out_ch, cfg.tdc, causal_first=cfg.first_frame == "separate") \
            if temporal else None

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c_in t h w) -> (b c_out t' h' w')."""
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        if self.time_downsampler is not None:
            x = self.time_downsampler(x, cache)
        return x


class UpBlock3D(nn.Module):
    """Resnets, then the temporal upsampler, then the per-frame spatial upsampler."""

    def __init__(self, in_ch: int, out_ch: int, level: int, cfg: BackboneConfig, spatial: bool, temporal: bool):
        super().__init__()
        conv, groups, eps = cfg.conv_spec(level), cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock3D(in_ch if j == 0 else out_ch, out_ch, conv, groups, eps)
                                      for j in range(cfg.layers_per_block + 1)])
        self.time_upsampler = TemporalUpsample(out_ch, cfg.tdc, drop_first=cfg.first_frame == "separate") \
            if temporal else None
        self.upsamplers = nn.ModuleList([SpatialUpsample(out_ch)]) if spatial else None

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None, repeat: int | None = None) -> torch.Tensor:
        """x: (b c_in t h w) -> (b c_out t' h' w').

        ``repeat``: ``x`` is one frame standing for ``repeat`` identical ones (a static latent, see
        :meth:`Decoder3D.forward`); the resnets run on it once, then it is repeated for the temporal upsampler.
        """
        for resnet in self.resnets:
            x = resnet(x, None if repeat else cache)
        if repeat:
            x = x.expand(-1, -1, repeat, -1, -1)
        if self.time_upsampler is not None:
            x = self.time_upsampler(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


def _run(block: nn.Module, x: torch.Tensor, cache: FrameCache | None, ckpt: bool) -> torch.Tensor:
    # Activation checkpointing only for whole-clip training passes (a recomputation would update a cache twice).
    if ckpt and cache is None and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x, cache)


class Encoder3D(nn.Module):
    """Video (b c t h w) -> posterior moments (b 2*latent t' h' w')."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.gradient_checkpointing = False
        ch, n = cfg.block_out_channels, len(cfg.block_out_channels)
        self.conv_in = cfg.conv_spec(0).make(cfg.in_channels, ch[0])
        self.down_blocks = nn.ModuleList([
            DownBlock3D(ch[max(i - 1, 0)], ch[i], i, cfg, spatial=i < n - 1, temporal=i in cfg.temporal_down_levels)
            for i in range(n)])
        last = cfg.conv_spec(n)  # after every temporal downsample: one frame per group
        self.mid_block = MidBlock3D(ch[-1], last, cfg)
        self.conv_norm_out = FrameGroupNorm(cfg.norm_num_groups, ch[-1], eps=cfg.norm_eps)
        self.conv_out = last.make(ch[-1], 2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c t h w) in [-1, 1] -> moments (b 2*latent t/t_c h/s w/s) (in-sequence; 1 + (t-1)/t_c if separate)."""
        x = self.conv_in(x, cache)
        for block in self.down_blocks:
            x = _run(block, x, cache, self.gradient_checkpointing)
        x = _run(self.mid_block, x, cache, self.gradient_checkpointing)
        return self.conv_out(F.silu(self.conv_norm_out(x)), cache)


class Decoder3D(nn.Module):
    """Latent (b latent t' h' w') -> video (b c t h w)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.gradient_checkpointing = False
        rev, n = list(reversed(cfg.block_out_channels)), len(cfg.block_out_channels)
        self.conv_in = cfg.conv_spec(n).make(cfg.latent_channels, rev[0])
        self.mid_block = MidBlock3D(rev[0], cfg.conv_spec(n), cfg)
        # up block i works at encoder level n - 1 - i; it doubles time when the encoder halved it one level up
        self.up_blocks = nn.ModuleList([
            UpBlock3D(rev[max(i - 1, 0)], rev[i], n - 1 - i, cfg, spatial=i < n - 1,
                      temporal=(n - 2 - i) in cfg.temporal_down_levels)
            for i in range(n)])
        self.conv_norm_out = FrameGroupNorm(cfg.norm_num_groups, rev[-1], eps=cfg.norm_eps)
        self.conv_out = cfg.conv_spec(0).make(rev[-1], cfg.out_channels)

    def forward(self, z: torch.Tensor, cache: FrameCache | None = None, static: bool = False) -> torch.Tensor:
        """z: (b latent t' h' w') -> (b c t_c*t' s*h' s*w') (in-sequence; 1 + t_c (t' - 1) frames if separate).

        ``static=True`` promises that every latent frame of ``z`` (and of the chunks before it) is the same frame.
        Causal convs with per-frame norms and attention map identical frames to identical frames, so every layer
        up to the first temporal upsampler runs on one frame, which is then repeated; from the upsampler on
        (depth-to-time makes frames differ) the decoder runs as usual. Equal to the ordinary pass.
        """
        if not static:
            x = self.conv_in(z, cache)
            x = _run(self.mid_block, x, cache, self.gradient_checkpointing)
            for block in self.up_blocks:
                x = _run(block, x, cache, self.gradient_checkpointing)
            return self.conv_out(F.silu(self.conv_norm_out(x)), cache)
        t = z.shape[2]
        x = self.mid_block(self.conv_in(z[:, :, :1]))  # b c 1 h w
        for block in self.up_blocks:
            if t and block.time_upsampler is not None:  # the first temporal upsampler: from here frames differ
                x, t = block(x, cache, repeat=t), 0
            else:
                x = block(x, cache if not t else None)
        if t:  # no temporal upsampler at all
            x = x.expand(-1, -1, t, -1, -1)
        return self.conv_out(F.silu(self.conv_norm_out(x)), cache)


@dataclass
class Backbone3DVAEConfig(BackboneConfig):
    """A VAE made of one Encoder3D and one Decoder3D, plus the latent normalisation diffusion applies."""

    scaling_factor: float = 1.0  # diffusion trains on (z - shift_factor) * scaling_factor
    shift_factor: float = 0.0


def resolve_chunk(chunk_size: int | None, one_latent_frame: int) -> int | None:
    """The chunk length ``encode`` / ``decode`` use: ``None`` (default) = one latent frame at a time (``one_latent_frame``
    frames, or 1 latent frame) when gradients are off (inference: equal to the whole clip, bounded memory) and the
    whole clip when they are on (training); ``0`` = the whole clip always; anything else as given."""
    if chunk_size is None:
        return None if torch.is_grad_enabled() else one_latent_frame
    return None if chunk_size == 0 else chunk_size


def frame_chunks(num_frames: int, chunk: int, lone_first: bool) -> list[slice]:
    """Slices of a clip for chunked inference; with ``lone_first`` the first chunk also holds frame 0."""
    start = 1 if lone_first else 0
    edges = [0] + list(range(start + chunk, num_frames, chunk)) + [num_frames]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class Backbone3DVAE(VideoVAE):
    """A video VAE = Encoder3D + diagonal Gaussian posterior + Decoder3D, with the chunked (causal-cache) path."""

    config_class = Backbone3DVAEConfig

    def __init__(self, config: Backbone3DVAEConfig, name: str | None = None):
        super().__init__(config, name)
        config.validate()
        self.encoder = Encoder3D(config)
        self.decoder = Decoder3D(config)
        self.latent_channels = config.latent_channels
        s = config.spatial_compression
        self.compression = (config.temporal_compression, s, s)
        self.frame_rule = "in_sequence" if config.first_frame == "in_sequence" else "causal"

    def encode(self, video: torch.Tensor, chunk_size: int | None = None) -> DiagonalGaussian:
        """video (b c t h w) in [-1, 1] -> posterior over (b latent t' h/s w/s).

        ``chunk_size`` (frames, a multiple of the temporal compression): encode chunk by chunk with a causal
        cache; equal to the whole-clip result. Causal clips put frame 0 in the first chunk as well. Default: one
        latent frame at a time without gradients, the whole clip with them; 0: the whole clip (:func:`resolve_chunk`).
        """
        self.check_video(video)
        chunk_size = resolve_chunk(chunk_size, self.compression[0])
        if chunk_size is None:
            return DiagonalGaussian(self.encoder(video))
        t_c = self.compression[0]
        if chunk_size < t_c or chunk_size % t_c:
            raise ValueError(f"{self.name}: chunk_size must be a positive multiple of {t_c} frames, got {chunk_size}")
        cache = FrameCache()
        parts = [self.encoder(video[:, :, s], cache)
                 for s in frame_chunks(video.shape[2], chunk_size, self.frame_rule == "causal")]
        return DiagonalGaussian(torch.cat(parts, dim=2))  # b 2*latent t' h' w'

    def decode(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """z (b latent t' h' w') -> video (b c t h w); ``chunk_size`` in latent frames for chunked decoding
        (default: 1 without gradients, the whole latent with them; 0: the whole latent)."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"{self.name}: expected a latent (b, {self.latent_channels}, t, h, w), "
                             f"got {tuple(z.shape)}")
        chunk_size = resolve_chunk(chunk_size, 1)
        if chunk_size is None:
            return self.decoder(z)
        if chunk_size < 1:
            raise ValueError(f"{self.name}: chunk_size must be >= 1 latent frame, got {chunk_size}")
        cache = FrameCache()
        parts = [self.decoder(z[:, :, s], cache) for s in frame_chunks(z.shape[2], chunk_size, False)]
        return torch.cat(parts, dim=2)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

