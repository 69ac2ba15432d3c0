"""Tests for ldm/training/grad_norm.py: the logged norm is torch's clip_grad_norm_ total, before clipping."""

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ldm.training.grad_norm import GradientNorm, gradient_norm


def test_gradient_norm_is_the_norm_of_all_gradients_together():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([[0.0, 4.0], [0.0, 12.0]])
    frozen = nn.Parameter(torch.zeros(5))  # no gradient: left out
    assert gradient_norm([a, b, frozen]).item() == pytest.approx(13.0)  # sqrt(9 + 16 + 144)
    assert gradient_norm([frozen]).item() == 0.0


class Recorder(pl.Callback):
    """The logged gradient norm after every training batch."""

    def __init__(self):
        self.logged = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.logged.append(trainer.callback_metrics["train/grad_norm"].item())


class Regression(pl.LightningModule):
    """A linear model whose gradients are large (targets x 100), so that clipping at 0.5 bites.

    With `manual`, it clips itself like stage 1, then runs a second backward pass (stage 1's
    discriminator) on a second optimizer's parameters; `expected` holds clip_grad_norm_'s total
    norm of the first pass, which it returns before clipping.
    """

    def __init__(self, manual: bool):
        super().__init__()
        self.automatic_optimization = not manual
        self.net = nn.Linear(4, 1)
        self.other = nn.Linear(4, 1)
        self.expected = []

    def loss(self, batch):
        x, y = batch
        return (self.net(x) - y).square().mean()

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            return self.loss(batch)
        opt, opt_other = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.loss(batch))
        self.expected.append(torch.nn.utils.clip_grad_norm_(self.net.parameters(), 0.5).item())
        opt.step()
        opt_other.zero_grad()
        self.manual_backward(self.other(batch[0]).square().mean() * 1e3)
        opt_other.step()

    def on_before_optimizer_step(self, optimizer):
        if self.automatic_optimization:  # before Lightning clips: the reference norm
            norms = [p.grad.norm() for p in self.net.parameters()]
            self.expected.append(torch.stack(norms).norm().item())

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.net.parameters(), lr=1e-3)
        if self.automatic_optimization:
            return opt
        return [opt, torch.optim.SGD(self.other.parameters(), lr=1e-3)]


@pytest.mark.parametrize("manual", [False, True])
def test_logged_norm_is_the_unclipped_norm_of_the_first_backward_pass(manual, tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(24, 4, generator=generator)
    data = DataLoader(TensorDataset(x, 100 * x.sum(1, keepdim=True)), batch_size=8)
    model, recorder = Regression(manual), Recorder()
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=None if manual else 0.5,
        callbacks=[GradientNorm(), recorder],
    )
    trainer.fit(model, data)
    assert len(recorder.logged) == 3
    assert min(model.expected) > 0.5  # every step was clipped: a clipped norm would read 0.5
    assert recorder.logged == pytest.approx(model.expected, rel=1e-5)


def test_norm_under_a_gradient_scaler_is_unscaled():
    """16-mixed: the gradients seen after backward are multiplied by the scale; the norm is not."""
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0]) * 1024
    scaler = SimpleNamespace(is_enabled=lambda: True, get_scale=lambda: 1024.0)
    optimizer = torch.optim.SGD([p], lr=1.0)
    trainer = SimpleNamespace(optimizers=[optimizer], precision_plugin=SimpleNamespace(scaler=scaler))
    logged = {}
    module = SimpleNamespace(log=lambda name, value: logged.update({name: value.item()}))
    callback = GradientNorm()
    callback.on_train_batch_start(trainer, module, None, 0)
    callback.on_after_backward(trainer, module)
    callback.on_after_backward(trainer, module)  # a second backward pass in the same batch: not logged
    assert logged == {"train/grad_norm": pytest.approx(5.0)}
