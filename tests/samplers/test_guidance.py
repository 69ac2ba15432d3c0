import pytest
import torch

from ldm.samplers.guidance import CFGDenoiser


class Linear:
    """D(x, sigma, context) = x + context, counting calls."""

    calls = 0

    def __call__(self, x, sigma, context):
        self.calls += 1
        return x + context


def test_guidance_formula_in_one_batched_call():
    d = Linear()
    x, sigma = torch.zeros(2, 3), torch.ones(2)
    cond, uncond = torch.full((2, 3), 2.0), torch.full((2, 3), 0.5)
    out = CFGDenoiser(d, 4.0)(x, sigma, cond, uncond)
    torch.testing.assert_close(out, torch.full((2, 3), 0.5 + 4.0 * 1.5))
    assert d.calls == 1


@pytest.mark.parametrize("scale,expected", [(1.0, 2.0), (0.0, 0.5)])
def test_scale_one_is_conditional_and_zero_unconditional(scale, expected):
    out = CFGDenoiser(Linear(), scale)(
        torch.zeros(1, 3), torch.ones(1), torch.full((1, 3), 2.0), torch.full((1, 3), 0.5)
    )
    torch.testing.assert_close(out, torch.full((1, 3), expected))


def test_negative_scale_raises():
    with pytest.raises(ValueError, match="guidance scale must be >= 0, got -1.0"):
        CFGDenoiser(Linear(), -1.0)


def test_guidance_rescale_follows_eq15_16():
    # cond = [1, 2, 3] (std 1), uncond = 0, scale 4: guided = [4, 8, 12] (std 4).
    x, sigma = torch.zeros(1, 3), torch.ones(1)
    cond, uncond = torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3)
    full = CFGDenoiser(Linear(), 4.0, guidance_rescale=1.0)(x, sigma, cond, uncond)
    torch.testing.assert_close(full, cond)  # Eq. 15: rescaled to the conditional std
    blend = CFGDenoiser(Linear(), 4.0, guidance_rescale=0.7)(x, sigma, cond, uncond)
    torch.testing.assert_close(blend, 0.7 * cond + 0.3 * 4 * cond)  # Eq. 16


def test_guidance_rescale_is_per_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=g)
    cond = torch.randn(3, 4, 5, 5, generator=g) * torch.tensor([1.0, 2.0, 3.0])[:, None, None, None]
    uncond = torch.randn(3, 4, 5, 5, generator=g)
    out = CFGDenoiser(Linear(), 7.5, guidance_rescale=1.0)(x, torch.ones(3), cond, uncond)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), (x + cond).std(dim=(1, 2, 3)))
    plain = CFGDenoiser(Linear(), 7.5)(x, torch.ones(3), cond, uncond)
    torch.testing.assert_close(plain, x + uncond + 7.5 * (cond - uncond))


@pytest.mark.parametrize("rescale", [-0.1, 1.5])
def test_guidance_rescale_out_of_range_raises(rescale):
    with pytest.raises(ValueError, match="guidance rescale must be in"):
        CFGDenoiser(Linear(), 5.0, guidance_rescale=rescale)


def test_guidance_interval_guides_only_inside_it():
    cond, uncond = torch.full((3, 2), 2.0), torch.full((3, 2), 0.5)
    x = torch.zeros(3, 2)
    d = Linear()
    guided = CFGDenoiser(d, 4.0, guidance_interval=[0.5, 2.0])
    # Per sample: sigma 0.5 is outside (the interval is open below), 2.0 inside, 3.0 outside.
    out = guided(x, torch.tensor([0.5, 2.0, 3.0]), cond, uncond)
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0], [6.5, 6.5], [2.0, 2.0]]))
    assert d.calls == 1
    # A step wholly outside: the conditional prediction from one unbatched call.
    d.calls = 0
    out = guided(torch.zeros(1, 2), torch.tensor([5.0]), cond[:1], uncond[:1])
    torch.testing.assert_close(out, torch.full((1, 2), 2.0))
    assert d.calls == 1


@pytest.mark.parametrize("interval", [[1.0, 1.0], [2.0, 1.0], [-1.0, 1.0], [1.0]])
def test_a_bad_guidance_interval_raises(interval):
    with pytest.raises(
        ValueError, match="guidance interval must be \\[low, high\\] sigmas with 0 <= low < high"
    ):
        CFGDenoiser(Linear(), 5.0, guidance_interval=interval)


def test_every_step_of_a_run_gets_the_same_batched_context():
    seen = []

    def denoiser(x, sigma, context):
        seen.append(context)
        return x

    cfg = CFGDenoiser(denoiser, 3.0)
    cond, uncond = torch.randn(2, 4, 8), torch.zeros(2, 4, 8)
    with torch.no_grad():
        for _ in range(3):
            cfg(torch.randn(2, 1), torch.ones(2), cond, uncond)
    assert seen[0] is seen[1] is seen[2]
    torch.testing.assert_close(seen[0], torch.cat([uncond, cond]), atol=0, rtol=0)
