"""The 3D PatchGAN discriminator of video-VAE training (WF-VAE / Open-Sora-Plan layout).

A pix2pix-style N-layer PatchGAN with 3x3x3 kernels: a strided conv without normalisation, ``num_layers - 1``
conv + BatchNorm + LeakyReLU(0.2) stages that widen the channels (x2 per stage, at most x8) and halve H and W
(T only in the first of them), one more stride-1 stage, and a 1-channel stride-1 conv giving one logit per
space-time patch. Trained with the hinge loss (``tokenizer.losses.hinge_d_loss``).

The discriminator only ever runs in training mode, normalising with the statistics of the batch at hand, so its
BatchNorm layers keep no running statistics: they would never be used, and they would differ between the
processes of a data-parallel run (each sees its own batch) and absorb the NaNs of a skipped step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DiscriminatorConfig:
    in_channels: int = 3
    channels: int = 64  # width of the first stage
    num_layers: int = 3  # conv + BN stages after the first conv, the last at stride 1 (pix2pix n_layers)


class PatchDiscriminator3D(nn.Module):
    """Video (b, c, t, h, w) in [-1, 1] -> patch logits (b, 1, t', h', w')."""

    def __init__(self, cfg: DiscriminatorConfig | None = None):
        super().__init__()
        cfg = cfg or DiscriminatorConfig()
        self.cfg = cfg
        ch, k, p = cfg.channels, 3, 1
        layers: list[nn.Module] = [nn.Conv3d(cfg.in_channels, ch, k, stride=2, padding=p), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, cfg.num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            # the last stage keeps the resolution; of the strided ones only the first also halves time
            stride = 1 if n == cfg.num_layers else (2 if n == 1 else 1, 2, 2)
            layers += [nn.Conv3d(ch * prev, ch * mult, k, stride=stride, padding=p, bias=False),  # BN has the bias
                       nn.BatchNorm3d(ch * mult, track_running_stats=False), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv3d(ch * mult, 1, k, stride=1, padding=p))
        self.main = nn.Sequential(*layers)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # pix2pix / taming init: conv weights N(0, 0.02), BN scale N(1, 0.02) and shift 0, conv bias 0
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (b, c, t, h, w) -> logits (b, 1, t', h', w'), one per receptive-field patch."""
        return self.main(video)
