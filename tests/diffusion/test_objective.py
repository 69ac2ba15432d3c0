import torch

from ldm.diffusion.objective import DiffusionObjective, q_sample, training_target
from ldm.diffusion.schedules import alphas_cumprod_from_betas, make_betas

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
