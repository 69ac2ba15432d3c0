"""Seconds per AdamW step over a config's U-Net: the per-parameter loop, ``foreach`` and ``fused``.

    python benchmarks/bench_optimizer.py -- experiment=shapes      # the shapes preset's 3.9M-parameter U-Net
    python benchmarks/bench_optimizer.py -- experiment=sd2_base    # SD 2 base's 866M (needs ~18 GB of memory)

Composes the training config (Hydra overrides after ``--``), builds its U-Net on this machine's
default device, gives every parameter a fixed random gradient and times ``optimizer.step()`` of
``torch.optim.AdamW`` with the training run's learning rate and weight decay in each implementation:
the median of ``--steps`` steps after one untimed step (which allocates the moments). The weights
are reset before each implementation, and the first 1,024 entries of every parameter after the last
step are compared with the loop's, so that a faster implementation that computed something else
would show. Training builds its optimizer with ``ldm.optim.adamw``: fused where the device has it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ldm.denoiser.unet import UNetModel
from ldm.training.config_store import compose_config

IMPLEMENTATIONS = {
    "loop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True, "fused": False},
    "fused": {"foreach": False, "fused": True},
}
PROBE = 1024
"""Entries of each parameter compared between implementations (a full copy would double the memory)."""


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_adamw_steps(
    parameters: list[torch.nn.Parameter], steps: int, lr: float, weight_decay: float, seed: int = 0
) -> dict[str, dict]:
    """Per implementation: the seconds of each timed step, their median, and the largest difference of
    the probed weights from the loop's after the last step."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    generator = torch.Generator()
    results: dict[str, dict] = {}
    reference: list[torch.Tensor] | None = None
    for name, flags in IMPLEMENTATIONS.items():
        # Every implementation starts from the same weights and sees the same gradients.
        generator.manual_seed(seed)
        with torch.no_grad():
            for p in parameters:
                p.copy_(torch.randn(p.shape, generator=generator))
                p.grad = torch.randn(p.shape, generator=generator).to(p.device)
        initial = [p.detach().flatten()[:PROBE].clone() for p in parameters]
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, **flags)
        optimizer.step()  # allocates the moments
        seconds = []
        for _ in range(steps):
            _synchronize(parameters[0].device)
            start = time.perf_counter()
            optimizer.step()
            _synchronize(parameters[0].device)
            seconds.append(time.perf_counter() - start)
        probe = [p.detach().flatten()[:PROBE].clone() for p in parameters]
        reference = probe if reference is None else reference
        results[name] = {
            "seconds": seconds,
            "median_s": statistics.median(seconds),
            "max_abs_change": max((a - b).abs().max().item() for a, b in zip(probe, initial)),
            "max_abs_difference_from_loop": max((a - b).abs().max().item() for a, b in zip(probe, reference)),
        }
        del optimizer
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = compose_config(args.overrides)
    unet = UNetModel.from_config(config.denoiser)
    parameters = [p for p in unet.parameters() if p.requires_grad]
    count = sum(p.numel() for p in parameters)
    results = time_adamw_steps(
        parameters, args.steps, config.diffusion.learning_rate, config.diffusion.weight_decay
    )
    loop = results["loop"]["median_s"]
    lines = [
        f"U-Net: {count / 1e6:.2f}M parameters in {len(parameters)} tensors, {torch.get_num_threads()} threads",
        "| implementation | s/step (median) | speed-up over loop | max difference from loop |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['median_s']:.4f} | {loop / r['median_s']:.1f}x | {r['max_abs_difference_from_loop']:.1e} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    report = {
        "overrides": args.overrides,
        "parameters": count,
        "tensors": len(parameters),
        "results": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
