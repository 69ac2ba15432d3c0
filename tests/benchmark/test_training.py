"""ldm/benchmark/training.py: the training step, its model FLOPs (closed form and independent counts), MFU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldm.benchmark import timing
from ldm.benchmark.training import TrainingStep, measure_training, step_flops, training_step
from ldm.diffusion.objective import DiffusionObjective
from ldm.diffusion.schedules import alphas_cumprod_from_betas, make_betas
from ldm.flops import FlopCount
from tests.benchmark.conftest import debug_bench


class LastAxisLinear(nn.Module):
    """A network whose only counted op is one W x W linear layer over the last axis of x."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_step_flops_of_a_linear_network_are_the_closed_form():
    b, c, h, w = 3, 4, 5, 6
    network = LastAxisLinear(w)
    objective = DiffusionObjective(alphas_cumprod_from_betas(make_betas("linear", 1000, 1e-4, 2e-2)))
    optimizer = torch.optim.AdamW(network.parameters(), fused=True)
    before = network.linear.weight.detach().clone()
    step = TrainingStep(network, objective, optimizer, torch.randn(b, c, h, w), torch.zeros(b, 1, 1))
    # N = B C H rows of width W: forward 2 N W^2, backward the weight's gradient 2 N W^2 (the input needs
    # none); the bias gradient, the loss and the AdamW update are element-wise (not counted).
    assert step_flops(step, network) == 4 * (b * c * h) * w**2
    assert not torch.equal(network.linear.weight, before)  # the step updated the weights


def test_reported_flops_are_model_flops_counted_independently(squares_clock):
    # Gradient checkpointing on: the step recomputes forward passes, which are not model FLOPs.
    _, settings, networks = debug_bench("denoiser.use_checkpoint=true")
    batch = 2
    z, context = torch.randn(batch, 4, 16, 16), torch.randn(batch, 16, 32)
    with FlopCount() as checkpointed:
        networks.objective(networks.unet.train(), z, context).backward()
    for m in networks.unet.modules():
        if hasattr(m, "use_checkpoint"):
            m.use_checkpoint = False
    with FlopCount() as model:
        networks.objective(networks.unet, z, context).backward()
    for m in networks.unet.modules():
        if hasattr(m, "use_checkpoint"):
            m.use_checkpoint = True
    assert checkpointed.total > model.total

    squares_clock(timing)
    m = measure_training(networks, settings, batch, peak_flops_per_s=1e9)
    flops = m.metrics["flops_per_step"]
    assert (flops.value, flops.unit) == (model.total, "FLOP")
    # Three rounds on the squares clock take 1, 5 and 9 s: the median step is 5 s.
    assert m.metrics["step_seconds"].value == 5
    assert m.metrics["samples_per_s"].value == batch / 5 and m.metrics["samples_per_s"].unit == "samples/s"
    assert m.metrics["flops_per_s"].value == model.total / 5
    assert m.metrics["mfu"].value == pytest.approx(model.total / 5 / 1e9, rel=1e-12)
    assert m.metrics["peak_rss"].unit == "B"


@pytest.mark.parametrize("precision, scaled", [("fp16", True), ("bf16", False), ("32", False)])
def test_fp16_steps_through_a_grad_scaler(precision, scaled):
    torch.manual_seed(0)  # t and noise of the loss
    _, settings, networks = debug_bench(f"bench.precision={precision}")
    optimizer = torch.optim.AdamW(networks.unet.parameters())
    step = training_step(networks.unet.train(), networks, settings, 2, optimizer)
    assert (step.scaler is not None) == scaled
    before = [p.detach().clone() for p in networks.unet.parameters()]
    loss = step()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    after = list(networks.unet.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert sum(not torch.equal(a, b) for a, b in zip(after, before)) == len(before)  # every weight stepped


def test_a_step_without_an_optimizer_leaves_the_weights_and_frees_the_gradients():
    torch.manual_seed(0)
    _, settings, networks = debug_bench("bench.precision=fp16")
    parameters = list(networks.unet.parameters())
    step = training_step(networks.unet.train(), networks, settings, 2, None, parameters)
    assert step.scaler is None  # nothing to unscale without an update
    before = [p.detach().clone() for p in parameters]
    seen = []
    hook = parameters[0].register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.abs().sum().item()))
    loss = step()
    hook.remove()
    assert torch.isfinite(loss)
    assert len(seen) == 1 and seen[0] > 0  # the backward pass ran and reached the first weight
    assert all(p.grad is None for p in parameters)
    assert all(torch.equal(a, b) for a, b in zip(parameters, before))
