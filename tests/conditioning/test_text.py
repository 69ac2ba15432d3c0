import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from ldm.conditioning.text import OpenCLIPTextEncoder
from ldm.config import ConditionerConfig

TINY = ConditionerConfig(arch="custom", pretrained=None, context_length=16, width=32, heads=2, layers=3)


def test_last_layer_agrees_with_open_clip_encode_text():
    # Independent reference: open_clip's own text forward, pooled at the end-of-text token.
    enc = OpenCLIPTextEncoder(dataclasses.replace(TINY, layer="last"))
    captions = ["a red circle", "a small blue square in the top left"]
    states = enc(captions)
    tokens = enc.tokenize(captions)
    pooled = states[torch.arange(2), tokens.argmax(dim=-1)] @ enc.model.text_projection
    torch.testing.assert_close(pooled, enc.model.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_penultimate_skips_the_last_block():
    last = OpenCLIPTextEncoder(dataclasses.replace(TINY, layer="last"))
    penult = OpenCLIPTextEncoder(TINY)
    penult.load_state_dict(last.state_dict())
    m = last.model
    tokens = last.tokenize(["a green triangle"])
    x = m.token_embedding(tokens) + m.positional_embedding
    for block in m.transformer.resblocks[:2]:
        x = block(x, attn_mask=m.attn_mask)
    torch.testing.assert_close(penult(["a green triangle"]), m.ln_final(x))
    assert not torch.allclose(penult(["a green triangle"]), last(["a green triangle"]))


def test_shape_frozen_and_seeded():
    enc = OpenCLIPTextEncoder(TINY)
    assert enc(["a", "b", ""]).shape == (3, 16, 32)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training
    again = OpenCLIPTextEncoder(TINY)
    torch.testing.assert_close(enc(["a red circle"]), again(["a red circle"]))
    other = OpenCLIPTextEncoder(dataclasses.replace(TINY, init_seed=1))
    assert not torch.allclose(enc(["a red circle"]), other(["a red circle"]))
    # SD key layout under cond_stage_model.model.*
    assert "model.transformer.resblocks.0.attn.in_proj_weight" in enc.state_dict()
    assert not any(k.startswith("model.visual") for k in enc.state_dict())


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_from_a_local_file(tmp_path, suffix):
    source = OpenCLIPTextEncoder(dataclasses.replace(TINY, init_seed=7))
    state = {k[len("model.") :]: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"text{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = OpenCLIPTextEncoder(dataclasses.replace(TINY, pretrained=str(path)))
    torch.testing.assert_close(loaded(["a cyan square"]), source(["a cyan square"]))


def test_bad_weights_and_names(tmp_path):
    with pytest.raises(FileNotFoundError):
        OpenCLIPTextEncoder(dataclasses.replace(TINY, pretrained=str(tmp_path / "missing.safetensors")))
    path = tmp_path / "wrong.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="does not fit"):
        OpenCLIPTextEncoder(dataclasses.replace(TINY, pretrained=str(path)))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        OpenCLIPTextEncoder(dataclasses.replace(TINY, arch="ViT-Q-99", pretrained=None))
    with pytest.raises(ValueError, match="layer"):
        OpenCLIPTextEncoder(dataclasses.replace(TINY, layer="middle"))
