import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from ldm.conditioning.text import (
    OpenCLIPTextEncoder,
    PretrainedWeightsNotFound,
    cached_pretrained_file,
    check_pretrained_available,
    without_pretrained,
)
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


def test_trainable_encoder_trains_what_produces_the_states():
    enc = OpenCLIPTextEncoder(dataclasses.replace(TINY, trainable=True))
    enc.train()
    assert enc.training
    states = enc(["a red circle"])
    states.square().mean().backward()
    trained = {n for n, p in enc.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in enc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained == with_grad  # every trainable parameter gets a gradient (DDP needs no unused ones)
    assert (
        "model.token_embedding.weight" in trained and "model.transformer.resblocks.1.ln_1.weight" in trained
    )
    assert not any(n.startswith("model.transformer.resblocks.2.") for n in trained)  # penultimate: unused
    with torch.no_grad():
        assert not enc(["a red circle"]).requires_grad


def test_uncached_weights_offline_give_one_clear_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    cfg = ConditionerConfig(arch="ViT-B-32", pretrained="laion2b_s34b_b79k")
    with pytest.raises(PretrainedWeightsNotFound) as error:
        check_pretrained_available(cfg)
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, FileNotFoundError)
    assert (
        "'ViT-B-32' weights 'laion2b_s34b_b79k' are not in the local" in message
        and "HF_HUB_OFFLINE=1" in message
    )
    with pytest.raises(
        ValueError, match="unknown pretrained tag 'laion9b' for open_clip 'ViT-B-32'; available: "
    ):
        check_pretrained_available(dataclasses.replace(cfg, pretrained="laion9b"))


def test_cached_pretrained_file_is_found_in_the_local_cache_only(tmp_path, monkeypatch):
    import open_clip
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    assert cached_pretrained_file("ViT-B-32", "laion2b_s34b_b79k") is None
    # The cache's layout: models--ORG--NAME/refs/main names the snapshot that holds the files.
    repo = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")["hf_hub"].rstrip("/")
    folder = tmp_path / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    (folder / "snapshots" / "0123abcd").mkdir(parents=True)
    weights = folder / "snapshots" / "0123abcd" / "open_clip_model.safetensors"
    weights.write_bytes(b"")
    assert cached_pretrained_file("ViT-B-32", "laion2b_s34b_b79k") == str(weights)
    assert cached_pretrained_file("ViT-B-32", "openai") is None  # another repository


def test_without_pretrained_keeps_the_network():
    assert without_pretrained(ConditionerConfig()).arch == "ViT-H-14"  # SD 2's tag needs no QuickGELU
    openai = without_pretrained(ConditionerConfig(arch="ViT-L-14", pretrained="openai"))
    assert (openai.arch, openai.pretrained) == ("ViT-L-14-quickgelu", None)


def test_bidirectional_tower_sees_the_whole_caption_and_not_the_padding():
    enc = OpenCLIPTextEncoder(dataclasses.replace(TINY, causal=False))
    captions = ["a red circle to the left of a blue square", "a green triangle", ""]
    states = enc(captions)
    # Independent reference: each caption alone, cut at its end-of-text token, through the blocks
    # with no mask at all; its tokens' states must be those of the padded batch.
    m = enc.model
    for row, tokens in enumerate(enc.tokenize(captions)):
        n = int((tokens == enc.tokenizer.eot_token_id).nonzero()[0]) + 1
        x = m.token_embedding(tokens[None, :n]) + m.positional_embedding[:n]
        for block in m.transformer.resblocks[:2]:
            x = block(x)
        torch.testing.assert_close(states[row, :n], m.ln_final(x)[0], rtol=1e-5, atol=1e-5)
    # The first object's tokens (positions 1-3) know the relation word only without the causal mask.
    causal = OpenCLIPTextEncoder(TINY)
    causal.load_state_dict(enc.state_dict())
    pair = ["a red circle to the left of a blue square", "a red circle to the right of a blue square"]
    assert (enc(pair)[0, 1:4] - enc(pair)[1, 1:4]).abs().max() > 1e-3
    torch.testing.assert_close(causal(pair)[0, 1:4], causal(pair)[1, 1:4])


def test_bidirectional_needs_the_custom_tower():
    with pytest.raises(ValueError, match="causal=false needs conditioner.arch=custom"):
        OpenCLIPTextEncoder(ConditionerConfig(arch="ViT-B-32", pretrained=None, causal=False))
