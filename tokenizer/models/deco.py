"""DeCo-VAE: a clip decoupled into keyframe, motion and residual, three dedicated encoders, one shared 3D decoder.

Paper: Yin et al., "DeCo-VAE: Learning Compact Latents for Video Reconstruction via Decoupled Representation".

    decoupling (eqs. 4-7)    x_0 = keyframe;  m_t = M(concat(x_t, x_0));  x_hat_t^m = W(x_0, m_t)
                             r_t = x_t - x_hat_t^m;  X_k = T (x) x_0,  X_m = {m_t},  X_r = {r_t}
    encoders (eqs. 1-2)      mu_i, log sigma_i^2 = E_i(X_i),  z_i = mu_i + sigma_i eps,  i in {k, m, r}
    shared decoder (eq. 3)   X_hat_i = D(z_i)
    recoupling (eq. 8)       x_hat_0 = mean_t X_hat_k;  x_hat_t = W(x_hat_0, m_hat_t) + r_hat_t

The latent handed to diffusion is the channel concatenation ``[z_k | z_m | z_r]``; ``decode(z)`` splits, decodes
and recouples, so downstream code sees an ordinary causal 4x8x8 VAE (17 frames <-> 5 latent frames).

Parts (the parameter groups the decoupled adaptation freezes, :meth:`DeCoVAE.parameter_groups`):
``motion`` (the motion module M, :mod:`tokenizer.motion`), ``enc_k``, ``enc_m``, ``enc_r`` (dedicated encoders) and
``decoder`` (the one shared decoder). Each encoder and the decoder is the shared causal 3D backbone
(:mod:`tokenizer.models.backbone`) at the plain baseline's sizes, so that ``plain`` vs ``deco`` compares like with like.

Latent widths. ``deco``: 16 channels per component (48 in all, the paper). ``deco-compact``: 16 in all, split
keyframe 6 / motion 5 / residual 5 (the keyframe carries the appearance of the whole clip, so it gets the odd
channel). The shared decoder has one input width, the widest component; narrower latents are zero-padded up to it
(the padding channels carry nothing, and the decoder's weights on them only ever see zeros for that component).

Ablations (config ``decoupling``): ``concat`` -- X_k, X_m, X_r concatenated along channels into one encoder whose
decoder returns the nine channels (Table 4, "Concat"); ``none`` -- no decoupling, one encoder and one decoder on
RGB, i.e. exactly the ``plain`` baseline (Table 5, row 1).

Groups of pictures (beyond the paper, its sec. 6 limitation): ``gop`` = frames per keyframe. Group 0 holds frames
``0 .. gop`` (the lone first frame of the causal layout plus ``gop`` frames), group ``j >= 1`` frames
``1 + j gop .. (j + 1) gop``; a group's keyframe is its first frame. Groups end on latent-frame boundaries (latent
frame 0 <-> frame 0, latent frame ``i`` <-> frames ``4i-3 .. 4i``), and ``gop=16`` on 17-frame clips is the paper.
With ``gop`` set, ``encode`` and ``decode`` run group by group through the causal cache (bounded memory) and equal
the whole-clip result. ``gop=None`` (default) = one keyframe for the whole clip (the paper).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..base import VideoVAE
from ..config import ConfigError
from ..distributions import DiagonalGaussian
from ..inflate import inflate_image_vae, load_image_vae
from ..modules import FrameCache
from ..motion import MOTION_KINDS, MotionConfig, MotionModule, default_weights_path
from ..registry import register_vae
from .backbone import PLAIN_SIZES, TINY_SIZES, BackboneConfig, Decoder3D, Encoder3D, frame_chunks, resolve_chunk

DECOUPLINGS = ("dedicated", "concat", "none")
COMPONENTS = ("keyframe", "motion", "residual")


@dataclass
class DeCoVAEConfig:
    """DeCo-VAE hyper-parameters: the backbone of each encoder / the decoder, the decoupling, the motion module."""

    # backbone of every encoder and of the shared decoder (BackboneConfig names; causal, no TDC, first frame apart)
    block_out_channels: list[int] = field(default_factory=lambda: list(PLAIN_SIZES["block_out_channels"]))
    layers_per_block: int = PLAIN_SIZES["layers_per_block"]
    norm_num_groups: int = PLAIN_SIZES["norm_num_groups"]
    norm_eps: float = 1e-6
    conv_type: str = "causal"
    tdc: bool = False
    temporal_down_levels: list[int] = field(default_factory=lambda: [0, 1])
    mid_attention: bool = True
    # decoupling
    decoupling: str = "dedicated"  # dedicated (paper) | concat (Table 4) | none (plain, Table 5 row 1)
    component_channels: list[int] = field(default_factory=lambda: [16, 16, 16])  # latent widths of k, m, r
    gop: Optional[int] = None  # frames per keyframe (a multiple of 4); None = one keyframe per clip (paper)
    # motion module M (tokenizer.motion): one coarse-to-fine architecture for every preset
    motion: str = "learned"  # learned (coarse-to-fine, pre-trained weights shipped) | classical (OpenCV DIS, scale 0)
    motion_max_flow: float = 32.0  # flow bound in pixels
    motion_classical: str = "dis"  # motion=classical: OpenCV dis | farneback
    motion_sigma0: float = 1.5
    motion_num_levels: int = 5
    # pre-trained motion weights loaded at construction (then cleared, see DeCoVAE): "default" = the toolkit's own
    # (tokenizer/weights/motion.safetensors), a path, or null = random init
    motion_ckpt: Optional[str] = "default"
    motion_ckpt_sha256: Optional[str] = None  # provenance: SHA-256 of the motion checkpoint that was loaded
    # latent normalisation diffusion applies: (z - shift_factor) * scaling_factor
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    def validate(self) -> None:
        if self.decoupling not in DECOUPLINGS:
            raise ConfigError(f"decoupling must be one of {', '.join(DECOUPLINGS)}, got '{self.decoupling}'")
        if self.motion not in MOTION_KINDS:
            raise ConfigError(f"motion must be one of {', '.join(MOTION_KINDS)}, got '{self.motion}'")
        if not self.component_channels or min(self.component_channels) < 1:
            raise ConfigError(f"component_channels must be positive widths, got {self.component_channels}")
        if self.decoupling == "dedicated" and len(self.component_channels) != 3:
            raise ConfigError(f"decoupling=dedicated needs 3 component_channels (keyframe, motion, residual), got "
                              f"{self.component_channels}")
        t_c = self.backbone(3, 1).temporal_compression
        if self.gop is not None:
            if self.decoupling == "none":
                raise ConfigError("gop needs a decoupled model (decoupling=dedicated or concat)")
            if self.gop < t_c or self.gop % t_c:
                raise ConfigError(f"gop must be a positive multiple of the temporal compression {t_c}, got {self.gop}")
        if self.motion_ckpt and self.motion_ckpt != "default" and self.motion != "learned":
            raise ConfigError(f"motion_ckpt is for the learned motion module, but motion='{self.motion}'")

    @property
    def latent_channels(self) -> int:
        return sum(self.component_channels)

    def backbone(self, in_channels: int, latent_channels: int, out_channels: int = 3) -> BackboneConfig:
        return BackboneConfig(in_channels=in_channels, out_channels=out_channels, latent_channels=latent_channels,
                              block_out_channels=list(self.block_out_channels),
                              layers_per_block=self.layers_per_block, norm_num_groups=self.norm_num_groups,
                              norm_eps=self.norm_eps, conv_type=self.conv_type, tdc=self.tdc, first_frame="separate",
                              temporal_down_levels=list(self.temporal_down_levels), mid_attention=self.mid_attention)

    def motion_config(self) -> MotionConfig:
        return MotionConfig(kind=self.motion, max_flow=self.motion_max_flow, classical=self.motion_classical,
                            sigma0=self.motion_sigma0,
                            num_levels=self.motion_num_levels)


class DeCoVAE(VideoVAE):
    """DeCo-VAE (b 3 1+4k h w) in [-1, 1] <-> latent [z_k | z_m | z_r] (b sum(component_channels) 1+k h/8 w/8).

    Attributes (parameter groups): ``motion`` (absent for decoupling=none), ``enc_k``, ``enc_m``, ``enc_r``
    (decoupling=dedicated) or ``encoder`` (concat, none), and ``decoder``.

    ``motion_ckpt``: ``"default"`` (every preset) loads the toolkit's pre-trained motion weights
    (``tokenizer/weights/motion.safetensors``), a path loads that file, null keeps a random motion module. They are
    loaded at construction (a clear error names a missing file); ``self.config`` then records the file's SHA-256 in
    ``motion_ckpt_sha256`` and drops the path, because from then on the motion weights travel inside this model's
    own weights (a saved model must not need the original checkpoint file to load).
    """

    config_class = DeCoVAEConfig
    frame_rule = "causal"

    def __init__(self, config: DeCoVAEConfig, name: str | None = None):
        super().__init__(config, name)
        config.validate()
        cc, mode = list(config.component_channels), config.decoupling
        self.latent_channels = config.latent_channels
        backbone = config.backbone(3, max(cc))
        s = backbone.spatial_compression
        self.compression = (backbone.temporal_compression, s, s)
        if mode != "none":
            self.motion = MotionModule(config.motion_config())
        if mode == "dedicated":
            self.enc_k = Encoder3D(config.backbone(3, cc[0]))
            self.enc_m = Encoder3D(config.backbone(3, cc[1]))
            self.enc_r = Encoder3D(config.backbone(3, cc[2]))
            self.decoder = Decoder3D(config.backbone(3, max(cc)))  # one decoder, fed each latent in turn (eq. 3)
        else:  # concat: one encoder over [X_k | X_m | X_r] (9 channels) and back; none: RGB in, RGB out
            width = 9 if mode == "concat" else 3
            self.encoder = Encoder3D(config.backbone(width, self.latent_channels, width))
            self.decoder = Decoder3D(config.backbone(width, self.latent_channels, width))
        ckpt = config.motion_ckpt
        if ckpt == "default":  # the shipped weights, for the learned module only (classical has none)
            ckpt = str(default_weights_path()) if mode != "none" and config.motion == "learned" else None
        if ckpt and not _on_meta(self):
            sha = self.motion.load_pretrained(ckpt)
            self.config = dataclasses.replace(config, motion_ckpt=None, motion_ckpt_sha256=sha)
        elif config.motion_ckpt == "default":
            self.config = dataclasses.replace(config, motion_ckpt=None)

    # ------------------------------------------------------------------------------------------ parameter groups
    def parameter_groups(self) -> dict[str, nn.Module]:
        """The parts the decoupled adaptation freezes or trains (paper sec. 3.3), by name."""
        if self.config.decoupling == "dedicated":
            return {"motion": self.motion, "enc_k": self.enc_k, "enc_m": self.enc_m, "enc_r": self.enc_r,
                    "decoder": self.decoder}
        groups = {"encoder": self.encoder, "decoder": self.decoder}
        return {"motion": self.motion, **groups} if self.config.decoupling == "concat" else groups

    def init_from_image_vae(self, path: str) -> "DeCoVAE":
        """Start every encoder and the shared decoder from the image VAE at ``path`` (beyond the paper, which is
        silent on how they are initialised; the toolkit's demo does it so that DeCo-VAE and VC-VAE start alike).

        Each dedicated encoder (``concat``: the one encoder, whose 9-channel input does not fit an RGB image VAE, is
        refused) gets the image encoder, the shared decoder the image decoder, inflated exactly as for VC-VAE
        (:func:`tokenizer.inflate.inflate_image_vae`: 2D kernels on the causal tap, keyframe-selection / broadcast
        temporal samplers). An image latent narrower than a component's takes that component's first channels, the
        rest start at zero (e.g. a 5-channel image VAE for ``deco-compact``: keyframe 6, motion 5, residual 5). At
        initialisation the keyframe stream therefore reconstructs x_0 as the image VAE does; the motion and residual
        streams start from image features and adapt. The motion module keeps its own pre-trained weights, and the
        latent normalisation stays DeCo's own (scale 1, shift 0; unlike VC-VAE it does not adopt the image VAE's): the
        motion and residual latents are not image latents, and diffusion normalises with per-channel statistics.
        """
        if self.config.decoupling != "dedicated":
            raise ConfigError(f"{self.name}: init_from needs decoupling=dedicated (an RGB encoder per component); "
                              f"decoupling='{self.config.decoupling}' has none")
        image = load_image_vae(path)
        for encoder in (self.enc_k, self.enc_m, self.enc_r):
            pair = nn.Module()  # the names an image VAE's state dict uses: encoder.*, decoder.*
            pair.encoder, pair.decoder = encoder, self.decoder
            inflate_image_vae(pair, image)
        return self

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        for m in self.modules():
            if isinstance(m, (Encoder3D, Decoder3D)):
                m.gradient_checkpointing = enabled

    # --------------------------------------------------------------------------------------- groups of pictures
    def encodes_keyframe_once(self, num_frames: int) -> bool:
        """Whether E_k runs once on x_0 and is broadcast: one keyframe for the whole clip and causal convs (a group
        causal conv pads each group's end with zeros, so a static input does not give static latent frames)."""
        return self.keyframe_index(num_frames - 1) == 0 and self.config.conv_type == "causal"

    def keyframe_index(self, t: int) -> int:
        """Index of the keyframe of frame ``t``: 0 for the whole clip, or the first frame of its group."""
        gop = self.config.gop
        group = 0 if gop is None or t == 0 else (t - 1) // gop  # group 0 = frames 0 .. gop, then gop frames each
        return 0 if group == 0 else 1 + group * gop

    def _segments(self, start: int, length: int) -> list[tuple[int, slice]]:
        """Frames ``start .. start+length`` cut by group: [(keyframe index, slice relative to start)]."""
        out, a = [], 0
        while a < length:
            key = self.keyframe_index(start + a)
            b = a + 1
            while b < length and self.keyframe_index(start + b) == key:
                b += 1
            out.append((key, slice(a, b)))
            a = b
        return out

    # -------------------------------------------------------------------------------------- decoupling, eqs. 4-7
    def decouple(self, video: torch.Tensor, start: int = 0,
                 keyframes: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """video (b 3 t h w), frames ``start ..`` of a clip -> X_k, X_m, X_r and x_hat^m, each (b 3 t h w).

        ``keyframes`` {index: (b 3 h w)} supplies keyframes that lie before ``start`` (chunked encoding) and
        receives the ones found here.
        """
        keyframes = {} if keyframes is None else keyframes
        parts = {k: [] for k in ("keyframe", "motion", "residual", "prediction")}
        for key, sl in self._segments(start, video.shape[2]):
            if key >= start:
                keyframes[key] = video[:, :, key - start]
            x_0, frames = keyframes[key], video[:, :, sl]  # (b 3 h w), (b 3 n h w)
            m, pred = self.motion(frames, x_0)  # eq. 4 for every t (x_0 itself included), eq. 5
            parts["keyframe"].append(x_0.unsqueeze(2).expand_as(frames))  # eq. 7: X_k = T (x) x_0
            parts["motion"].append(m)
            parts["residual"].append(frames - pred)  # eq. 6
            parts["prediction"].append(pred)
        return {k: torch.cat(v, dim=2) for k, v in parts.items()}

    def recouple(self, keyframe_hat: dict[int, torch.Tensor], motion_hat: torch.Tensor, residual_hat: torch.Tensor,
                 start: int = 0) -> torch.Tensor:
        """Eq. 8 for frames ``start ..``: x_hat_t = W(x_hat_0, m_hat_t) + r_hat_t; keyframe_hat {index: (b 3 h w)}."""
        out = []
        for key, sl in self._segments(start, motion_hat.shape[2]):
            out.append(self.motion.warp(keyframe_hat[key], motion_hat[:, :, sl]) + residual_hat[:, :, sl])
        return torch.cat(out, dim=2)

    def _keyframe_sums(self, keyframe_video: torch.Tensor, start: int, sums: dict, counts: dict) -> None:
        """Accumulate the decoded keyframe video per group (x_hat_0 = its time average, eq. 8)."""
        for key, sl in self._segments(start, keyframe_video.shape[2]):
            part = keyframe_video[:, :, sl].sum(dim=2)
            sums[key] = part if key not in sums else sums[key] + part
            counts[key] = counts.get(key, 0) + (sl.stop - sl.start)

    def _keyframe_means(self, keyframe_video: torch.Tensor) -> dict[int, torch.Tensor]:
        """x_hat_0 of every group of a whole decoded keyframe video (b 3 t h w): {keyframe index: (b 3 h w)}."""
        sums, counts = {}, {}
        self._keyframe_sums(keyframe_video, 0, sums, counts)
        return {k: sums[k] / counts[k] for k in sums}

    # ------------------------------------------------------------------------------------- encoders, eqs. 1-2
    def _encode_parts(self, video: torch.Tensor, cache: FrameCache | None, start: int,
                      keyframes: dict, one_key: bool, memo: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``start ..`` -> (mean, logvar) of [z_k | z_m | z_r], each (b latent t' h' w')."""
        if self.config.decoupling == "none":
            return _split_moments(self.encoder(video, cache))
        return self._encode_components(self.decouple(video, start, keyframes), cache, one_key, memo)

    def _encode_components(self, comps: dict[str, torch.Tensor], cache: FrameCache | None,
                           one_keyframe: bool = False, memo: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 1 on X_k, X_m, X_r -> (mean, logvar) of [z_k | z_m | z_r].

        ``one_keyframe``: every frame of the whole clip has the same keyframe x_0, so X_k = T (x) x_0 (eq. 7)
        is one frame repeated. E_k is causal with per-frame norms and attention: every latent frame of it sees
        copies of x_0 only and is the same frame; it is computed once, from x_0 alone, and repeated (equal to
        encoding X_k, at 1/T of the work). Clips with several groups of pictures encode X_k in full (a later
        group's latent frames also see the earlier keyframe through the causal convs). ``memo`` keeps that one
        latent frame across the chunks of a chunked encode.
        """
        if self.config.decoupling == "concat":
            x = torch.cat([comps[c] for c in COMPONENTS], dim=1)  # b 9 t h w
            return _split_moments(self.encoder(x, cache))
        moments = [enc(comps[c], cache) for enc, c in zip((self.enc_m, self.enc_r), COMPONENTS[1:])]
        if one_keyframe:
            memo = {} if memo is None else memo
            if "keyframe" not in memo:
                memo["keyframe"] = self.enc_k(comps["keyframe"][:, :, :1])  # b 2c_k 1 h' w'
            key = memo["keyframe"]
            moments.insert(0, key.expand(-1, -1, moments[0].shape[2], -1, -1))
        else:
            moments.insert(0, self.enc_k(comps["keyframe"], cache))
        means, logvars = zip(*[_split_moments(m) for m in moments])
        return torch.cat(means, dim=1), torch.cat(logvars, dim=1)  # [k | m | r] along channels

    def encode(self, video: torch.Tensor, chunk_size: int | None = None) -> DiagonalGaussian:
        """video (b 3 1+4k h w) in [-1, 1] -> posterior over [z_k | z_m | z_r] (b latent 1+k h/8 w/8).

        ``chunk_size`` (frames, a multiple of 4): encode chunk by chunk through the causal cache, equal to the
        whole-clip result; with ``gop`` set the default is one group per chunk, otherwise one latent frame per chunk
        without gradients and the whole clip with them; 0: the whole clip.
        """
        self.check_video(video)
        one_key = self.encodes_keyframe_once(video.shape[2])
        chunk_size = self.config.gop if chunk_size is None and self.config.gop else \
            resolve_chunk(chunk_size, self.compression[0])
        if chunk_size is None:
            mean, logvar = self._encode_parts(video, None, 0, {}, one_key)
            return DiagonalGaussian(mean=mean, logvar=logvar)
        t_c = self.compression[0]
        if chunk_size < t_c or chunk_size % t_c:
            raise ValueError(f"{self.name}: chunk_size must be a positive multiple of {t_c} frames, got {chunk_size}")
        cache, keyframes, means, logvars, memo = FrameCache(), {}, [], [], {}
        for sl in frame_chunks(video.shape[2], chunk_size, lone_first=True):
            mean, logvar = self._encode_parts(video[:, :, sl], cache, sl.start, keyframes, one_key, memo)
            means.append(mean)
            logvars.append(logvar)
            keyframes = {k: v for k, v in keyframes.items() if k == max(keyframes)}  # only the open group's keyframe
        return DiagonalGaussian(mean=torch.cat(means, dim=2), logvar=torch.cat(logvars, dim=2))

    # ------------------------------------------------------------------------- shared decoder, eq. 3; recoupling
    def split_latent(self, z: torch.Tensor) -> list[torch.Tensor]:
        """[z_k | z_m | z_r] (b latent t h w) -> [z_k, z_m, z_r] (dedicated) or [z] (concat, none)."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"{self.name}: expected a latent (b, {self.latent_channels}, t, h, w), "
                             f"got {tuple(z.shape)}")
        if self.config.decoupling != "dedicated":
            return [z]
        return list(torch.split(z, list(self.config.component_channels), dim=1))

    def static_keyframe(self, z: torch.Tensor) -> bool:
        """Whether z_k is one latent frame repeated over the clip, as the posterior mode of a one-keyframe clip is."""
        if self.config.decoupling != "dedicated":
            return False
        if z.is_meta:  # no values (FLOP counting): assume the posterior mode, static iff the clip has one keyframe
            return self.keyframe_index(self.num_frames(z.shape[2]) - 1) == 0
        z_k = self.split_latent(z)[0]
        return bool(torch.equal(z_k, z_k[:, :, :1].expand_as(z_k)))

    def decode_components(self, z: torch.Tensor, which: tuple[str, ...] = COMPONENTS,
                          caches: dict[str, FrameCache] | None = None,
                          static_keyframe: bool | None = None) -> dict[str, torch.Tensor]:
        """Eq. 3: the decoded components ``which`` of latent frames z, each (b 3 t h w).

        Dedicated: the one shared decoder runs on each requested latent in turn, zero-padded to its input width
        (one at a time, so that inference memory is that of one decoder pass); concat: the decoder returns the
        nine channels at once. ``caches`` {component: FrameCache} carries each stream across chunks.
        ``static_keyframe`` (default: tested on ``z``; chunked callers decide once for the whole latent): z_k is one
        frame repeated, so the decoder's latent-side layers run on it once (:meth:`Decoder3D.forward`, exact).
        """
        parts = self.split_latent(z)
        if static_keyframe is None:
            static_keyframe = self.static_keyframe(z)

        def cache(stream: str) -> FrameCache | None:
            return None if caches is None else caches.setdefault(stream, FrameCache())

        if self.config.decoupling == "concat":
            out = dict(zip(COMPONENTS, self.decoder(parts[0], cache("all")).chunk(3, dim=1)))  # b 9 t h w -> 3 x b 3
            return {c: out[c] for c in which}
        width, latents = self.decoder.config.latent_channels, dict(zip(COMPONENTS, parts))
        return {c: self.decoder(F.pad(latents[c], (0, 0, 0, 0, 0, 0, 0, width - latents[c].shape[1])), cache(c),
                                static=static_keyframe and c == "keyframe")
                for c in which}  # each latent (b width t h w), zero channels appended

    def _latent_start(self, latent_start: int) -> int:
        """First frame decoded from latent frame ``latent_start`` (causal layout: 0 -> 0, j -> 4j - 3)."""
        return 0 if latent_start == 0 else self.compression[0] * (latent_start - 1) + 1

    def decode(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """[z_k | z_m | z_r] (b latent 1+k h w) -> video (b 3 1+4k 8h 8w): decode, then recouple (eq. 8).

        ``chunk_size`` (latent frames; default with ``gop`` set: one group, otherwise one latent frame without
        gradients and the whole latent with them; 0: the whole latent): decode chunk by chunk through the
        causal cache, one stream at a time -- the keyframe stream first (only its per-group time averages are kept),
        then motion, then residual (their decoded 3-channel videos are kept), recoupled at the end -- so only one
        stream's causal caches are alive at any time; equal to the whole decode.
        """
        if chunk_size is None and self.config.gop is not None and self.config.decoupling != "none":
            chunk_size = self.config.gop // self.compression[0]
        chunk_size = resolve_chunk(chunk_size, 1)  # default without gradients: one latent frame; 0: whole
        if self.config.decoupling == "none":
            self.split_latent(z)  # validates the shape
            if chunk_size is None:
                return self.decoder(z)
            cache = FrameCache()
            return torch.cat([self.decoder(z[:, :, sl], cache) for sl in frame_chunks(z.shape[2], chunk_size, False)],
                             dim=2)
        if chunk_size is None:
            comps = self.decode_components(z)
            return self.recouple(self._keyframe_means(comps["keyframe"]), comps["motion"], comps["residual"])
        if chunk_size < 1:
            raise ValueError(f"{self.name}: chunk_size must be >= 1 latent frame, got {chunk_size}")
        chunks = frame_chunks(z.shape[2], chunk_size, lone_first=True)
        caches, sums, counts, static = {}, {}, {}, self.static_keyframe(z)
        # concat: one decoder pass gives all three components, so pass 1 keeps motion and residual (2x the output)
        # instead of running the decoder twice
        first = ("keyframe",) if self.config.decoupling == "dedicated" else COMPONENTS
        kept = []
        for sl in chunks:  # pass 1: the keyframe stream -> x_hat_0 of every group
            comps = self.decode_components(z[:, :, sl], first, caches, static)
            self._keyframe_sums(comps.pop("keyframe"), self._latent_start(sl.start), sums, counts)
            kept.append(comps)
        keyframe_hat = {k: sums[k] / counts[k] for k in sums}
        for stream in ("motion", "residual") if self.config.decoupling == "dedicated" else ():
            caches = {}  # one stream's causal caches alive at a time; its decoded output (3 channels) is kept
            for sl, comps in zip(chunks, kept):  # pass 2: motion, pass 3: residual
                comps[stream] = self.decode_components(z[:, :, sl], (stream,), caches)[stream]
        out = [self.recouple(keyframe_hat, comps["motion"], comps["residual"], self._latent_start(sl.start))
               for sl, comps in zip(chunks, kept)]
        return torch.cat(out, dim=2)

    # ------------------------------------------------------------------------------- components, for training
    @property
    def has_components(self) -> bool:
        """Whether the clip is decoupled (False for the ``decoupling="none"`` baseline)."""
        return self.config.decoupling != "none"

    def decoupled_components(self, video: torch.Tensor, sample: bool = False,
                             generator: torch.Generator | None = None) -> dict:
        """Everything between input and output of one whole-clip pass, for losses and pictures.

        Returns (videos are (b 3 t h w)): ``keyframe`` X_k, ``motion`` X_m (flow x, flow y, scale; pictures:
        :func:`tokenizer.training.samples.motion_panels`), ``residual`` X_r, ``prediction`` x_hat^m = W(x_0, m); their
        reconstructions
        ``keyframe_hat`` (decoded keyframe video), ``motion_hat``, ``residual_hat``, ``prediction_hat`` =
        W(x_hat_0, m_hat); ``reconstruction`` (eq. 8), ``posterior`` and the latent ``z``.
        """
        if not self.has_components:
            raise ValueError("decoupling='none' has no components (it is the plain baseline)")
        self.check_video(video)
        comps = self.decouple(video)
        mean, logvar = self._encode_components(comps, None, self.encodes_keyframe_once(video.shape[2]))
        posterior = DiagonalGaussian(mean=mean, logvar=logvar)
        z = posterior.sample(generator) if sample else posterior.mode()
        hats = self.decode_components(z)
        zero = torch.zeros_like(hats["residual"])
        prediction_hat = self.recouple(self._keyframe_means(hats["keyframe"]), hats["motion"], zero)
        return {**comps, "keyframe_hat": hats["keyframe"], "motion_hat": hats["motion"],
                "residual_hat": hats["residual"], "prediction_hat": prediction_hat,
                "reconstruction": prediction_hat + hats["residual"], "posterior": posterior, "z": z}


def _on_meta(module: nn.Module) -> bool:
    """Built on the meta device (parameter counts): there is nothing to load weights into."""
    return any(p.is_meta for p in module.parameters())


def _split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output (b 2c t h w) -> (mean, logvar), each (b c t h w)."""
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar


# --------------------------------------------------------------------------------------------------- presets
@register_vae("deco", DeCoVAE)
def deco() -> DeCoVAEConfig:
    """The paper: 16 latent channels per component, three dedicated encoders and one shared decoder."""
    return DeCoVAEConfig()


@register_vae("deco-compact", DeCoVAE)
def deco_compact() -> DeCoVAEConfig:
    """16 latent channels in all (keyframe 6, motion 5, residual 5): equal latent size to the 16-channel VAEs."""
    return DeCoVAEConfig(component_channels=[6, 5, 5])


@register_vae("deco-concat", DeCoVAE)
def deco_concat() -> DeCoVAEConfig:
    """Table 4 ablation: components concatenated into one encoder (48 latent channels, as ``deco``)."""
    return DeCoVAEConfig(decoupling="concat")


_TINY = dict(block_out_channels=list(TINY_SIZES["block_out_channels"]), layers_per_block=TINY_SIZES["layers_per_block"],
             norm_num_groups=TINY_SIZES["norm_num_groups"])  # the same motion module as the full presets


@register_vae("deco-tiny", DeCoVAE)
def deco_tiny() -> DeCoVAEConfig:
    return DeCoVAEConfig(**_TINY)


@register_vae("deco-compact-tiny", DeCoVAE)
def deco_compact_tiny() -> DeCoVAEConfig:
    return DeCoVAEConfig(component_channels=[6, 5, 5], **_TINY)


@register_vae("deco-concat-tiny", DeCoVAE)
def deco_concat_tiny() -> DeCoVAEConfig:
    return DeCoVAEConfig(decoupling="concat", **_TINY)
