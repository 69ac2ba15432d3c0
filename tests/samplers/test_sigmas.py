import pytest
import torch

from ldm.samplers.sigmas import (
    discrete_sigmas,
    discrete_timesteps,
    exponential_sigmas,
    get_sigmas,
    karras_sigmas,
)


def test_spacings_match_their_definitions():
    # Lin et al. 2024, Table 2, for 1000 training steps and 10 sampling steps.
    assert discrete_timesteps(1000, 10, "trailing").tolist() == [
        999,
        899,
        799,
        699,
        599,
        499,
        399,
        299,
        199,
        99,
    ]
    assert discrete_timesteps(1000, 10, "leading").tolist() == [
        901,
        801,
        701,
        601,
        501,
        401,
        301,
        201,
        101,
        1,
    ]
    assert discrete_timesteps(1000, 10, "linspace").tolist() == [
        999,
        888,
        777,
        666,
        555,
        444,
        333,
        222,
        111,
        0,
    ]


def test_discrete_sigmas_descend_to_zero():
    model_sigmas = torch.linspace(0.1, 10, 1000)
    s = discrete_sigmas(model_sigmas, 4)
    assert s.tolist() == pytest.approx(
        [10.0, model_sigmas[749].item(), model_sigmas[499].item(), model_sigmas[249].item(), 0.0]
    )


@pytest.mark.parametrize(
    "steps,spacing,message",
    [
        (0, "trailing", "steps must be between 1 and 1000, got 0"),
        (1001, "trailing", "steps must be between 1 and 1000, got 1001"),
        (10, "karras", "unknown timestep spacing 'karras'"),
    ],
)
def test_bad_arguments(steps, spacing, message):
    with pytest.raises(ValueError, match=message):
        discrete_timesteps(1000, steps, spacing)


def test_karras_sigmas_follow_eq5():
    s = karras_sigmas(5, 0.1, 10.0, rho=7.0, dtype=torch.float64)
    ramp = torch.linspace(0, 1, 5, dtype=torch.float64)
    expected = (10.0 ** (1 / 7) + ramp * (0.1 ** (1 / 7) - 10.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(s[:-1], expected)
    assert s[0].item() == pytest.approx(10.0) and s[-2].item() == pytest.approx(0.1) and s[-1] == 0
    # rho = 1 is a linear ramp.
    torch.testing.assert_close(
        karras_sigmas(4, 1.0, 4.0, rho=1.0, dtype=torch.float64)[:-1],
        torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64),
    )


def test_exponential_sigmas_have_a_constant_ratio():
    s = exponential_sigmas(4, 0.01, 10.0, dtype=torch.float64)
    torch.testing.assert_close(s[:-1], torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=torch.float64))
    assert s[-1] == 0


def test_get_sigmas_spans_the_model_range():
    model_sigmas = torch.linspace(0.03, 14.6, 1000)
    for schedule in ("karras", "exponential"):
        s = get_sigmas(model_sigmas, 7, schedule)
        assert s.shape == (8,) and s.dtype == model_sigmas.dtype
        assert s[0].item() == pytest.approx(14.6) and s[-2].item() == pytest.approx(0.03) and s[-1] == 0
        assert torch.all(s[1:] < s[:-1])
    torch.testing.assert_close(
        get_sigmas(model_sigmas, 4, "discrete", "linspace"), discrete_sigmas(model_sigmas, 4, "linspace")
    )
    assert get_sigmas(model_sigmas, 1, "karras").tolist() == pytest.approx([14.6, 0.0])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"schedule": "cosine"}, "unknown sigma schedule 'cosine'; available: discrete, karras, exponential"),
        ({"spacing": "middle"}, "unknown timestep spacing 'middle'"),
        ({"steps": 0, "schedule": "karras"}, "steps must be >= 1"),
    ],
)
def test_get_sigmas_rejects_bad_names(kwargs, message):
    args = {"steps": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        get_sigmas(torch.linspace(0.03, 14.6, 1000), **args)
