"""The PatchGAN discriminator of pix2pix (Isola et al. 2017), as LDM/taming-transformers use it.

``NLayerDiscriminator`` keeps their layout (``main.0.weight`` ... ), so LDM's ``loss.discriminator.*``
weights load. Each output logit judges one overlapping patch of the input (70x70 for 3 layers).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

DISC_NORMS = ("batch", "actnorm")


class ActNorm(nn.Module):
    """Per-channel affine normalisation initialised from the first batch's statistics (Glow, Kingma & Dhariwal 2018)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # [C, B*H*W]
        self.loc.copy_(-flat.mean(dim=1).view(1, -1, 1, 1))
        self.scale.copy_(1.0 / (flat.std(dim=1).view(1, -1, 1, 1) + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> scale * (x + loc)."""
        if self.training and self.initialized.item() == 0:
            self._initialize(x)
        return self.scale * (x + self.loc)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: conv(4, s2) + LeakyReLU, `num_layers - 1` x [conv(4, s2), norm, LeakyReLU],
    conv(4, s1), norm, LeakyReLU, conv(4, s1) -> one logit per patch, [B, 1, h, w].
    """

    def __init__(
        self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, norm: str = "batch"
    ) -> None:
        super().__init__()
        if norm not in DISC_NORMS:
            raise ValueError(f"unknown discriminator norm '{norm}'; available: {', '.join(DISC_NORMS)}")
        if num_layers < 1 or channels < 1 or in_channels < 1:
            raise ValueError(
                f"discriminator needs num_layers, channels, in_channels >= 1, got {num_layers}, {channels}, {in_channels}"
            )
        norm_layer = nn.BatchNorm2d if norm == "batch" else ActNorm
        use_bias = norm != "batch"  # BatchNorm has its own shift
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, num_layers):
            previous, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(channels * previous, channels * mult, 4, stride=2, padding=1, bias=use_bias),
                norm_layer(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        previous, mult = mult, min(2**num_layers, 8)
        layers += [
            nn.Conv2d(channels * previous, channels * mult, 4, stride=1, padding=1, bias=use_bias),
            norm_layer(channels * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1),
        ]
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> patch logits [B, 1, h, w]."""
        return self.main(x)


def init_weights(module: nn.Module) -> None:
    """pix2pix's initialisation: conv weights N(0, 0.02); BatchNorm scale N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
