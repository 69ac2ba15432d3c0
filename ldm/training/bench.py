"""``python -m ldm.bench``: the training config plus a ``bench`` section, measured (``ldm.benchmark``).

    python -m ldm.bench experiment=debug bench.batch_sizes=[1,4]
    python -m ldm.bench experiment=sd2_base bench.resolution=256 bench.batch_sizes=[1,8] \
        bench.parts=[train,sample,autoencoder] bench.precision=bf16
    python -m ldm.bench experiment=shapes bench.compare=diffusers

Composes ``ldm/conf/config.yaml`` as training does, with ``BenchRunConfig`` as its schema (the
training config and ``bench``, ``ldm.config.BenchConfig``), so every group and override of
``python -m ldm.train`` applies. Writes the report to ``bench.out`` (default
``<run dir>/bench.json``) and logs a table; the data part measures the training DataModule's loader
(the shapes set is generated first when missing). ``trainer.enable_progress_bar=false`` hides the
progress bar.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ldm.benchmark.report import format_table, write_json
from ldm.benchmark.run import run_benchmark
from ldm.cli import user_errors
from ldm.config import BenchRunConfig, TrainConfig
from ldm.training.config_store import register_configs
from ldm.training.datamodule import build_datamodule
from ldm.training.distributed import prepare_data
from ldm.training.train import TRAIN_FULL_ERROR_VARIABLES

log = logging.getLogger("ldm.bench")


def training_loader(config: TrainConfig, batch_size: int, resolution: int) -> Any:
    """The training DataModule's loader of `batch_size` batches of `resolution`-pixel images."""
    data = dataclasses.replace(config.data, batch_size=batch_size, resolution=resolution)
    prepare_data(data)  # the shapes set: written when missing
    return build_datamodule(data).train_dataloader()


def run(config: BenchRunConfig, run_dir: Path) -> dict[str, Any]:
    """Measure, write the JSON report (bench.out, else run_dir/bench.json) and log the table; returns it."""
    report = run_benchmark(
        config,
        loader_for=lambda b, r: training_loader(config, b, r),
        progress=config.trainer.enable_progress_bar,
    )
    path = write_json(report, config.bench.out or run_dir / "bench.json")
    log.info("ldm.bench on %s:\n%s", report["device"]["name"], format_table(report["measurements"]))
    log.info("wrote %s", path)
    return report


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _main(cfg: DictConfig) -> None:
    config: BenchRunConfig = OmegaConf.to_object(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with user_errors(TRAIN_FULL_ERROR_VARIABLES, log.error, "set HYDRA_FULL_ERROR=1 for the traceback"):
        run(config, run_dir)


def main() -> None:
    """The command: the config schema with the bench section, then Hydra's composition and the run."""
    register_configs(BenchRunConfig)
    _main()


if __name__ == "__main__":
    main()
