"""The losses of video-VAE training, kept apart from the models (which know nothing of them).

DeCo-VAE eq. 9: L_total = lambda_recon L_recon + lambda_kl L_kl + lambda_adv L_adv + lambda_p L_p, with
- L_recon: mean absolute error over every pixel of the clip (L1);
- L_p: LPIPS (the ``lpips`` package) applied frame by frame, averaged over frames and batch;
- L_kl: KL(q(z|x) || N(0, I)) summed over the latent, averaged over the batch (``DiagonalGaussian.kl``);
- L_adv: the generator's hinge term ``-mean(D(x_hat))`` from a 3D PatchGAN, scaled by the adaptive weight
  ``||grad L_nll|| / (||grad L_adv|| + 1e-6)`` taken at the decoder's last layer (taming-transformers, WF-VAE),
  switched on at a configured step.
The discriminator is trained with the hinge loss ``0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))))``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import ConfigError
from .distributions import DiagonalGaussian

LPIPS_NETS = ("vgg", "alex", "squeeze")


@dataclass
class LossConfig:
    """Loss weights and switches (paper numbers live in ``configs/tokenizer/*.yaml``)."""

    recon_weight: float = 1.0  # lambda_recon on the L1 term
    perceptual_weight: float = 0.0  # lambda_p on LPIPS; 0 builds no LPIPS network at all
    lpips_net: str = "vgg"  # LPIPS trunk: vgg (taming / WF-VAE training loss) | alex | squeeze
    lpips_backbone: Optional[str] = None  # torchvision ImageNet weights of the trunk (see build_lpips)
    lpips_random_backbone: bool = False  # tests and the demo only: a random trunk, loudly labelled
    kl_weight: float = 1e-6  # lambda_kl
    gan_weight: float = 0.0  # lambda_adv; 0 builds no discriminator
    gan_start: int = 0  # the first step (1-based) that uses the adversarial terms
    adaptive_weight: bool = True  # scale lambda_adv by ||grad nll|| / (||grad g|| + 1e-6) at the last layer
    adaptive_weight_max: float = 1e4  # clamp of the adaptive weight (taming)

    def __post_init__(self) -> None:
        if self.lpips_net not in LPIPS_NETS:
            raise ConfigError(f"invalid value 'lpips_net={self.lpips_net}': valid values are {', '.join(LPIPS_NETS)}")
        for k in ("recon_weight", "perceptual_weight", "kl_weight", "gan_weight"):
            if getattr(self, k) < 0:
                raise ConfigError(f"invalid value '{k}={getattr(self, k)}': must be >= 0")


# --- elementary terms ------------------------------------------------------------------------------------------
def l1_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements: () from two (b, c, t, h, w) clips."""
    return (x - x_hat).abs().mean()


def kl_loss(posterior: DiagonalGaussian) -> torch.Tensor:
    """KL to N(0, I), summed over the latent (c, t, h, w) and averaged over the batch: ()."""
    return posterior.kl().mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 * (E[max(0, 1 - D(x))] + E[max(0, 1 + D(x_hat))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial term under the hinge GAN: -E[D(x_hat)]."""
    return -logits_fake.mean()


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """||grad_w nll|| / (||grad_w g_loss|| + 1e-6) at the decoder's last layer ``w``, clamped, no gradient.

    Balances the adversarial gradient against the reconstruction gradient where both enter the decoder
    (Esser et al. 2021, eq. 7; WF-VAE's discriminator loss).
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = torch.linalg.vector_norm(nll_grad) / (torch.linalg.vector_norm(g_grad) + 1e-6)
    return w.clamp(0.0, max_weight).detach()


# --- LPIPS per frame -------------------------------------------------------------------------------------------
def _trunk_weights(net: str):
    import torchvision.models as tvm

    return {"vgg": tvm.VGG16_Weights.IMAGENET1K_V1, "alex": tvm.AlexNet_Weights.IMAGENET1K_V1,
            "squeeze": tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1}[net]


def lpips_backbone_file(net: str) -> tuple[str, str]:
    """(file name, public URL) of the torchvision ImageNet weights LPIPS's ``net`` trunk needs."""
    url = _trunk_weights(net).url
    return url.rsplit("/", 1)[-1], url


def _find_backbone(net: str, path: str | None) -> Path | None:
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"lpips_backbone={path}: no such file")
        return p
    name, _ = lpips_backbone_file(net)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name  # where torchvision would have put a download
    return cached if cached.is_file() else None


TRAINING_LPIPS_OPTIONS = ("loss.lpips_backbone", "set loss.perceptual_weight=0 (no LPIPS), or "
                          "loss.lpips_random_backbone=true (tests/demo only: not LPIPS)")


def build_lpips(net: str = "vgg", backbone: str | None = None, random_backbone: bool = False,
                seed: int = 0, options: tuple[str, str] = TRAINING_LPIPS_OPTIONS) -> nn.Module:
    """An ``lpips.LPIPS`` network (v0.1 linear heads from the package) with its trunk loaded from a file.

    The ImageNet trunk cannot be downloaded here. It is taken from ``backbone`` (a torchvision state-dict file),
    else from torchvision's cache (``$TORCH_HOME/hub/checkpoints``). If neither exists this raises, naming the file
    and its URL, unless ``random_backbone`` is set: then the trunk is randomly initialised (from ``seed``, the same
    on every process) and a warning says that the "perceptual" loss is not LPIPS. ``options`` names, for that
    error, the caller's option that takes the trunk file and how the caller switches LPIPS off.
    """
    import lpips

    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS trunk '{net}'; valid: {', '.join(LPIPS_NETS)}")
    if random_backbone and backbone is not None:
        raise ValueError("an LPIPS trunk file and a random trunk were both asked for: choose one")
    path = None if random_backbone else _find_backbone(net, backbone)  # a cached real trunk is not random
    if path is None and not random_backbone:
        name, url = lpips_backbone_file(net)
        raise FileNotFoundError(
            f"LPIPS needs the ImageNet weights of its '{net}' trunk: the file {name} (published at {url}). Put it in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} or pass its path as {options[0]}; or {options[1]}")
    with torch.random.fork_rng(devices=[]):  # a random trunk must not depend on, or disturb, the global RNG
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's 'pretrained' deprecation notice inside lpips
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        _load_trunk(model, path)
    else:
        warnings.warn(f"LPIPS with a RANDOM '{net}' trunk (lpips_random_backbone=true): the perceptual term is not "
                      "LPIPS; use this only for tests and demos", stacklevel=2)
    model.requires_grad_(False)
    return model.eval()


def _load_trunk(model: nn.Module, path: Path) -> None:
    """Copy torchvision ``features.N...`` weights into LPIPS's ``net.sliceK.N...`` modules."""
    from .io import WeightsFileError, load_state_dict_file

    state = load_state_dict_file(path, role="lpips_backbone")
    own = model.net.state_dict()
    mapped = {}
    for key in own:
        _, rest = key.split(".", 1)  # 'slice2.3.weight' -> '3.weight' (LPIPS keeps torchvision's indices)
        src = f"features.{rest}"
        if src not in state:
            raise WeightsFileError(f"lpips_backbone {path} is not a torchvision {type(model.net).__name__} state "
                                   f"dict: missing '{src}'")
        mapped[key] = state[src]
    model.net.load_state_dict(mapped, strict=True)


class PerceptualLoss(nn.Module):
    """LPIPS distance applied frame by frame to (b, c, t, h, w) clips in [-1, 1]."""

    def __init__(self, lpips_model: nn.Module):
        super().__init__()
        self.lpips = lpips_model

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """x, x_hat: (b, c, t, h, w) -> per-clip mean over frames: (b,)."""
        b = x.shape[0]
        if min(x.shape[-2:]) < 32:  # the trunks' strided convs and poolings run out of pixels below that
            raise ValueError(f"LPIPS needs frames of at least 32x32 pixels, got {tuple(x.shape[-2:])}")
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        frames_hat = rearrange(x_hat, "b c t h w -> (b t) c h w")
        d = self.lpips(frames_hat, frames).flatten()  # ((b t),)
        return rearrange(d, "(b t) -> b t", b=b).mean(dim=1)


# --- the combined objective ------------------------------------------------------------------------------------
class VAELoss(nn.Module):
    """Generator and discriminator objectives of one training step.

    ``generator(...)`` returns the total generator loss (eq. 9) and its terms; ``discriminator(...)`` the hinge
    loss. The discriminator network itself is passed in (it is trained, so it lives with the trainer).
    """

    def __init__(self, cfg: LossConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.perceptual = None
        if cfg.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(build_lpips(cfg.lpips_net, cfg.lpips_backbone,
                                                         cfg.lpips_random_backbone, seed=seed))

    def gan_active(self, step: int) -> bool:
        """Whether step ``step`` (1-based) uses the adversarial terms."""
        return self.cfg.gan_weight > 0 and step >= self.cfg.gan_start

    def reconstruction(self, x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """lambda_recon * L1 + lambda_p * LPIPS (the 'nll' the adaptive weight balances against)."""
        logs = {}
        l1 = l1_loss(x, x_hat)
        nll = self.cfg.recon_weight * l1
        logs["l1"] = l1.detach()
        if self.perceptual is not None:
            p = self.perceptual(x, x_hat).mean()
            nll = nll + self.cfg.perceptual_weight * p
            logs["lpips"] = p.detach()
        return nll, logs

    def generator(self, x: torch.Tensor, x_hat: torch.Tensor, posterior: DiagonalGaussian | None, step: int,
                  discriminator: nn.Module | None = None, last_layer: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total generator loss (DeCo-VAE eq. 9) and detached terms for logging.

        Args:
            x, x_hat: input and reconstruction, (b, c, t, h, w) in [-1, 1].
            posterior: q(z|x) (None: no KL term, e.g. a deterministic model).
            step: the 1-based step being taken (for ``gan_start``).
            discriminator: called on ``x_hat`` when the GAN is active; its parameters should not require grad.
            last_layer: the decoder's last weight, for the adaptive weight.
        """
        nll, logs = self.reconstruction(x, x_hat)
        total = nll
        if posterior is not None and self.cfg.kl_weight > 0:
            kl = kl_loss(posterior)
            total = total + self.cfg.kl_weight * kl
            logs["kl"] = kl.detach()
        if self.gan_active(step):
            if discriminator is None:
                raise ValueError("gan_weight > 0 needs a discriminator")
            g = generator_adv_loss(discriminator(x_hat))
            if self.cfg.adaptive_weight:
                if last_layer is None:
                    raise ValueError("the adaptive GAN weight needs the decoder's last layer")
                d_weight = adaptive_weight(nll, g, last_layer, self.cfg.adaptive_weight_max)
            else:
                d_weight = torch.ones((), device=g.device)
            total = total + self.cfg.gan_weight * d_weight * g
            logs["g_adv"] = g.detach()
            logs["d_weight"] = d_weight.detach()
        logs["loss"] = total.detach()
        return total, logs

    def discriminator(self, x: torch.Tensor, x_hat: torch.Tensor, discriminator: nn.Module
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hinge loss of the discriminator on real ``x`` and (detached) ``x_hat``."""
        logits_real = discriminator(x.detach())
        logits_fake = discriminator(x_hat.detach())
        d = hinge_d_loss(logits_real, logits_fake)
        return d, {"d_loss": d.detach(), "logits_real": logits_real.detach().mean(),
                   "logits_fake": logits_fake.detach().mean()}
