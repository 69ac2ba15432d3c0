"""ldm/benchmark/sampling.py: guided runs as the pipeline samples (one batched 2B call per step), it/s."""

from __future__ import annotations

import pytest
import torch

from ldm.benchmark import timing
from ldm.benchmark.sampling import CallCounter, measure_sampling, sampling_case
from tests.benchmark.conftest import debug_bench


@pytest.mark.parametrize(
    "name, calls", [("ddim", 3), ("heun", 2 * 3 - 1), ("plms", 3 + 1), ("dpmpp_2m_sde", 3)]
)
def test_model_calls_per_run_follow_the_samplers_table(name, calls, squares_clock):
    _, settings, networks = debug_bench(f"bench.samplers=[{name}]", "bench.sample_steps=3", "bench.warmup=1")
    rows = []
    networks.denoiser.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    squares_clock(timing)
    m = measure_sampling(networks, settings, name, settings.samplers[name], 2)
    assert m.metrics["model_calls"].value == calls and m.metrics["model_calls"].unit == "calls/run"
    assert rows == [4] * calls * 4  # conditional and unconditional batched: 2B rows, in 1 warm-up + 3 runs
    assert m.metrics["run_seconds"].value == 5  # the squares clock's rounds: 1, 5, 9 s
    assert m.metrics["it_per_s"].value == 3 / 5 and m.metrics["it_per_s"].unit == "it/s"
    assert m.metrics["images_per_s"].value == 2 / 5
    assert m.case == f"{name} x3, guidance 5"


def test_a_stochastic_run_repeats_exactly():
    _, settings, networks = debug_bench("bench.samplers=[euler_ancestral]", "bench.sample_steps=4")
    run = sampling_case(networks, settings, settings.samplers["euler_ancestral"], 2)
    assert torch.equal(run(), run())  # fresh per-sample generators each run: the same noise is drawn


def test_a_one_step_run_is_the_guided_prediction():
    _, settings, networks = debug_bench(
        "bench.samplers=[ddim]", "bench.sample_steps=1", "bench.guidance_scale=3"
    )
    run = sampling_case(networks, settings, settings.samplers["ddim"], 2)
    # One DDIM step ends at sigma 0: x = D_u + 3 (D_c - D_u), each branch computed here on its own.
    sigma = run.sigmas[0].expand(2)
    text = run.pipe.text_encoder
    with torch.no_grad():
        cond = networks.denoiser(run.x, sigma, text.cond.expand(2, -1, -1))
        uncond = networks.denoiser(run.x, sigma, text.uncond.expand(2, -1, -1))
        expected = uncond + 3 * (cond - uncond)
    assert (cond - uncond).abs().max() > 1e-3  # the two branches differ, so guidance is seen
    # float32 rounding of a batch of 4 against two of 2, times the guidance scale and sigma_max (~15)
    assert (run() - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_call_counter_stops_when_removed():
    layer = torch.nn.Linear(2, 2)
    counter = CallCounter(layer)
    layer(torch.zeros(1, 2))
    layer(torch.zeros(1, 2))
    counter.remove()
    layer(torch.zeros(1, 2))
    assert counter.count == 2
