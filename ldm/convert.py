"""``python -m ldm.convert to-sd|from-sd``: ldm stage-2 checkpoints to and from SD's single-file layout.

    # ldm -> SD (.safetensors by default, or .ckpt): model.diffusion_model.*, first_stage_model.*,
    # cond_stage_model.model.*, scale_factor; the EMA U-Net when the run kept one (--no-ema: the raw one)
    python -m ldm.convert to-sd --ckpt outputs/<run>/checkpoints/last.ckpt --out model.safetensors

    # An SD file does not record the architecture, so beside it (unless --no-configs) come
    #   model.yaml                       LDM/SD's inference config (v2-inference.yaml's layout)
    #   model-diffusers/unet/config.json, vae/config.json, scheduler/scheduler_config.json
    # each only where every setting can be stated (else a warning names the one that cannot: LDM's
    # yaml has no GroupNorm groups, so the tiny presets' 8-group autoencoder gets no model.yaml).
    # diffusers: AutoencoderKL.from_single_file(FILE, config="model-diffusers", subfolder="vae")

    # SD -> ldm, given the architecture (an SD file does not record it)
    python -m ldm.convert from-sd --sd v2-1_512-ema-pruned.safetensors --arch sd2 --out sd2.ckpt
    python -m ldm.sample txt2img --ckpt sd2.ckpt --prompt "..."

.ckpt files are read with torch.load(weights_only=True). ``scripts/convert_checkpoint.py`` is this command.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from ldm.cli import command_parser, run_command
from ldm.weights.export import export_sd
from ldm.weights.io import read_tensors, write_torch_file
from ldm.weights.sd import ldm_checkpoint_from_sd, sd_architectures

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of ``python -m ldm.convert``."""
    p = command_parser("python -m ldm.convert", __doc__)
    sub = p.add_subparsers(dest="direction", required=True)
    to_sd = sub.add_parser("to-sd", help="ldm stage-2 checkpoint -> SD single file")
    to_sd.add_argument("--ckpt", required=True, help="ldm stage-2 checkpoint (<run>/checkpoints/last.ckpt)")
    to_sd.add_argument("--out", required=True, help="output file: .safetensors, or .ckpt for a torch file")
    to_sd.add_argument("--no-ema", action="store_true", help="export the raw U-Net even if an EMA was kept")
    to_sd.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast floating tensors")
    to_sd.add_argument(
        "--no-configs",
        action="store_true",
        help="write the single file only, without <stem>.yaml and <stem>-diffusers/ (the architecture)",
    )
    presets = sd_architectures()
    from_sd = sub.add_parser("from-sd", help="SD single file -> ldm stage-2 checkpoint")
    from_sd.add_argument("--sd", required=True, help="SD checkpoint (.safetensors or .ckpt)")
    from_sd.add_argument(
        "--arch",
        required=True,
        help="; ".join(f"{name}: {arch.description}" for name, arch in presets.items())
        + "; or a run's config.yaml",
    )
    from_sd.add_argument("--out", required=True, help="output ldm checkpoint (.ckpt)")
    from_sd.add_argument(
        "--scale-factor", type=float, default=None, help="latent scale (default: the file's, else 0.18215)"
    )
    return p.parse_args(argv)


def convert(args: argparse.Namespace) -> Path:
    """Run the conversion that `args` describes; returns the file written."""
    out = Path(args.out)
    if args.direction == "to-sd":
        dtype = DTYPES[args.dtype] if args.dtype else None
        export_sd(args.ckpt, out, use_ema=not args.no_ema, dtype=dtype, configs=not args.no_configs)
        return out
    if out.suffix == ".safetensors":
        raise ValueError("an ldm checkpoint is a torch file with its config: give --out NAME.ckpt")
    checkpoint = ldm_checkpoint_from_sd(read_tensors(args.sd), args.arch, scale_factor=args.scale_factor)
    write_torch_file(checkpoint, out)
    log.info("wrote the ldm checkpoint %s (sample with: python -m ldm.sample txt2img --ckpt %s)", out, out)
    return out


def run(argv: list[str] | None = None) -> Path:
    """Parse the flags and convert; returns the file written (raises on bad input)."""
    return convert(parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    """The ``python -m ldm.convert`` / ``ldm-convert`` command."""
    run_command(run, argv)


if __name__ == "__main__":
    main()
