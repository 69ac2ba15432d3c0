"""open_clip text encoder (frozen unless trainable): captions -> per-token hidden states for cross-attention.

As in Stable Diffusion 2, the states come from the penultimate transformer layer (or the last),
followed by the final LayerNorm. The open_clip model is held as ``model`` (its vision tower
removed), so that an encoder held as ``cond_stage_model`` has SD's state-dict keys
``cond_stage_model.model.*``.

Weights: a pretrained open_clip tag (read from the local open_clip / Hugging Face cache; set
HF_HUB_OFFLINE=1 to forbid any download), a local weights file (.safetensors, or a torch file
loaded with ``weights_only=True``), or none (random weights, seeded: the default experiment).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn

from ldm.config import ConditionerConfig
from ldm.weights.io import load_checked, read_tensors

log = logging.getLogger(__name__)

LAYERS = ("penultimate", "last")


class PretrainedWeightsNotFound(FileNotFoundError):
    """open_clip weights named by a tag that are neither in the local cache nor downloadable."""


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _not_found_message(arch: str, tag: str | None, error: Exception) -> str:
    """One line: what was asked, why it failed, what to do."""
    lines = str(error).strip().splitlines()
    cause = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    where = (
        "are not in the local open_clip / Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading them"
        if _hub_offline()
        else f"could not be loaded ({cause})"
    )
    return (
        f"open_clip '{arch}' weights '{tag}' {where}; put them in the cache (HF_HOME) "
        "or set conditioner.pretrained=/path/to/open_clip_weights.safetensors"
    )


WEIGHT_FILE_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}


def _hf_candidates(arch: str, tag: str) -> tuple[str, list[str]] | None:
    """(repo id, file names open_clip would read) of a tag hosted on the Hugging Face hub, else None."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    hub = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub", "")
    if not hub:
        return None
    repo_id, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo_id, names


def cached_pretrained_file(arch: str, tag: str) -> str | None:
    """The file of open_clip weights `tag` of `arch` in the local Hugging Face cache, or None (no network)."""
    candidates = _hf_candidates(arch, tag)
    if candidates is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo_id, names = candidates
    found = (try_to_load_from_cache(repo_id, name) for name in names)
    return next((path for path in found if isinstance(path, str)), None)


def check_pretrained_available(cfg: ConditionerConfig) -> None:
    """Raise now, before any training, for text-encoder weights that cannot be had: a missing file,
    an unknown model or tag, or (with HF_HUB_OFFLINE=1) a tag that is not in the local cache."""
    pretrained = cfg.pretrained
    if pretrained is None:
        return
    if Path(pretrained).suffix in WEIGHT_FILE_SUFFIXES:
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"weights file not found: {pretrained}")
        return
    if cfg.arch == "custom":
        raise ValueError(
            f"conditioner.arch=custom takes a local weights file or null as pretrained, not the tag '{pretrained}'"
        )
    if cfg.arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model '{cfg.arch}'; see open_clip.list_models() or use 'custom'")
    tags = open_clip.list_pretrained_tags_by_model(cfg.arch)
    if pretrained not in tags:
        available = ", ".join(tags) or "none"
        raise ValueError(
            f"unknown pretrained tag '{pretrained}' for open_clip '{cfg.arch}'; available: {available}"
        )
    candidates = _hf_candidates(cfg.arch, pretrained)
    if _hub_offline() and candidates is not None and cached_pretrained_file(cfg.arch, pretrained) is None:
        raise PretrainedWeightsNotFound(
            _not_found_message(cfg.arch, pretrained, FileNotFoundError(f"{candidates[0]} not cached"))
        )


def without_pretrained(cfg: ConditionerConfig) -> ConditionerConfig:
    """The same network with pretrained=None, for callers that load its weights themselves (a checkpoint).

    A tag can change the architecture: open_clip's "openai" weights use QuickGELU, so such a model
    becomes its ``-quickgelu`` variant.
    """
    arch, tag = cfg.arch, cfg.pretrained
    if tag is not None and arch != "custom" and Path(tag).suffix not in WEIGHT_FILE_SUFFIXES:
        model_cfg = open_clip.get_model_config(arch) or {}
        tag_quick_gelu = open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False)
        if tag_quick_gelu and not model_cfg.get("quick_gelu", False):
            arch = f"{arch}-quickgelu"
            if arch not in open_clip.list_models():
                return cfg  # no tag-free equivalent: keep loading the tag
    return dataclasses.replace(cfg, arch=arch, pretrained=None)


def _custom_clip(cfg: ConditionerConfig) -> nn.Module:
    text_cfg = CLIPTextCfg(
        context_length=cfg.context_length, width=cfg.width, heads=cfg.heads, layers=cfg.layers
    )
    # open_clip builds text and vision towers together; a minimal vision tower is dropped below.
    vision_cfg = CLIPVisionCfg(layers=1, width=32, head_width=32, patch_size=16, image_size=16)
    return open_clip.CLIP(embed_dim=cfg.width, vision_cfg=vision_cfg, text_cfg=text_cfg)


