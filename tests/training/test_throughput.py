"""Throughput logging: the FLOP count of a step against its closed form, and the logged rates."""

import csv

import pytest
import pytorch_lightning as pl
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from ldm.config import AutoencoderConfig
from ldm.denoiser.attention import SpatialTransformer
from ldm.flops import FlopCount
from ldm.training.autoencoder_module import AutoencoderModule
from ldm.training.throughput import StepFlops, batch_size_of, check_window, throughput_callbacks

BATCH, IN, OUT = 8, 16, 4


class LinearRegression(pl.LightningModule):
    """One linear layer on batches shaped like ours: ``{"image": B x IN}``."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(IN, OUT)
        self.validation_flops = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch["image"]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.validation_flops.append(self.flops_per_batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n_batches: int) -> DataLoader:
    images = torch.randn(n_batches * BATCH, IN)
    return DataLoader([{"image": x} for x in images], batch_size=BATCH)


def test_batch_size_of_images_and_cached_moments():
    assert batch_size_of({"image": torch.zeros(5, 3, 8, 8), "caption": ["a"] * 5}) == 5
    assert batch_size_of({"moments": torch.zeros(7, 8, 4, 4)}) == 7
    with pytest.raises(ValueError, match="image, moments"):
        batch_size_of({"caption": ["a"]})


@pytest.mark.parametrize("window", [1, -3])
def test_window_must_be_off_or_at_least_two(window):
    with pytest.raises(ValueError, match="throughput_window"):
        check_window(window)
    assert throughput_callbacks(0) == []


def test_step_flops_and_logged_rates(tmp_path):
    model = LinearRegression()
    trainer = pl.Trainer(
        max_steps=6,
        val_check_interval=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=pl.loggers.CSVLogger(tmp_path, name="logs"),
        callbacks=throughput_callbacks(window=3),
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(model, loader(6), loader(1))
    # Forward B x IN @ IN x OUT: 2*B*IN*OUT; backward: the weight gradient, 2*B*IN*OUT again (the
    # input needs no gradient). Bias, square, mean and the SGD update are not matrix products.
    assert model.flops_per_batch == 2 * (2 * BATCH * IN * OUT)
    assert model.validation_flops == [None, None]  # a validation batch is not a training step
    rows = list(csv.DictReader(open(tmp_path / "logs" / "version_0" / "metrics.csv")))
    rates = [r for r in rows if r.get("train/device/samples_per_sec")]
    assert rates, "no throughput logged"
    # Lightning's monitor would add validate/* rows at steps counting validation batches (1, 2, 3).
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] == 5
    assert not any(v for r in rows for k, v in r.items() if k.startswith("validate/"))
    last = rates[-1]
    assert float(last["train/samples"]) == 6 * BATCH and float(last["train/batches"]) == 6
    samples_per_sec = float(last["train/device/samples_per_sec"])
    batches_per_sec = float(last["train/device/batches_per_sec"])
    assert samples_per_sec == pytest.approx(BATCH * batches_per_sec)
    flops_per_sec = float(last["train/device/flops_per_sec"])
    assert flops_per_sec == pytest.approx(model.flops_per_batch * batches_per_sec)
    assert "train/device/mfu" not in last or not last["train/device/mfu"]  # no known peak on a CPU


def test_flop_count_agrees_with_torch_flop_counter_whatever_the_attention_kernel():
    torch.manual_seed(0)
    block = torch.nn.Sequential(
        torch.nn.Conv2d(8, 32, 3, padding=1), SpatialTransformer(32, 2, 16, context_dim=24)
    )
    x, context = torch.randn(2, 8, 8, 8), torch.randn(2, 5, 24)

    def step():
        block[1](block[0](x), context).sum().backward()

    # The math kernel is plain bmm calls, which torch's FlopCounterMode counts: the reference.
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCount() as math_kernel:
            step()
        with FlopCounterMode(display=False) as reference:
            step()
    with FlopCount() as default_kernel:  # flash attention on most CPUs
        step()
    conv = 2 * (2 * 8 * 8) * 32 * (8 * 9)  # forward of the convolution alone: 2 * outputs * inputs per output
    assert default_kernel.total == math_kernel.total == reference.get_total_flops() > 3 * conv


def fit_autoencoder(tmp_path, callbacks) -> dict:
    torch.manual_seed(0)
    config = AutoencoderConfig(resolution=16, ch=16, ch_mult=[1, 2], num_res_blocks=1, norm_groups=8)
    module = AutoencoderModule(config)
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    trainer = pl.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
        accelerator="cpu",
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader([{"image": x} for x in images], batch_size=4))
    return module.state_dict()


def test_counting_flops_leaves_training_unchanged(tmp_path):
    # torch's FlopCounterMode runs some ops through decompositions, which changed this run's weights.
    plain = fit_autoencoder(tmp_path, [])
    counted = fit_autoencoder(tmp_path, [StepFlops()])
    assert all(torch.equal(plain[k], counted[k]) for k in plain)
