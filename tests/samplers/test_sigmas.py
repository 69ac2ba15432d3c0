import pytest
import torch

from ldm.samplers.sigmas import discrete_sigmas, discrete_timesteps


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


@pytest.mark.parametrize("steps,spacing", [(0, "trailing"), (1001, "trailing"), (10, "karras")])
def test_bad_arguments(steps, spacing):
    with pytest.raises(ValueError):
        discrete_timesteps(1000, steps, spacing)