def _text_tower_clip(arch: str) -> nn.Module | None:
    """The text tower of open_clip model `arch` with a minimal vision tower (None for HF text towers).

    Used when the weights do not come from an open_clip tag: building ViT-H-14's 630M-parameter
    vision tower only to delete it would cost seconds and gigabytes.
    """
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None or "hf_model_name" in model_cfg.get("text_cfg", {}):
        return None
    vision_cfg = CLIPVisionCfg(layers=1, width=32, head_width=32, patch_size=16, image_size=16)
    return open_clip.CLIP(
        embed_dim=model_cfg["embed_dim"],
        vision_cfg=vision_cfg,
        text_cfg=CLIPTextCfg(**model_cfg["text_cfg"]),
        quick_gelu=model_cfg.get("quick_gelu", False),
    )


def _build_clip(cfg: ConditionerConfig) -> nn.Module:
    check_pretrained_available(cfg)
    pretrained = cfg.pretrained
    is_file = pretrained is not None and Path(pretrained).suffix in WEIGHT_FILE_SUFFIXES
    if cfg.arch == "custom":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = _custom_clip(cfg)
    else:
        if cfg.arch not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model '{cfg.arch}'; see open_clip.list_models() or use 'custom'"
            )
        tag = None if (pretrained is None or is_file) else pretrained
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = _text_tower_clip(cfg.arch) if tag is None else None
            if model is None:
                try:
                    model = open_clip.create_model(cfg.arch, pretrained=tag, weights_only=True)
                except Exception as e:  # open_clip raises several kinds for a missing download
                    raise PretrainedWeightsNotFound(_not_found_message(cfg.arch, tag, e)) from e
    if is_file:
        state = read_tensors(pretrained)
        text_state = {k: v for k, v in state.items() if not k.startswith("visual.")}
        del model.visual
        load_checked(model, text_state, f"{pretrained} does not fit open_clip '{cfg.arch}'")
        log.info("loaded text encoder weights from %s", pretrained)
        return model
    if hasattr(model, "visual"):
        del model.visual
    return model


class OpenCLIPTextEncoder(nn.Module):
    """open_clip text transformer returning per-token states [B, context_length, width].

    Frozen in eval mode unless `cfg.trainable`; then the parts that produce the states train (not
    the skipped last block of the penultimate layer, the text projection or the logit scale, so
    that no parameter goes without a gradient under DDP).
    """

    def __init__(self, cfg: ConditionerConfig):
        super().__init__()
        if cfg.layer not in LAYERS:
            raise ValueError(f"unknown conditioner layer '{cfg.layer}'; available: {', '.join(LAYERS)}")
        if not 0.0 <= cfg.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {cfg.caption_dropout}")
        if not cfg.causal and cfg.arch != "custom":
            raise ValueError(
                f"conditioner.causal=false needs conditioner.arch=custom: open_clip's '{cfg.arch}' was "
                "trained with the causal mask"
            )
        self.causal = cfg.causal
        self.model = _build_clip(cfg)
        self.layer_index = 1 if cfg.layer == "penultimate" else 0
        self.context_length = self.model.positional_embedding.shape[0]
        if cfg.arch == "custom":
            self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        else:
            self.tokenizer = open_clip.get_tokenizer(cfg.arch, context_length=self.context_length)
        self.trainable = cfg.trainable
        self.requires_grad_(False)
        if self.trainable:
            blocks = self.model.transformer.resblocks
            used = [
                self.model.token_embedding,
                *blocks[: len(blocks) - self.layer_index],
                self.model.ln_final,
            ]
            for module in used:
                module.requires_grad_(True)
            self.model.positional_embedding.requires_grad_(True)
        self.eval()

    @property
    def width(self) -> int:
        return self.model.token_embedding.embedding_dim

    def train(self, mode: bool = True) -> OpenCLIPTextEncoder:
        """Frozen: always stays in eval mode; trainable: as asked."""
        return super().train(mode and self.trainable)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(list(captions))

    def forward(self, captions: list[str]) -> torch.Tensor:
        """Per-token hidden states of `captions`, [B, context_length, width] (with gradients only if trainable)."""
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self._forward(captions)

    def _forward(self, captions: list[str]) -> torch.Tensor:
        device = self.model.token_embedding.weight.device
        tokens = self.tokenize(captions).to(device)
        x = self.model.token_embedding(tokens) + self.model.positional_embedding  # [B, T, D]
        mask = self.model.attn_mask if self.causal else self._padding_mask(tokens)
        blocks = self.model.transformer.resblocks
        for block in blocks[: len(blocks) - self.layer_index]:
            x = block(x, attn_mask=mask)
        return self.model.ln_final(x)

    def _padding_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Additive attention mask [B x heads, T, T] of a bidirectional tower: no token attends to the
        padding after a caption's end-of-text token (every query sees all of its caption)."""
        eot = self.tokenizer.eot_token_id
        batch, length = tokens.shape
        end = (tokens == eot).int().argmax(dim=1)  # the first end-of-text; truncated captions end in one
        padding = torch.arange(length, device=tokens.device)[None, :] > end[:, None]  # [B, T]
        mask = torch.zeros(padding.shape, device=tokens.device).masked_fill(padding, float("-inf"))
        heads = self.model.transformer.resblocks[0].attn.num_heads
        return mask[:, None, None, :].expand(batch, heads, length, length).reshape(-1, length, length)
