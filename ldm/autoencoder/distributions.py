"""The diagonal Gaussian posterior q(z | x) of the KL autoencoder.

The encoder predicts, per latent element, a mean and a log-variance stacked on the channel axis
(``[B, 2C, H, W]``). The KL term to the standard normal prior is what regularises the latent
space (Rombach et al. 2022, Sec. 3 and App. G; the VAE bound of Kingma & Welling 2014).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ldm.samplers.noise import Generators, randn_like

LOGVAR_MIN = -30.0
"""Lower clamp of the predicted log-variance (as LDM), keeps exp(logvar) from underflowing."""
LOGVAR_MAX = 20.0
"""Upper clamp of the predicted log-variance (as LDM), keeps exp(logvar) finite in fp32."""


class DiagonalGaussianDistribution:
    """N(mean, diag(exp(logvar))) over latents, built from stacked ``[mean, logvar]`` channels.

    With ``deterministic=True`` the variance is zero: ``sample()`` returns the mean and
    ``kl()`` / ``nll()`` return zeros, as in LDM.
    """

    def __init__(self, parameters: Tensor, deterministic: bool = False) -> None:
        if parameters.ndim < 2 or parameters.shape[1] % 2 != 0:
            raise ValueError(
                f"parameters must have an even channel count (mean and logvar stacked on dim 1), "
                f"got shape {tuple(parameters.shape)}"
            )
        self.parameters = parameters
        self.deterministic = deterministic
        mean, logvar = torch.chunk(parameters, 2, dim=1)  # [B, C, H, W] each
        self.mean = mean
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        if deterministic:
            self.var = torch.zeros_like(self.mean)
            self.std = torch.zeros_like(self.mean)
        else:
            self.var = torch.exp(self.logvar)
            self.std = torch.exp(0.5 * self.logvar)

    def _sum_dims(self) -> list[int]:
        return list(range(1, self.mean.ndim))

    def sample(self, generator: Generators = None) -> Tensor:
        """Draw z = mean + std * eps with eps ~ N(0, I) (the reparameterisation trick); `generator`:
        None (the global one), one for the batch, or one per sample (``ldm.samplers.noise``)."""
        return self.mean + self.std * randn_like(self.mean, generator)

    def mode(self) -> Tensor:
        """The most likely latent, i.e. the mean."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) summed over all non-batch dims, shape ``[B]``.

        Closed form per element: 0.5 * (mean^2 + var - 1 - logvar).
        """
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=self._sum_dims())

    def nll(self, sample: Tensor) -> Tensor:
        """Negative log-likelihood of ``sample`` under this distribution, summed over non-batch dims, shape ``[B]``."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        log_two_pi = math.log(2.0 * math.pi)
        return 0.5 * torch.sum(
            log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=self._sum_dims()
        )
