"""ldm/training/strategy.py: FSDP shards stage 2's U-Net (on CPU processes too), stage 1 trains under DDP,
and sample grids are drawn on rank 0 from the gathered weights."""

from __future__ import annotations

import re

import pytest
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from ldm.config import TrainerConfig
from ldm.pipeline import Text2Image
from ldm.training.autoencoder_module import AutoencoderModule
from ldm.training.diffusion_module import LatentDiffusionModule
from ldm.training.strategy import ShardedDataParallel, build_strategy
from tests.conftest import tiny_module_configs, train_on_debug_data


def test_fsdp_wraps_the_unet_blocks_and_leaves_the_frozen_networks_out():
    configs = tiny_module_configs()
    module = LatentDiffusionModule(**configs)
    strategy = build_strategy(TrainerConfig(strategy="fsdp"), module, "bf16-mixed")
    assert isinstance(strategy, ShardedDataParallel)
    assert strategy.kwargs["ignored_modules"] == [module.first_stage_model, module.cond_stage_model]
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert strategy.mixed_precision.param_dtype == torch.bfloat16
    assert strategy.mixed_precision.reduce_dtype == torch.float32
    # Stage 1 (an autoencoder with its discriminator) has no U-Net: DDP.
    ae = build_strategy(TrainerConfig(strategy="fsdp"), AutoencoderModule(configs["autoencoder"]), "32-true")
    assert isinstance(ae, DDPStrategy) and not isinstance(ae, ShardedDataParallel)


@pytest.mark.slow
def test_the_debug_preset_trains_under_fsdp_on_two_cpu_processes(debug_run, tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["trainer.strategy=fsdp", "trainer.accelerator=cpu", "trainer.devices=2"]
    result = train_on_debug_data(debug_run, run_dir, *overrides)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "AutoencoderModule trains under DDP" in output
    assert re.search(r"FSDP: the U-Net's \d+ blocks sharded \(full\), 2 frozen networks left whole", output)
    assert {m for m in re.findall(r"rank (\d) of 2:", output)} == {"0", "1"}
    # The grid is drawn once, on rank 0, from the weights both ranks gathered.
    grids = sorted((run_dir / "images").glob("samples-step*.png"))
    assert [g.name for g in grids] == ["samples-step000004.png"]
    assert output.count("sample grid at step 4") == 1
    images = Text2Image.from_checkpoint(run_dir / "checkpoints" / "last.ckpt", device="cpu")(
        ["a red circle"], [0]
    )
    assert images.shape == (1, 3, 32, 32) and images.float().std() > 0
