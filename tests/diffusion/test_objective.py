import pytest
import torch

from ldm.diffusion.objective import DiffusionObjective, q_sample, sample_noise, training_target
from ldm.diffusion.schedules import alphas_cumprod_from_betas, make_betas, rescale_zero_terminal_snr

AC = alphas_cumprod_from_betas(make_betas("linear", 100, 1e-4, 0.02))


def test_v_target_recovers_x0_and_eps():
    z0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    a = AC.float()[torch.tensor([0, 50, 99])]
    z_t = q_sample(z0, a, eps)
    v = training_target(z0, eps, a, "v")
    s, c = a.sqrt()[:, None, None, None], (1 - a).sqrt()[:, None, None, None]
    torch.testing.assert_close(s * z_t - c * v, z0, rtol=1e-5, atol=1e-5)  # Salimans & Ho 2022
    torch.testing.assert_close(c * z_t + s * v, eps, rtol=1e-5, atol=1e-5)


class NoiseRecorder(torch.nn.Module):
    """Returns a fixed guess and records the inputs, to check the loss arithmetic."""

    def forward(self, z_t, t, context):
        self.z_t, self.t = z_t, t
        return torch.zeros_like(z_t)


def test_loss_is_mse_to_the_noise_for_eps():
    objective = DiffusionObjective(AC, "eps")
    z0 = torch.randn(8, 4, 4, 4)
    net = NoiseRecorder()
    g = torch.Generator().manual_seed(3)
    loss = objective(net, z0, None, generator=g)
    # Recompute the same draws: t first, then the noise.
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 100, (8,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    torch.testing.assert_close(net.t, t)
    torch.testing.assert_close(net.z_t, q_sample(z0, AC.float()[t], noise))
    torch.testing.assert_close(loss, noise.pow(2).mean())


def test_oracle_x0_network_has_zero_loss():
    z0 = torch.randn(4, 4, 2, 2)

    class Oracle(torch.nn.Module):
        def forward(self, z_t, t, context):
            return z0

    assert DiffusionObjective(AC, "x0")(Oracle(), z0, None).item() == 0.0


class ConstantNetwork(torch.nn.Module):
    """Predicts a constant, and records its inputs."""

    def forward(self, z_t, t, context):
        self.z_t, self.t = z_t, t
        return torch.full_like(z_t, 0.3)


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0"])
def test_min_snr_loss_equals_a_hand_computation(parameterization):
    objective = DiffusionObjective(AC, parameterization, loss_weighting="min_snr", min_snr_gamma=2.0)
    z0 = torch.randn(6, 4, 2, 2)
    net = ConstantNetwork()
    loss = objective(net, z0, None, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 100, (6,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    a = AC.float()[t]
    snr = a / (1 - a)
    weight = {"eps": (2.0 / snr).clamp(max=1), "v": snr.clamp(max=2.0) / (snr + 1), "x0": snr.clamp(max=2.0)}
    target = training_target(z0, noise, a, parameterization)
    expected = (weight[parameterization] * (0.3 - target).pow(2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_element_weights_weigh_each_samples_mean(weighting):
    objective = DiffusionObjective(AC, "eps", loss_weighting=weighting, min_snr_gamma=2.0)
    z0 = torch.randn(3, 4, 2, 2)
    weights = torch.ones(3, 1, 2, 2)
    weights[0, 0, 0, 0] = 5.0  # one cell of the first sample counts five times, in all 4 channels
    weights[2] = 0.5  # a constant weight changes nothing
    draws = dict(generator=torch.Generator().manual_seed(2))
    loss = objective(ConstantNetwork(), z0, None, **draws, element_weights=weights)
    plain = objective(ConstantNetwork(), z0, None, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    t = torch.randint(0, 100, (3,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    error = (0.3 - noise).pow(2)  # eps target
    per_sample = error.mean(dim=(1, 2, 3))
    per_sample[0] = (error[0].sum() + 4 * error[0, :, 0, 0].sum()) / (16 + 4 * 4)
    snr = AC.float()[t] / (1 - AC.float()[t])
    weight = torch.ones(3) if weighting == "uniform" else (2.0 / snr).clamp(max=1)
    torch.testing.assert_close(loss, (weight * per_sample).mean())
    # All weights equal: the plain loss.
    same = objective(ConstantNetwork(), z0, None, generator=torch.Generator().manual_seed(2),
                     element_weights=torch.full((3, 1, 2, 2), 2.0))  # fmt: skip
    torch.testing.assert_close(same, plain)
    assert not torch.allclose(loss, plain)


def test_offset_noise_adds_a_per_channel_constant():
    objective = DiffusionObjective(AC, "eps", offset_noise=0.1)
    z0 = torch.randn(3, 4, 5, 5)
    net = NoiseRecorder()
    loss = objective(net, z0, None, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    t = torch.randint(0, 100, (3,), generator=g)
    noise = torch.randn(z0.shape, generator=g) + 0.1 * torch.randn(3, 4, 1, 1, generator=g)
    torch.testing.assert_close(net.z_t, q_sample(z0, AC.float()[t], noise))
    torch.testing.assert_close(loss, noise.pow(2).mean())
    # Without offset noise the draws are those of the plain objective (the default run is unchanged).
    assert torch.equal(
        sample_noise(z0, 0.0, torch.Generator().manual_seed(5)),
        torch.randn(z0.shape, generator=torch.Generator().manual_seed(5)),
    )


def test_zero_terminal_snr_trains_on_pure_noise_and_refuses_eps():
    ac = alphas_cumprod_from_betas(rescale_zero_terminal_snr(make_betas("linear", 100, 1e-4, 0.02)))
    with pytest.raises(ValueError, match="zero-terminal-SNR schedule needs parameterization v or x0"):
        DiffusionObjective(ac, "eps")
    z0, noise = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    a_T = ac.float()[[99, 99]]
    torch.testing.assert_close(q_sample(z0, a_T, noise), noise)  # z_T is the noise alone
    torch.testing.assert_close(training_target(z0, noise, a_T, "v"), -z0)  # v_T = -x0
    loss = DiffusionObjective(ac, "v", loss_weighting="min_snr")(NoiseRecorder(), z0, None)
    assert torch.isfinite(loss)


def test_bad_objective_options():
    with pytest.raises(ValueError, match="unknown loss_weighting 'snr'; available: uniform, min_snr"):
        DiffusionObjective(AC, "eps", loss_weighting="snr")
    with pytest.raises(ValueError, match="offset_noise must be >= 0"):
        DiffusionObjective(AC, "eps", offset_noise=-0.1)
