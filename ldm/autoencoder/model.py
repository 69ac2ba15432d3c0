"""The KL-regularised convolutional autoencoder of latent diffusion (Rombach et al. 2022).

Module and parameter names follow CompVis/latent-diffusion and Stable Diffusion exactly, so
that the state dict of ``KLAutoencoder`` is the SD VAE's (``encoder.down.0.block.0.conv1.weight``,
``decoder.up.3.upsample.conv.weight``, ``quant_conv.weight``, ...): a released SD VAE state dict,
with any ``first_stage_model.`` prefix and LDM's ``loss.*`` entries removed, loads with ``strict=True``.
The first stage has no timestep embedding, so the residual blocks have none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ldm.autoencoder.distributions import DiagonalGaussianDistribution
from ldm.config import AutoencoderConfig
from ldm.normalization import norm_silu
from ldm.samplers.noise import Generators
from ldm.upsampling import upsample_conv

NUM_GROUPS = 32
"""GroupNorm groups throughout the autoencoder (LDM/SD's value, the default)."""


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype or autocast, cast back to the input dtype.

    Group statistics over many activations are where half precision loses the most; fp32 input
    outside autocast takes the plain path, so full-precision training is unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W] in x's dtype."""
        if x.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalize(channels: int, num_groups: int = NUM_GROUPS) -> nn.GroupNorm:
    """GroupNorm (in fp32) with eps 1e-6 and affine parameters, the only normalisation of the autoencoder.

    The group count does not change the parameters, so any value loads the same weights; tiny
    networks want fewer groups than 32, since one channel per group (instance norm) erases the
    relative strength of channels, i.e. colour.
    """
    return GroupNorm32(num_groups=num_groups, num_channels=channels, eps=1e-6, affine=True)


def _check_channels(ch: int, ch_mult: Sequence[int], num_groups: int = NUM_GROUPS) -> None:
    if len(ch_mult) == 0:
        raise ValueError("ch_mult must name at least one level")
    if num_groups < 1:
        raise ValueError(f"norm_groups must be >= 1, got {num_groups}")
    for mult in ch_mult:
        channels = ch * mult
        if mult <= 0 or channels % num_groups != 0:
            raise ValueError(
                f"every level's channel count ch * ch_mult[i] must be a positive multiple of "
                f"{num_groups} (GroupNorm groups); got ch={ch}, ch_mult={list(ch_mult)}"
            )


class ResnetBlock(nn.Module):
    """norm -> SiLU -> conv, twice, plus a skip; a 1x1 ``nin_shortcut`` only when channels change."""

    def __init__(
        self, in_channels: int, out_channels: int, dropout: float = 0.0, norm_groups: int = NUM_GROUPS
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = normalize(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = normalize(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """[B, in, H, W] -> [B, out, H, W]."""
        h = self.conv1(norm_silu(self.norm1, x))
        h = self.conv2(self.dropout(norm_silu(self.norm2, h)))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, channels as features, with a residual."""

    def __init__(self, channels: int, norm_groups: int = NUM_GROUPS) -> None:
        super().__init__()
        self.norm = normalize(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]; softmax(q k^T / sqrt(C)) v."""
        _, channels, height, width = x.shape
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")
        # The 1x1 convolutions as linear maps of the tokens (the same weights, seen as [C, C]): one
        # layout change in and one out, contiguous q, k, v for the fused attention kernel.
        q, k, v = (
            F.linear(tokens, f.weight.view(channels, channels), f.bias) for f in (self.q, self.k, self.v)
        )
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # [B, HW, C], 1/sqrt(C)
        h = F.linear(h, self.proj_out.weight.view(channels, channels), self.proj_out.bias)
        # x first: the sum takes x's memory format, not the transposed one of the tokens.
        return x + rearrange(h, "b (h w) c -> b c h w", h=height, w=width)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv after zero padding right and bottom by one (as LDM)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H/2, W/2]."""
        x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)  # (left, right, top, bottom)
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, 2H, 2W]."""
        return upsample_conv(self.conv, x)  # on the CPU, large ones without the upsampled copy


class Encoder(nn.Module):
    """Image [B, in_channels, H, W] -> moments [B, 2 * z_channels, H/f, W/f], f = 2 ** (len(ch_mult) - 1)."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        in_channels: int,
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        norm_groups: int = NUM_GROUPS,
    ) -> None:
        super().__init__()
        _check_channels(ch, ch_mult, norm_groups)
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)

        in_ch_mult = (1, *ch_mult)
        current_resolution = resolution
        self.down = nn.ModuleList()
        for level in range(self.num_resolutions):
            block_in = ch * in_ch_mult[level]
            block_out = ch * ch_mult[level]
            blocks, attentions = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
                if current_resolution in attn_resolutions:
                    attentions.append(AttnBlock(block_in, norm_groups))
            down = nn.Module()
            down.block = blocks
            down.attn = attentions
            if level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                current_resolution //= 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, norm_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, norm_groups)

        self.norm_out = normalize(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_channels, H, W] -> [B, 2 * z_channels, H/f, W/f] (mean and logvar stacked)."""
        h = self.conv_in(x)
        for level, down in enumerate(self.down):
            for index, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[index](h)
            if level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(norm_silu(self.norm_out, h))


class Decoder(nn.Module):
    """Latent [B, z_channels, h, w] -> image [B, out_channels, h*f, w*f]; the encoder mirrored."""

    def __init__(
        self,
        *,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        out_channels: int,
        resolution: int,
        z_channels: int,
        dropout: float = 0.0,
        norm_groups: int = NUM_GROUPS,
    ) -> None:
        super().__init__()
        _check_channels(ch, ch_mult, norm_groups)
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks

        block_in = ch * ch_mult[-1]
        current_resolution = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, norm_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, norm_groups)

        # Built from the deepest level up, as LDM, but stored so that up[i] is level i: the
        # state dict then reads up.{0..n-1} with up.{n-1} being the first one applied.
        ups: list[nn.Module] = []
        for level in reversed(range(self.num_resolutions)):
            block_out = ch * ch_mult[level]
            blocks, attentions = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
                if current_resolution in attn_resolutions:
                    attentions.append(AttnBlock(block_in, norm_groups))
            up = nn.Module()
            up.block = blocks
            up.attn = attentions
            if level != 0:
                up.upsample = Upsample(block_in)
                current_resolution *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)

        self.norm_out = normalize(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        """[B, z_channels, h, w] -> [B, out_channels, h*f, w*f]."""
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(self.num_resolutions)):
            up = self.up[level]
            for index, block in enumerate(up.block):
                h = block(h)
                if len(up.attn) > 0:
                    h = up.attn[index](h)
            if level != 0:
                h = up.upsample(h)
        return self.conv_out(norm_silu(self.norm_out, h))


