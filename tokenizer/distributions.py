"""The diagonal Gaussian posterior q(z|x) = N(mu, diag(sigma^2)) of every video VAE (DeCo-VAE eqs. 1-2)."""
from __future__ import annotations

import torch


class DiagonalGaussian:
    """Posterior from ``moments`` = concat(mu, log sigma^2) along ``dim`` (channels, b c t h w layout).

    ``logvar`` is clamped to [-30, 20] as in the LDM / diffusers ``DiagonalGaussianDistribution``.
    """

    def __init__(self, moments: torch.Tensor | None = None, *, mean: torch.Tensor | None = None,
                 logvar: torch.Tensor | None = None, dim: int = 1):
        if moments is not None:
            mean, logvar = moments.chunk(2, dim=dim)
        if mean is None or logvar is None:
            raise ValueError("DiagonalGaussian needs moments or both mean and logvar")
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @property
    def latent_dist(self) -> "DiagonalGaussian":
        """The posterior itself, so that ``vae.encode(x).latent_dist.sample()`` reads as with diffusers'
        ``AutoencoderKLOutput``."""
        return self

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample z = mu + sigma * eps (DeCo-VAE eq. 2)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over all but the batch axis: (b,)."""
        dims = list(range(1, self.mean.ndim))
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(range(1, self.mean.ndim))
        return 0.5 * torch.sum(torch.log(2 * torch.pi * self.var) + (x - self.mean).pow(2) / self.var, dim=dims)

    @staticmethod
    def cat(posteriors: list["DiagonalGaussian"], dim: int = 1) -> "DiagonalGaussian":
        """Concatenate posteriors along channels (DeCo-VAE's [z_k | z_m | z_r] latent)."""
        return DiagonalGaussian(mean=torch.cat([p.mean for p in posteriors], dim),
                                logvar=torch.cat([p.logvar for p in posteriors], dim))
