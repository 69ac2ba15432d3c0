"""Tests for ldm/denoiser/unet.py: SD 1.5/2 parameter counts and key layout, and a tiny U-Net on CPU."""

import dataclasses
import inspect

import pytest
import torch

from ldm.config import UNetConfig
from ldm.denoiser import UNetModel

SD2 = dict(
    in_channels=4,
    out_channels=4,
    model_channels=320,
    channel_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attention_resolutions=[4, 2, 1],
    num_head_channels=64,
    num_heads=-1,
    transformer_depth=1,
    context_dim=1024,
    use_linear_in_transformer=True,
)
SD15 = {**SD2, "num_heads": 8, "context_dim": 768, "use_linear_in_transformer": False}
TINY = dict(
    in_channels=4,
    out_channels=4,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[1, 2],
    num_head_channels=16,
    num_heads=-1,
    transformer_depth=1,
    context_dim=64,
    use_linear_in_transformer=True,
)


def _on_meta(**kwargs) -> UNetModel:
    with torch.device("meta"):  # shapes only, no memory
        return UNetModel(**kwargs)


def _randomized(model: UNetModel, seed: int = 0) -> UNetModel:
    """Perturb every parameter so that the zero-initialised paths are active too."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(seed: int = 0, batch: int = 2, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    t = torch.tensor([10, 700])[:batch]
    context = torch.randn(batch, 5, 64, generator=g)
    return x, t, context


def test_parameter_counts_match_published_sd2_and_sd15():
    assert sum(p.numel() for p in _on_meta(**SD2).parameters()) == 865_910_724
    assert sum(p.numel() for p in _on_meta(**SD15).parameters()) == 859_520_964


def test_sd2_key_layout():
    state = {k: tuple(v.shape) for k, v in _on_meta(**SD2).state_dict().items()}
    expected = {
        "time_embed.0.weight": (1280, 320),
        "time_embed.2.weight": (1280, 1280),
        "input_blocks.0.0.weight": (320, 4, 3, 3),
        "input_blocks.1.0.in_layers.0.weight": (320,),
        "input_blocks.1.0.in_layers.2.weight": (320, 320, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (320, 1280),
        "input_blocks.1.0.out_layers.3.weight": (320, 320, 3, 3),
        "input_blocks.1.1.norm.weight": (320,),
        "input_blocks.1.1.proj_in.weight": (320, 320),
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight": (320, 1024),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.bias": (320,),
        "input_blocks.1.1.transformer_blocks.0.norm3.weight": (320,),
        "input_blocks.1.1.proj_out.weight": (320, 320),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "input_blocks.11.0.out_layers.3.weight": (1280, 1280, 3, 3),
        "middle_block.0.emb_layers.1.weight": (1280, 1280),
        "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight": (10240, 1280),
        "middle_block.1.transformer_blocks.0.ff.net.2.weight": (1280, 5120),
        "middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "output_blocks.0.0.skip_connection.weight": (1280, 2560, 1, 1),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "output_blocks.11.0.in_layers.0.weight": (640,),
        "output_blocks.11.1.proj_out.weight": (320, 320),
        "out.0.weight": (320,),
        "out.2.weight": (4, 320, 3, 3),
    }
    assert {k: state.get(k) for k in expected} == expected
    assert "input_blocks.1.0.skip_connection.weight" not in state  # identity skip has no parameters
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q.bias" not in state
    # SD 2's UNet has 686 keys: time_embed 4 + input_blocks 248 + middle_block 46 + output_blocks 384 + out 4,
    # where a ResBlock has 10 (12 with a skip conv), a depth-1 SpatialTransformer 26, a down/upsample conv 2:
    # input = 2 (conv_in) + [2*10 + 2*26] + 2 + [12+10 + 2*26] + 2 + [12+10 + 2*26] + 2 + [2*10],
    # output = [3*12 + 2] + 2 * [3*(12+26) + 2] + [3*(12+26)] (every decoder ResBlock has a skip conv).
    assert len(state) == 686


def test_sd15_key_layout():
    state = {k: tuple(v.shape) for k, v in _on_meta(**SD15).state_dict().items()}
    assert len(state) == 686
    assert state["input_blocks.1.1.proj_in.weight"] == (320, 320, 1, 1)
    assert state["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert state["output_blocks.5.1.proj_out.weight"] == (1280, 1280, 1, 1)
    assert state["output_blocks.6.0.skip_connection.weight"] == (640, 1920, 1, 1)


def test_constructor_arguments_are_the_config_fields():
    params = inspect.signature(UNetModel.__init__).parameters
    names = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert names == [f.name for f in dataclasses.fields(UNetConfig)]
    cfg = UNetConfig(**TINY)
    a, b = UNetModel.from_config(cfg), UNetModel(**dataclasses.asdict(cfg))
    assert [k for k in a.state_dict()] == [k for k in b.state_dict()]
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())


def test_position_embedding_keeps_the_layout_and_changes_the_function():
    plain = _randomized(UNetModel(**TINY))
    placed = UNetModel(**TINY, position_embedding=True)
    placed.load_state_dict(plain.state_dict())  # the same keys and shapes: SD's layout
    x, t, context = _inputs()
    with torch.no_grad():
        assert (placed(x, t, context) - plain(x, t, context)).abs().max() > 1e-3


def test_tiny_unet_is_zero_at_init_and_learns():
    torch.manual_seed(0)
    model = UNetModel(**TINY)
    x, t, context = _inputs()
    out = model(x, t, context)
    assert out.shape == (2, 4, 8, 8)
    assert out.abs().max().item() == 0.0  # out.2 is zero-initialised

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    target = torch.randn_like(x)
    for step in range(2):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x, t, context), target).backward()
        optimizer.step()
        if step == 0:
            # only out.2 has a gradient on the first step, but that makes the output nonzero
            assert model(x, t, context).abs().mean().item() > 1e-4
    # after the second step the zero-initialised ResBlocks and transformers have moved too,
    # so the output depends on the context and on the timestep
    with torch.no_grad():
        out = model(x, t, context)
        assert (out - model(x, t, torch.randn_like(context))).abs().max().item() > 1e-5
        assert (out - model(x, t + 100, context)).abs().max().item() > 1e-5


def test_gradient_checkpointing_gives_same_outputs_and_gradients():
    plain = _randomized(UNetModel(**TINY)).train()
    checkpointed = UNetModel(**{**TINY, "use_checkpoint": True}).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, t, context = _inputs()
    results = []
    for model in (plain, checkpointed):
        xg, cg = x.clone().requires_grad_(), context.clone().requires_grad_()
        out = model(xg, t, cg)
        (out**2).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        results.append((out.detach(), xg.grad, cg.grad, grads))
    (out_a, gx_a, gc_a, grads_a), (out_b, gx_b, gc_b, grads_b) = results
    assert out_a.abs().max() > 1e-2
    torch.testing.assert_close(out_b, out_a, atol=1e-6, rtol=0)
    torch.testing.assert_close(gx_b, gx_a, atol=1e-6, rtol=0)
    torch.testing.assert_close(gc_b, gc_a, atol=1e-6, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=0, msg=name)


def test_attention_backends_agree_through_the_unet():
    sdpa = _randomized(UNetModel(**TINY)).eval()
    math_model = UNetModel(**{**TINY, "attention_backend": "math"}).eval()
    math_model.load_state_dict(sdpa.state_dict())
    x, t, context = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(math_model(x, t, context), sdpa(x, t, context), atol=1e-5, rtol=0)


def test_sd15_style_heads_and_conv_projection_run():
    model = _randomized(UNetModel(**{**TINY, "num_heads": 2, "use_linear_in_transformer": False}))
    assert model.state_dict()["input_blocks.1.1.proj_in.weight"].shape == (32, 32, 1, 1)
    x, t, context = _inputs()
    assert model(x, t, context).shape == (2, 4, 8, 8)


def test_continuous_and_scalar_timesteps():
    model = _randomized(UNetModel(**TINY)).eval()
    x, _, context = _inputs()
    with torch.no_grad():
        at_half = model(x, torch.tensor([0.5, 0.5]), context)
        torch.testing.assert_close(model(x, torch.tensor(0.5), context), at_half, atol=0, rtol=0)
        assert (at_half - model(x, torch.tensor([0, 0]), context)).abs().max() > 1e-5


def test_input_validation():
    model = UNetModel(**TINY)
    x, t, context = _inputs()
    with pytest.raises(ValueError, match="9x8 is not divisible by the U-Net's downsampling factor 2"):
        model(torch.randn(2, 4, 9, 8), t, context)
    with pytest.raises(ValueError, match="context_dim=64"):
        model(x, t, torch.randn(2, 5, 32))
    with pytest.raises(ValueError, match="timesteps must have shape"):
        model(x, torch.tensor([1, 2, 3]), context)
    with pytest.raises(ValueError, match=r"x must be \(batch, 4"):
        model(torch.randn(2, 3, 8, 8), t, context)


def test_constructor_validation():
    with pytest.raises(ValueError, match="not divisible by the 32 groups"):
        UNetModel(**{**TINY, "model_channels": 48})
    with pytest.raises(ValueError, match="not divisible by num_head_channels 24"):
        UNetModel(**{**TINY, "num_head_channels": 24})
    with pytest.raises(ValueError, match=r"attention_resolutions \[4\]"):
        UNetModel(**{**TINY, "attention_resolutions": [1, 4]})
    with pytest.raises(ValueError, match="unknown attention_backend 'flash'"):
        UNetModel(**{**TINY, "attention_backend": "flash"})


# --- Image-conditioned layouts: SD x4 upscaler (class embedding, self-attention off) and inpainting ---------

SD_X4 = dict(
    SD2, in_channels=7, concat_channels=3, model_channels=256, channel_mult=[1, 2, 2, 4],
    attention_resolutions=[2, 4, 8], num_heads=8, num_classes=1000,
    disable_self_attentions=[True, True, True, False],
)  # fmt: skip


def test_sd_x4_upscaler_key_layout():
    state = {k: tuple(v.shape) for k, v in _on_meta(**SD_X4).state_dict().items()}
    assert state["input_blocks.0.0.weight"] == (256, 7, 3, 3)
    assert state["label_emb.weight"] == (1000, 1024)  # nn.Embedding(num_classes, 4 * model_channels)
    # Levels 1 and 2 attend to the text in attn1 too (its keys and values come from the 1024-wide context) ...
    assert state["input_blocks.4.1.transformer_blocks.0.attn1.to_k.weight"] == (512, 1024)
    assert state["output_blocks.8.1.transformer_blocks.0.attn1.to_v.weight"] == (512, 1024)
    # ... level 3 and the middle block keep self-attention.
    assert state["input_blocks.10.1.transformer_blocks.0.attn1.to_k.weight"] == (1024, 1024)
    assert state["middle_block.1.transformer_blocks.0.attn1.to_k.weight"] == (1024, 1024)
    assert "input_blocks.1.1.norm.weight" not in state  # level 0: no attention


def test_a_class_label_adds_its_embedding_to_the_timestep_embedding():
    labelled = _randomized(UNetModel(**TINY, num_classes=10))
    plain = UNetModel(**TINY)
    state = {k: v for k, v in labelled.state_dict().items() if k != "label_emb.weight"}
    state["time_embed.2.bias"] = state["time_embed.2.bias"] + labelled.label_emb.weight[7]
    plain.load_state_dict(state)  # the time embedding's last bias carries label 7's embedding
    x, t, context = _inputs()
    with torch.no_grad():
        ours, reference = labelled(x, t, context, class_labels=torch.tensor([7, 7])), plain(x, t, context)
        other = labelled(x, t, context, class_labels=torch.tensor([3, 3]))
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())
    assert (other - ours).abs().max() > 1e-3


@pytest.mark.parametrize("kwargs,labels,message", [
    ({"num_classes": 10}, None, "embeds a class label \\(num_classes=10\\): none given"),
    ({}, torch.tensor([1, 2]), "class_labels were given, but this U-Net has no class embedding"),
    ({"num_classes": 10}, torch.tensor([1.0, 2.0]), r"class_labels must be \(2,\) integers"),
])  # fmt: skip
def test_class_labels_must_match_the_network(kwargs, labels, message):
    model = UNetModel(**TINY, **kwargs)
    with pytest.raises(ValueError, match=message):
        model(*_inputs(), class_labels=labels)


def test_image_conditioning_arguments_are_checked():
    with pytest.raises(ValueError, match="disable_self_attentions has 1 entries for 2 levels"):
        UNetModel(**TINY, disable_self_attentions=[True])
    with pytest.raises(ValueError, match=r"concat_channels must be in \[0, in_channels=4\), got 4"):
        UNetModel(**TINY, concat_channels=4)
