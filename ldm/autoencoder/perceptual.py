"""LPIPS, the learned perceptual distance of Zhang et al. 2018, on VGG-16 features (as LDM/SD).

d(x0, x1) = sum over the 5 layers l of mean over positions of sum_c w_lc (f0_lc - f1_lc)^2, where f
are VGG-16 activations (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) unit-normalised over channels
at each position, and w_l >= 0 are the learned 1x1 "lin" heads (Eq. 1 of Zhang et al. 2018).

Nothing is downloaded: the VGG-16 features and the heads come from local files. The key layout
is that of the released weights, so they load as they are: torchvision's ``vgg16`` state dict
(``features.N.weight``, ``classifier.*`` ignored) and LPIPS's ``vgg.pth`` (``lin0.model.1.weight``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from ldm.weights.io import load_checked, read_tensors

logger = logging.getLogger(__name__)

LPIPS_CHANNELS = (64, 128, 256, 512, 512)
"""Channels of the five VGG-16 layers LPIPS compares."""
LPIPS_SLICE_ENDS = (4, 9, 16, 23, 30)
"""``features[:4]`` ends at relu1_2, ``[4:9]`` at relu2_2, ... ``[23:30]`` at relu5_3."""
VGG16_HUB_FILE = "vgg16-397923af.pth"
"""torchvision's VGG-16 ImageNet weights as the torch hub cache names them."""
NORMALIZE_EPS = 1e-10
"""Added to the channel norm before dividing (LPIPS's normalize_tensor)."""


class ScalingLayer(nn.Module):
    """Map images in [-1, 1] to the input statistics LPIPS's VGG heads were trained with."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False
        )
        self.register_buffer(
            "scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, 3, H, W]."""
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """A 1x1 convolution C -> 1 without bias (LPIPS's ``lin`` head; ``model.1`` after a dropout)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, 1, H, W]."""
        return self.model(x)


def normalize_channels(features: Tensor) -> Tensor:
    """Unit-normalise [B, C, H, W] features over C at each position."""
    norm = torch.sqrt(torch.sum(features**2, dim=1, keepdim=True))
    return features / (norm + NORMALIZE_EPS)


def lpips_from_features(
    features0: list[Tensor], features1: list[Tensor], heads: list[nn.Module] | nn.ModuleList
) -> Tensor:
    """sum_l mean_hw head_l((n(f0_l) - n(f1_l))^2), shape [B, 1, 1, 1] (Eq. 1 of Zhang et al. 2018)."""
    total: Optional[Tensor] = None
    for f0, f1, head in zip(features0, features1, heads, strict=True):
        diff = (normalize_channels(f0) - normalize_channels(f1)) ** 2  # [B, C, H, W]
        layer = head(diff).mean(dim=(2, 3), keepdim=True)  # [B, 1, 1, 1]
        total = layer if total is None else total + layer
    assert total is not None
    return total


