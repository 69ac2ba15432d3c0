"""One ``python -m ldm.bench`` run: the networks built once, then each measurement, under a progress bar.

Order: the peak matmul; then, per batch size, the training step, each sampler, the autoencoder and
the data loader (as ``bench.parts`` asks); then, with ``bench.compare=diffusers``, the agreement
check (done first of all, before anything is timed) and the side-by-side timings.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ldm.benchmark.autoencoder import measure_autoencoder
from ldm.benchmark.data import measure_data
from ldm.benchmark.networks import BenchNetworks, build_networks, prepare_networks
from ldm.benchmark.peak import measure_peak
from ldm.benchmark.report import Measurement, format_metrics, metadata, report_dict
from ldm.benchmark.sampling import measure_sampling
from ldm.benchmark.settings import BenchSettings, resolve_settings
from ldm.benchmark.training import measure_training
from ldm.config import BenchRunConfig

log = logging.getLogger(__name__)

LoaderFactory = Callable[[int, int], Iterable[Any]]
"""(batch size, resolution) -> the training data loader of those batches."""
Task = tuple[str, Callable[[], list[Measurement]]]


def _our_tasks(
    networks: BenchNetworks, settings: BenchSettings, loader_for: Optional[LoaderFactory], peak: list[float]
) -> list[Task]:
    tasks: list[Task] = []
    for b in settings.batch_sizes:
        if "train" in settings.parts:
            tasks.append(
                (f"train, batch {b}", lambda b=b: [measure_training(networks, settings, b, peak[0])])
            )
        if "sample" in settings.parts:
            for name, sampler in settings.samplers.items():
                tasks.append(
                    (
                        f"{name}, batch {b}",
                        lambda b=b, n=name, s=sampler: [measure_sampling(networks, settings, n, s, b)],
                    )
                )
        if "autoencoder" in settings.parts:
            tasks.append((f"autoencoder, batch {b}", lambda b=b: measure_autoencoder(networks, settings, b)))
        if "data" in settings.parts:
            tasks.append(
                (
                    f"data, batch {b}",
                    lambda b=b: [
                        measure_data(
                            loader_for(b, settings.resolution),
                            b,
                            rounds=settings.rounds,
                            warmup=settings.warmup,
                        )
                    ],
                )
            )
    return tasks


def _comparison_tasks(
    networks: BenchNetworks, settings: BenchSettings
) -> tuple[list[Measurement], list[Task]]:
    """The agreement check (run now) and the side-by-side tasks."""
    from ldm.benchmark import diffusers_compare as compare

    theirs = compare.diffusers_networks(networks)
    theirs.unet.to(settings.device)
    theirs.vae.to(settings.device)
    agreement = compare.check_agreement(compare.agreement_errors(networks, theirs, settings))
    log.info(
        "diffusers' networks agree with ours: %s", format_metrics(dataclasses.asdict(agreement)["metrics"])
    )
    compare.prepare_diffusers(theirs, networks, settings)
    tasks: list[Task] = []
    for b in settings.batch_sizes:
        tasks.append(
            (
                f"compare train, batch {b}",
                lambda b=b: [compare.compare_training(networks, theirs, settings, b)],
            )
        )
        for name, sampler in settings.samplers.items():
            tasks.append(
                (
                    f"compare {name}, batch {b}",
                    lambda b=b, n=name, s=sampler: [
                        compare.compare_sampling(networks, theirs, settings, n, s, b)
                    ],
                )
            )
        tasks.append(
            (
                f"compare autoencoder, batch {b}",
                lambda b=b: compare.compare_autoencoder(networks, theirs, settings, b),
            )
        )
    return [agreement], tasks


def run_benchmark(
    config: BenchRunConfig, *, loader_for: Optional[LoaderFactory] = None, progress: bool = True
) -> dict[str, Any]:
    """Measure what ``config.bench`` asks for; returns the report (metadata, config, settings, measurements).

    `loader_for` builds the training data loader (the data part needs it). On CUDA,
    float32 matrix products use TF32, as training sets them.
    """
    settings = resolve_settings(config)
    if "data" in settings.parts and loader_for is None:
        raise ValueError("bench.parts has data, but no data loader was given to measure")
    torch.manual_seed(config.seed)
    if settings.device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    networks = build_networks(config, settings.resolution, seed=config.seed, ckpt=config.bench.ckpt)
    side = networks.latent_side(settings.resolution)
    log.info(
        "benchmarking on %s, precision %s, %d px (%dx%d latents), batch sizes %s: %s",
        settings.device,
        settings.precision,
        settings.resolution,
        side,
        side,
        settings.batch_sizes,
        ", ".join(settings.parts),
    )
    for module in (networks.denoiser, networks.autoencoder, networks.objective):
        module.to(settings.device)
    measurements: list[Measurement] = []
    comparison: list[Task] = []
    if settings.compare == "diffusers":
        measurements, comparison = _comparison_tasks(networks, settings)
    prepare_networks(networks, settings)
    peak: list[float] = []

    def measure_peak_rate() -> list[Measurement]:
        m = measure_peak(
            settings.device,
            settings.dtype,
            settings.peak_size,
            rounds=settings.rounds,
            warmup=settings.warmup,
        )
        peak.append(m.metrics["flops_per_s"].value)
        return [m]

    tasks = [
        ("peak matmul", measure_peak_rate),
        *_our_tasks(networks, settings, loader_for, peak),
        *comparison,
    ]
    with logging_redirect_tqdm():
        for label, task in tqdm(tasks, desc="ldm.bench", unit="measurement", disable=not progress):
            log.info("measuring %s", label)
            for m in task():
                log.info(
                    "%s %s (batch %s): %s",
                    m.part,
                    m.case,
                    m.batch_size,
                    format_metrics(dataclasses.asdict(m)["metrics"]),
                )
                measurements.append(m)
    return report_dict(
        metadata(settings.device), dataclasses.asdict(config), settings.as_dict(), measurements
    )