class KLAutoencoder(nn.Module):
    """The SD/LDM first stage: encoder, diagonal Gaussian posterior over latents, decoder.

    ``quant_conv`` maps the encoder's moments to ``2 * embed_dim`` channels (mean, logvar) and
    ``post_quant_conv`` maps a latent back to ``z_channels``; the names are LDM's, kept for
    weight compatibility although nothing is quantised.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        z_channels: int,
        resolution: int,
        in_channels: int,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        norm_groups: int = NUM_GROUPS,
    ) -> None:
        super().__init__()
        for name, value in [
            ("embed_dim", embed_dim),
            ("z_channels", z_channels),
            ("resolution", resolution),
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("ch", ch),
        ]:
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {num_res_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim = embed_dim
        self.in_channels = in_channels
        self.ch_mult = list(ch_mult)
        common = dict(
            ch=ch,
            ch_mult=list(ch_mult),
            num_res_blocks=num_res_blocks,
            attn_resolutions=list(attn_resolutions),
            resolution=resolution,
            z_channels=z_channels,
            dropout=dropout,
            norm_groups=norm_groups,
        )
        self.encoder = Encoder(in_channels=in_channels, **common)
        self.decoder = Decoder(out_channels=out_channels, **common)
        self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, kernel_size=1)

    @classmethod
    def from_config(cls, cfg: AutoencoderConfig) -> KLAutoencoder:
        """Build from the architecture fields of an ``AutoencoderConfig`` (training fields are ignored)."""
        return cls(
            embed_dim=cfg.embed_dim,
            z_channels=cfg.z_channels,
            resolution=cfg.resolution,
            in_channels=cfg.in_channels,
            out_channels=cfg.out_channels,
            ch=cfg.ch,
            ch_mult=list(cfg.ch_mult),
            num_res_blocks=cfg.num_res_blocks,
            attn_resolutions=list(cfg.attn_resolutions),
            dropout=cfg.dropout,
            norm_groups=cfg.norm_groups,
        )

    @property
    def downsample_factor(self) -> int:
        """Spatial factor f between image and latent: 2 ** (len(ch_mult) - 1)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the decoder's output conv (for the adaptive weight of an adversarial loss)."""
        return self.decoder.conv_out.weight

    def encode(self, x: Tensor) -> DiagonalGaussianDistribution:
        """Image [B, in_channels, H, W] -> posterior over latents [B, embed_dim, H/f, W/f]."""
        if x.ndim != 4:
            raise ValueError(f"expected images of shape [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} image channels, got {x.shape[1]}")
        height, width = x.shape[-2:]
        f = self.downsample_factor
        if height % f != 0 or width % f != 0:
            raise ValueError(f"image size {height}x{width} is not divisible by the autoencoder factor {f}")
        moments = self.quant_conv(self.encoder(x))  # [B, 2 * embed_dim, H/f, W/f]
        return DiagonalGaussianDistribution(moments)

    def decode(self, z: Tensor) -> Tensor:
        """Latent [B, embed_dim, h, w] -> image [B, out_channels, h*f, w*f].

        In float16 (half weights, half latents, or fp16 autocast) the decoder runs in float32 and
        the image is cast back: the SD decoder's activations exceed fp16's range (65504), the
        known NaN / black-image failure. bfloat16 has float32's range and keeps its speed.
        """
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"expected latents of shape [B, {self.embed_dim}, h, w], got {tuple(z.shape)}")
        device_type = z.device.type
        fp16_autocast = (
            torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16
        )
        weight_dtype = self.post_quant_conv.weight.dtype
        if not (fp16_autocast or z.dtype == torch.float16 or weight_dtype == torch.float16):
            return self.decoder(self.post_quant_conv(z))
        out_dtype = torch.float16 if weight_dtype == torch.float16 else z.dtype
        with torch.autocast(device_type=device_type, enabled=False):
            if weight_dtype == torch.float32:
                return self.decoder(self.post_quant_conv(z.float())).to(out_dtype)
            # Half weights: run a float32 copy of them, leaving the module as it is.
            params = {k: v.float() for k, v in self.named_parameters()}
            h = torch.func.functional_call(
                self.post_quant_conv, _sub(params, "post_quant_conv."), (z.float(),)
            )
            return torch.func.functional_call(self.decoder, _sub(params, "decoder."), (h,)).to(out_dtype)

    def forward(
        self, x: Tensor, sample_posterior: bool = True, generator: Generators = None
    ) -> tuple[Tensor, DiagonalGaussianDistribution]:
        """Reconstruct ``x`` through a sampled latent (or the posterior mode); return it and the posterior."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


def _sub(params: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
