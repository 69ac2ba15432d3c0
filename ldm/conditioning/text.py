"""Frozen open_clip text encoder: captions -> per-token hidden states for cross-attention.

As in Stable Diffusion 2, the states come from the penultimate transformer layer (or the last),
followed by the final LayerNorm. The open_clip model is held as ``model`` (its vision tower
removed), so that an encoder held as ``cond_stage_model`` has SD's state-dict keys
``cond_stage_model.model.*``.

Weights: a pretrained open_clip tag (read from the local open_clip / Hugging Face cache; set
HF_HUB_OFFLINE=1 to forbid any download), a local weights file (.safetensors, or a torch file
loaded with ``weights_only=True``), or none (random weights, seeded: the default experiment).
"""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn

from ldm.config import ConditionerConfig

log = logging.getLogger(__name__)

LAYERS = ("penultimate", "last")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a torch file with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _custom_clip(cfg: ConditionerConfig) -> nn.Module:
    text_cfg = CLIPTextCfg(
        context_length=cfg.context_length, width=cfg.width, heads=cfg.heads, layers=cfg.layers
    )
    # open_clip builds text and vision towers together; a minimal vision tower is dropped below.
    vision_cfg = CLIPVisionCfg(layers=1, width=32, head_width=32, patch_size=16, image_size=16)
    return open_clip.CLIP(embed_dim=cfg.width, vision_cfg=vision_cfg, text_cfg=text_cfg)


def _build_clip(cfg: ConditionerConfig) -> nn.Module:
    pretrained = cfg.pretrained
    is_file = pretrained is not None and (
        Path(pretrained).suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}
    )
    if cfg.arch == "custom":
        if pretrained is not None and not is_file:
            raise ValueError(
                f"conditioner.arch=custom takes a local weights file or null as pretrained, not the tag '{pretrained}'"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = _custom_clip(cfg)
    else:
        if cfg.arch not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model '{cfg.arch}'; see open_clip.list_models() or use 'custom'"
            )
        tag = None if (pretrained is None or is_file) else pretrained
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.init_seed)
                model = open_clip.create_model(cfg.arch, pretrained=tag, weights_only=True)
        except Exception as e:  # open_clip raises several kinds for a missing download
            raise RuntimeError(
                f"could not load open_clip '{cfg.arch}' pretrained='{tag}' ({type(e).__name__}: {e}). "
                "Put the weights in the local cache or point conditioner.pretrained at a local file."
            ) from e
    if is_file:
        state = load_state_dict_file(pretrained)
        text_state = {k: v for k, v in state.items() if not k.startswith("visual.")}
        del model.visual
        missing, unexpected = model.load_state_dict(text_state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{pretrained} does not fit open_clip '{cfg.arch}': missing keys {missing[:5]}, "
                f"unexpected keys {unexpected[:5]}"
            )
        log.info("loaded text encoder weights from %s", pretrained)
        return model
    if hasattr(model, "visual"):
        del model.visual
    return model


class OpenCLIPTextEncoder(nn.Module):
    """Frozen open_clip text transformer returning per-token states [B, context_length, width]."""

    def __init__(self, cfg: ConditionerConfig):
        super().__init__()
        if cfg.layer not in LAYERS:
            raise ValueError(f"unknown conditioner layer '{cfg.layer}'; available: {', '.join(LAYERS)}")
        if not 0.0 <= cfg.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {cfg.caption_dropout}")
        self.model = _build_clip(cfg)
        self.layer_index = 1 if cfg.layer == "penultimate" else 0
        self.context_length = self.model.positional_embedding.shape[0]
        if cfg.arch == "custom":
            self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        else:
            self.tokenizer = open_clip.get_tokenizer(cfg.arch, context_length=self.context_length)
        self.requires_grad_(False)
        self.eval()

    @property
    def width(self) -> int:
        return self.model.token_embedding.embedding_dim

    def train(self, mode: bool = True) -> OpenCLIPTextEncoder:
        """Frozen: always stays in eval mode."""
        return super().train(False)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(list(captions))

    @torch.no_grad()
    def forward(self, captions: list[str]) -> torch.Tensor:
        """Per-token hidden states of `captions`, [B, context_length, width]."""
        device = self.model.token_embedding.weight.device
        tokens = self.tokenize(captions).to(device)
        x = self.model.token_embedding(tokens) + self.model.positional_embedding  # [B, T, D]
        blocks = self.model.transformer.resblocks
        for block in blocks[: len(blocks) - self.layer_index]:
            x = block(x, attn_mask=self.model.attn_mask)
        return self.model.ln_final(x)