class LPIPS(nn.Module):
    """The LPIPS distance between images in [-1, 1], per image: [B, 3, H, W] x2 -> [B, 1, 1, 1].

    Frozen: after ``freeze()`` its weights are non-persistent buffers, so they follow the module's
    device but are neither trained nor written into the autoencoder's checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.features = make_layers(cfgs["D"])[: LPIPS_SLICE_ENDS[-1]]  # VGG-16 up to relu5_3
        self.lins = nn.ModuleList(NetLinLayer(c) for c in LPIPS_CHANNELS)

    def vgg_features(self, x: Tensor) -> list[Tensor]:
        """The five normalised-input VGG-16 activations LPIPS compares."""
        h = self.scaling_layer(x)
        outputs, start = [], 0
        for end in LPIPS_SLICE_ENDS:
            for layer in self.features[start:end]:
                h = layer(h)
            outputs.append(h)
            start = end
        return outputs

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """LPIPS(x0, x1) per image, [B, 1, 1, 1]."""
        if x0.shape != x1.shape or x0.ndim != 4 or x0.shape[1] != 3:
            raise ValueError(
                f"LPIPS takes two [B, 3, H, W] images, got {tuple(x0.shape)} and {tuple(x1.shape)}"
            )
        return lpips_from_features(self.vgg_features(x0), self.vgg_features(x1), self.lins)

    def load_weights(self, vgg_state: dict[str, Tensor], lin_state: dict[str, Tensor]) -> None:
        """Load torchvision-layout VGG-16 features (``features.N.*``) and LPIPS heads (``linK.model.1.weight``)."""
        features = {k[len("features.") :]: v for k, v in vgg_state.items() if k.startswith("features.")}
        features = {k: v for k, v in features.items() if int(k.split(".")[0]) < LPIPS_SLICE_ENDS[-1]}
        load_checked(self.features, features, "VGG-16 features do not fit")
        heads = {k[len("lin") :]: v for k, v in lin_state.items() if k.startswith("lin")}
        load_checked(self.lins, heads, "LPIPS heads do not fit")
        for index, lin in enumerate(self.lins):
            if (lin.model[1].weight < 0).any():
                raise ValueError(f"LPIPS head lin{index} has negative weights; LPIPS heads are non-negative")

    def freeze(self) -> LPIPS:
        """Eval mode, and every parameter turned into a non-persistent buffer (frozen, not checkpointed)."""
        self.eval()
        for module in self.modules():
            for name, parameter in list(module.named_parameters(recurse=False)):
                delattr(module, name)
                module.register_buffer(name, parameter.detach(), persistent=False)
        return self

    def train(self, mode: bool = True) -> LPIPS:
        """Always in eval mode (no dropout): the distance is fixed."""
        return super().train(False)


def _hub_vgg16() -> Optional[Path]:
    path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_HUB_FILE
    return path if path.is_file() else None


def load_lpips(perceptual_weights: Optional[str], vgg_weights: Optional[str] = None) -> Optional[LPIPS]:
    """A frozen LPIPS from local files, or None (with one log line) where its weights are not there.

    `perceptual_weights` holds the heads ``lin0..lin4`` and may hold the VGG-16 ``features.*`` too;
    otherwise they come from `vgg_weights`, else from the torch hub cache. Never downloads.
    A path that is given but does not exist is an error.
    """
    for name, value in (("perceptual_weights", perceptual_weights), ("vgg_weights", vgg_weights)):
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"autoencoder.{name} not found: {value}")
    if perceptual_weights is None:
        logger.info(
            "no LPIPS weights configured (autoencoder.perceptual_weights): training without the perceptual term"
        )
        return None
    lin_state = read_tensors(perceptual_weights)
    vgg_state = lin_state
    if not any(k.startswith("features.") for k in lin_state):
        vgg_path = Path(vgg_weights) if vgg_weights is not None else _hub_vgg16()
        if vgg_path is None:
            logger.info(
                "no VGG-16 weights in %s, autoencoder.vgg_weights or the torch hub cache: "
                "training without the perceptual term",
                perceptual_weights,
            )
            return None
        vgg_state = read_tensors(vgg_path)
    with torch.device("meta"):  # skip initialising weights that are all loaded next
        lpips = LPIPS()
    lpips = lpips.to_empty(device="cpu")
    lpips.scaling_layer = ScalingLayer()  # its constants are not loaded
    lpips.load_weights(vgg_state, lin_state)
    logger.info("LPIPS perceptual loss from %s", perceptual_weights)
    return lpips.freeze()


def lpips_state_dict(lpips: LPIPS) -> dict[str, Tensor]:
    """The file layout ``load_lpips`` reads: ``features.N.*`` and ``linK.model.1.weight``."""
    state = {f"features.{k}": v for k, v in lpips.features.state_dict().items()}
    state.update({f"lin{k}": v for k, v in lpips.lins.state_dict().items()})
    return state


__all__ = ["LPIPS", "load_lpips", "lpips_from_features", "lpips_state_dict", "normalize_channels"]
