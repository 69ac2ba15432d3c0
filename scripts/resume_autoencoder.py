"""Resume stage-1 training from a checkpoint with a changed config, e.g. switch the discriminator on.

    python scripts/resume_autoencoder.py --ckpt RUN/autoencoder/checkpoints/last.ckpt --run-dir RUN2 \
        autoencoder=kl_tiny autoencoder.max_steps=2000 autoencoder.disc_start=1000 trainer.val_check_interval=250

The trailing arguments are Hydra overrides of ``python -m ldm.train``. Weights, the step count and
the autoencoder optimizer's state come from the checkpoint; entries the checkpoint lacks (a
discriminator and its optimizer, when it had none) start fresh. Measures whether the adversarial
phase changes reconstructions (BENCHMARKS.md, "Autoencoder on the shapes set").
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ldm.autoencoder.module import AutoencoderModule
from ldm.config import compose_config
from ldm.data.shards import build_datamodule
from ldm.train import build_trainer


def main(argv: list[str] | None = None) -> None:
    """Parse flags, compose the config, and fit from the checkpoint."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt", required=True, help="stage-1 Lightning checkpoint to resume from")
    parser.add_argument("--run-dir", required=True, help="where checkpoints, images and logs go")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m ldm.train")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = compose_config(args.overrides)
    run_dir = Path(args.run_dir)
    datamodule = build_datamodule(config.data)
    datamodule.batch_size = config.autoencoder.batch_size or config.data.batch_size
    module = AutoencoderModule(config.autoencoder, gradient_clip_val=config.trainer.gradient_clip_val)
    module.strict_loading = False  # the checkpoint may lack the discriminator
    trainer = build_trainer(config, run_dir, "autoencoder", config.autoencoder.max_steps, [])
    trainer.fit(module, datamodule=datamodule, ckpt_path=args.ckpt)
    trainer.save_checkpoint(run_dir / "autoencoder" / "checkpoints" / "last.ckpt")


if __name__ == "__main__":
    main()
