"""ldm/denoiser/unet.py's guidance-scale input (guidance_embed_dim): an MLP of w's features added to the
time embedding, starting at zero; no keys and no input when off."""

import pytest
import torch

from ldm.denoiser import UNetModel
from tests.conftest import assert_float32_close
from tests.denoiser.test_unet import TINY, _inputs, _randomized


def test_off_by_default_with_the_keys_of_before():
    plain = UNetModel(**TINY)
    assert plain.guidance_embed is None
    assert not any("guidance" in k for k in plain.state_dict())
    guided = UNetModel(**TINY, guidance_embed_dim=32)
    extra = sorted(guided.state_dict().keys() - plain.state_dict().keys())
    assert extra == [f"guidance_embed.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]
    assert guided.guidance_embed[0].weight.shape == (4 * 32, 32)  # features -> the time embedding's width


def test_a_student_starts_as_its_teachers_conditional_model():
    teacher = _randomized(UNetModel(**TINY)).eval()
    student = UNetModel(**TINY, guidance_embed_dim=32).eval()
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("guidance_embed.") for k in missing)
    x, t, context = _inputs()
    with torch.no_grad():
        expected = teacher(x, t, context)
        for w in (1.0, 5.0, torch.tensor([2.0, 7.5])):
            assert torch.equal(student(x, t, context, guidance=torch.as_tensor(w)), expected)


def test_the_embedding_is_added_to_the_time_embedding():
    # With the MLP's last layer a constant c, the student is the teacher with the time MLP's bias + c.
    teacher = _randomized(UNetModel(**TINY)).eval()
    student = UNetModel(**TINY, guidance_embed_dim=16).eval()
    student.load_state_dict(teacher.state_dict(), strict=False)
    shift = torch.randn(4 * 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        student.guidance_embed[2].bias.copy_(shift)
        teacher.time_embed[2].bias.add_(shift)
        x, t, context = _inputs()
        torch.testing.assert_close(student(x, t, context, guidance=torch.tensor(3.0)), teacher(x, t, context))


def test_the_output_depends_on_w_per_sample():
    model = _randomized(UNetModel(**TINY, guidance_embed_dim=32)).eval()
    x, t, context = _inputs()
    with torch.no_grad():
        both = model(x, t, context, guidance=torch.tensor([2.0, 6.0]))
        first = model(x[:1], t[:1], context[:1], guidance=torch.tensor([2.0]))
        second = model(x[1:], t[1:], context[1:], guidance=torch.tensor(6.0))
        other = model(x, t, context, guidance=torch.tensor([6.0, 2.0]))
    assert_float32_close(both, torch.cat([first, second]))
    assert (both - other).abs().amax(dim=(1, 2, 3)).min() > 1e-3


def test_guidance_is_required_exactly_when_the_network_takes_it():
    x, t, context = _inputs()
    with pytest.raises(ValueError, match="takes the guidance scale as an input"):
        UNetModel(**TINY, guidance_embed_dim=8)(x, t, context)
    with pytest.raises(ValueError, match="has no guidance input"):
        UNetModel(**TINY)(x, t, context, guidance=torch.ones(2))
    with pytest.raises(ValueError, match=r"guidance must have shape \(2,\) or be a scalar, got \(3,\)"):
        UNetModel(**TINY, guidance_embed_dim=8)(x, t, context, guidance=torch.ones(3))
    with pytest.raises(ValueError, match="guidance_embed_dim must be >= 0"):
        UNetModel(**TINY, guidance_embed_dim=-1)
