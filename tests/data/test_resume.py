"""A run resumed from its step-N checkpoint reads, from step N + 1 on, exactly what an uninterrupted run reads."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from ldm.data.shapes import write_shapes_dataset
from ldm.training.datamodule import ShardDataModule

STEPS = 20
"""Two and a half passes: 6 shards of 6 samples, 2 workers x 3 shards, 4 batches of 4 per worker."""


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    # Drawn at 40 px and read at 32: random crops and flips change the pixels.
    root = tmp_path_factory.mktemp("resume")
    return write_shapes_dataset(root, resolution=40, seed=1, num_train=36, num_val=4, samples_per_shard=6)


class _Record(pl.LightningModule):
    """Records, per training step, the keys of the batch and a digest of its pixels."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.steps: list[tuple[int, list[str], float]] = []

    def training_step(self, batch, batch_idx):
        digest = float(
            (batch["image"] * torch.arange(batch["image"][0].numel()).view_as(batch["image"][0])).sum()
        )
        self.steps.append((self.global_step, list(batch["key"]), digest))
        return (self.weight - batch["image"].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def datamodule(shapes_set, num_workers: int, **overrides) -> ShardDataModule:
    options = dict(batch_size=4, resolution=32, shuffle_buffer=10, seed=3, crop="random", flip=True)
    return ShardDataModule(
        shapes_set.train, shapes_set.val, num_workers=num_workers, **{**options, **overrides}
    )


def fit(module: ShardDataModule, root, *, save_at=None, ckpt_path=None) -> _Record:
    model = _Record()
    callbacks = []
    if save_at is not None:
        callbacks.append(
            ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=save_at, save_top_k=-1)
        )
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=bool(callbacks),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, module, ckpt_path=ckpt_path)
    return model


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
@pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended")
@pytest.mark.parametrize(
    ("num_workers", "stop_at"),
    [
        (2, 5),
        (2, 8),
        (2, 13),
        (0, 6),
    ],  # mid-pass, exactly at the end of a pass, in the second pass; in-process
)
def test_resumed_run_reads_what_the_uninterrupted_run_reads(shapes_set, tmp_path, num_workers, stop_at):
    whole = fit(datamodule(shapes_set, num_workers), tmp_path, save_at=stop_at)
    assert [s[0] for s in whole.steps] == list(range(STEPS))
    (ckpt,) = tmp_path.glob(f"step={stop_at}*.ckpt")

    resumed = fit(datamodule(shapes_set, num_workers), tmp_path / "resumed", ckpt_path=str(ckpt))

    assert resumed.steps == whole.steps[stop_at:]
    # Not trivially equal: the stream does not repeat itself after the stop.
    assert [s[1] for s in resumed.steps[:4]] != [s[1] for s in whole.steps[:4]]


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
@pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended")
def test_resumed_run_continues_a_resampled_stream(shapes_set, tmp_path):
    resampled = dict(resampled=True, batches_per_epoch=7)  # 4 + 3 batches per pass from the 2 workers
    whole = fit(datamodule(shapes_set, 2, **resampled), tmp_path, save_at=9)
    (ckpt,) = tmp_path.glob("step=9*.ckpt")
    resumed = fit(datamodule(shapes_set, 2, **resampled), tmp_path / "resumed", ckpt_path=str(ckpt))
    assert resumed.steps == whole.steps[9:]


def test_checkpoint_holds_the_stream_position_and_counts(shapes_set, tmp_path):
    fit(datamodule(shapes_set, 2), tmp_path, save_at=5)
    (ckpt,) = tmp_path.glob("step=5*.ckpt")
    checkpoint = torch.load(ckpt, weights_only=True)
    (state,) = checkpoint["ShardDataModule"]["ranks"]
    # Batches alternate between the 2 workers: 3 from worker 0 and 2 from worker 1, 4 samples each.
    assert state["stream"]["epoch"] == 0 and state["stream"]["num_workers"] == 2
    assert {w: yielded for w, (_, yielded) in state["stream"]["workers"].items()} == {"0": 12, "1": 8}
    assert state["counts"]["read"] == 20  # what the model consumed, not what the workers prefetched


def test_resume_with_another_worker_count_restarts_the_pass(shapes_set, tmp_path, caplog):
    whole = fit(datamodule(shapes_set, 2), tmp_path, save_at=5)
    (ckpt,) = tmp_path.glob("step=5*.ckpt")
    resumed = fit(datamodule(shapes_set, 1), tmp_path / "resumed", ckpt_path=str(ckpt))
    assert "restarts from its beginning" in caplog.text
    assert len(resumed.steps) == STEPS - 5
    assert resumed.steps != whole.steps[5:]
