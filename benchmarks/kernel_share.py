"""Where a step's time goes, ours against diffusers': the CPU time of each kind of operator.

    python benchmarks/kernel_share.py -- experiment=shapes bench.batch_sizes=[32]
    python benchmarks/kernel_share.py -- experiment=sd2_base conditioner.pretrained=null \\
        denoiser.use_checkpoint=false bench.resolution=128 bench.batch_sizes=[2]

Builds the same networks as ``python -m ldm.bench ... bench.compare=diffusers`` (our U-Net and
diffusers' ``UNet2DConditionModel`` loaded from our SD-layout export, checked to agree), then runs
``torch.profiler`` over a few training steps (forward, loss, backward; no optimizer) and a few guided
sampling calls of each, and sums the operators' self CPU time by kind: convolution, matrix product,
attention, normalization, the rest (element-wise, copies, layout changes: the overhead around the
kernels). The bound it shows: when both sides spend most of a step in the same convolution and
matrix-product kernels, no rewrite of the code around them can be much faster than
``theirs total / their kernel time``. Writes a Markdown table (and JSON with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from ldm.benchmark.diffusers_compare import (
    agreement_errors,
    check_agreement,
    diffusers_networks,
    sampling_cases,
)
from ldm.benchmark.networks import build_networks, prepare_networks
from ldm.benchmark.settings import resolve_settings
from ldm.benchmark.training import training_step
from ldm.config import BenchRunConfig
from ldm.training.config_store import compose_config

KINDS = {
    "convolution": ("conv", "mkldnn_convolution", "slow_conv", "convolution_backward"),
    "matrix product": ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "_mkl_linear"),
    "attention": ("scaled_dot_product", "flash_attention", "efficient_attention", "softmax"),
    "normalization": ("group_norm", "layer_norm", "native_group_norm", "native_layer_norm"),
}
"""Operator kinds by name fragments (first match wins, in this order); everything else is "other"."""
KERNELS = ("convolution", "matrix product", "attention")
"""The kinds both implementations hand to the same library kernels (oneDNN / MKL / flash attention)."""


def kind_of(name: str) -> str:
    """The kind of an ATen operator name (``aten::mkldnn_convolution`` -> convolution)."""
    op = name.split("::")[-1]
    for kind, fragments in KINDS.items():
        if any(op == f or (len(f) > 3 and f in op) for f in fragments):
            return kind
    return "other"


def self_time_by_kind(events) -> dict[str, float]:
    """Seconds of self CPU time per kind, from a profiler's ``key_averages()``."""
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if not e.key.startswith("aten::"):
            continue
        totals[kind_of(e.key)] += e.self_cpu_time_total / 1e6
    return dict(totals)


def profile_calls(fn, calls: int, warmup: int = 1) -> dict[str, float]:
    """Self CPU seconds per kind, per call of `fn`, over `calls` profiled calls after `warmup` others;
    "outside ATen" is the rest of the wall time (Python, dispatch)."""
    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        wall = time.perf_counter() - start
    times = {k: v / calls for k, v in self_time_by_kind(prof.key_averages()).items()}
    times["outside ATen"] = max(0.0, wall / calls - sum(times.values()))
    return times


def table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: per case and side, milliseconds per kind, total, and the kernels' share."""
    kinds = [*KINDS, "other", "outside ATen"]
    lines = [
        "| case | side | " + " | ".join(f"{k} ms" for k in kinds) + " | total ms | kernels' share |",
        "|---|---|" + "---|" * (len(kinds) + 2),
    ]
    for case, sides in rows.items():
        for side, times in sides.items():
            total = sum(times.values())
            kernels = sum(times.get(k, 0.0) for k in KERNELS)
            cells = " | ".join(f"{1e3 * times.get(k, 0.0):.1f}" for k in kinds)
            lines.append(f"| {case} | {side} | {cells} | {1e3 * total:.1f} | {kernels / total:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=3, help="profiled calls per case")
    p.add_argument("--out", default=None, help="also write the numbers as JSON here")
    p.add_argument("overrides", nargs="*", help="ldm.bench overrides (after --)")
    args = p.parse_args(argv)

    config = compose_config(["bench.device=cpu", *args.overrides], root=BenchRunConfig)
    settings = resolve_settings(config)
    networks = build_networks(config, settings.resolution, seed=config.seed)
    prepare_networks(networks, settings)
    theirs = diffusers_networks(networks)
    check_agreement(agreement_errors(networks, theirs, settings))
    batch = settings.batch_sizes[0]
    sampler = next(iter(settings.samplers.values()), None)

    rows: dict[str, dict[str, dict[str, float]]] = {}
    steps = {
        "ours": training_step(
            networks.denoiser.diffusion_model,
            networks,
            settings,
            batch,
            None,
            list(networks.unet.parameters()),
        ),
        "theirs": training_step(
            theirs.network, networks, settings, batch, None, list(theirs.unet.parameters())
        ),
    }
    networks.unet.train()
    theirs.unet.train()
    rows[f"training forward+backward, batch {batch}"] = {
        s: profile_calls(f, args.calls) for s, f in steps.items()
    }
    if sampler is not None:
        networks.unet.eval()
        runs = sampling_cases(networks, theirs, settings, sampler, batch)
        rows[f"guided sampling, {sampler.steps} steps, batch {batch}"] = {
            s: profile_calls(f, max(1, args.calls // 2)) for s, f in runs.items()
        }
    sys.stdout.write(table(rows) + "\n")
    for case, sides in rows.items():
        theirs_total = sum(sides["theirs"].values())
        theirs_kernels = sum(sides["theirs"].get(k, 0.0) for k in KERNELS)
        ours_total = sum(sides["ours"].values())
        sys.stdout.write(
            f"{case}: ours/theirs {theirs_total / ours_total:.2f}x from profiled CPU time; "
            f"theirs with zero overhead outside the kernels: at most {theirs_total / theirs_kernels:.2f}x\n"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"overrides": args.overrides, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
