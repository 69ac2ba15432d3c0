"""Per-sample generators: a sample's noise, and so the sample, does not depend on its batch."""

import pytest
import torch

from ldm.samplers import SAMPLERS
from ldm.samplers.noise import per_sample_generators, randn_like
from tests.samplers.gaussian import gaussian_denoiser, geometric_sigmas

STOCHASTIC = ("ddpm", "euler_ancestral", "dpmpp_2m_sde")


def test_rows_come_from_their_own_generators():
    x = torch.zeros(3, 2, 4)
    batch = randn_like(x, per_sample_generators([7, 8, 9]))
    alone = randn_like(x[:1], per_sample_generators([8]))
    assert torch.equal(batch[1:2], alone)
    assert torch.equal(batch[0], torch.randn(2, 4, generator=torch.Generator().manual_seed(7)))
    assert not torch.allclose(batch[0], batch[2])


def test_generator_count_must_match_the_batch():
    with pytest.raises(ValueError, match="got 2 generators for a batch of 3 samples"):
        randn_like(torch.zeros(3, 2), per_sample_generators([1, 2]))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_seed_gives_the_same_sample_whatever_the_batch(name):
    sigmas = geometric_sigmas(8)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20
    options = {"eta": 1.0} if name == "ddim" else {}
    sample = SAMPLERS[name]
    batch = sample(
        gaussian_denoiser, x.clone(), sigmas, generator=per_sample_generators([11, 12, 13]), **options
    )
    alone = sample(
        gaussian_denoiser, x[1:2].clone(), sigmas, generator=per_sample_generators([12]), **options
    )
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-12)
    if name in STOCHASTIC or name == "ddim":
        same_start = sample(
            gaussian_denoiser,
            x[1:2].repeat(2, 1, 1, 1),
            sigmas,
            generator=per_sample_generators([12, 99]),
            **options,
        )
        assert not torch.allclose(same_start[0], same_start[1])  # the noise differs by seed
