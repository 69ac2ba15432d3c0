"""Tests for ldm/autoencoder/module.py."""

import dataclasses
import math

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchmetrics.functional.image import peak_signal_noise_ratio

from ldm.autoencoder.model import KLAutoencoder
from ldm.config import AutoencoderConfig
from ldm.training.autoencoder_module import AutoencoderModule
from tests.conftest import pooled_std


def tiny_config(**overrides) -> AutoencoderConfig:
    fields = dict(embed_dim=4, z_channels=4, resolution=32, ch=32, ch_mult=[1, 2, 2], num_res_blocks=1)
    return AutoencoderConfig(**{**fields, **overrides})


def simple_images() -> torch.Tensor:
    """Four 3x32x32 images in [-1, 1]: two gradients, a centred square, an 8-pixel checkerboard."""
    ramp = torch.linspace(-1, 1, 32)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    square = ((xx.abs() < 0.5) & (yy.abs() < 0.5)).float() * 2 - 1
    checker = ((torch.arange(32)[:, None] // 8 + torch.arange(32)[None] // 8) % 2).float() * 2 - 1
    return torch.stack(
        [
            torch.stack([xx, yy, -xx]),
            torch.stack([yy, torch.full_like(xx, -0.5), xx * yy]),
            torch.stack([square, -square, 0.5 * square]),
            torch.stack([checker, 0.3 * checker, -checker]),
        ]
    )


class ImageDataset(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


def test_latent_shape_and_bad_input():
    module = AutoencoderModule(tiny_config())
    posterior = module.autoencoder.encode(torch.randn(2, 3, 32, 32))
    assert posterior.sample().shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="not divisible by the autoencoder factor 4"):
        module.autoencoder.encode(torch.randn(2, 3, 30, 30))


def test_optimizer_reduces_reconstruction_error():
    torch.manual_seed(0)
    module = AutoencoderModule(tiny_config(learning_rate=1e-3))
    optimizer = module.configure_optimizers()
    assert optimizer.defaults["betas"] == (0.5, 0.9) and optimizer.defaults["lr"] == 1e-3
    assert optimizer.defaults["fused"]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(module.loss.logvar) in optimized and len(optimized) == len(list(module.parameters()))
    x = simple_images()

    def l1() -> float:
        with torch.no_grad():
            reconstructions, _ = module.autoencoder(x, sample_posterior=False)
        return (reconstructions - x).abs().mean().item()

    generator = torch.Generator().manual_seed(0)
    before = l1()
    for _ in range(20):
        reconstructions, posterior = module.autoencoder(x, generator=generator)
        loss, _ = module.loss(x, reconstructions, posterior)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = l1()
    # Measured: 0.694 -> 0.305 (ratio 0.44) after 20 steps at lr 1e-3.
    assert before > 0.5
    assert after / before < 0.6


def test_trainer_fit_writes_images_and_loadable_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(learning_rate=1e-3)
    module = AutoencoderModule(config)
    train = DataLoader(ImageDataset(simple_images()[:3]), batch_size=1)  # 3 steps: one epoch
    # 5 validation images in batches of 2, 2, 1: the epoch PSNR must be the mean over images.
    val_images = torch.cat([simple_images(), -simple_images()[:1]])
    val = DataLoader(ImageDataset(val_images), batch_size=2)
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    assert trainer.global_step == 3

    # Only the real validation at step 3 saves a grid (not the sanity check): 2 rows of 2 images
    # of 32 px with 2 px padding -> 70 x 70.
    images = sorted((tmp_path / "images").iterdir())
    assert [p.name for p in images] == ["reconstructions-step000003.png"]
    with Image.open(images[0]) as grid:
        assert grid.size == (70, 70)

    module.eval()
    with torch.no_grad():
        reconstructions = module.autoencoder(val_images, sample_posterior=False)[0]
    per_image_psnr = peak_signal_noise_ratio(
        ((reconstructions + 1) / 2).clamp(0, 1),
        (val_images + 1) / 2,
        data_range=1.0,
        dim=(1, 2, 3),
        reduction="none",
    )
    metrics = trainer.callback_metrics
    torch.testing.assert_close(metrics["val/psnr"], per_image_psnr.mean(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        metrics["val/rec_loss"], (reconstructions.clamp(-1, 1) - val_images).abs().mean(), atol=1e-5, rtol=1e-5
    )
    assert {"train/loss", "train/rec_loss", "train/kl_loss", "train/logvar"} <= set(metrics)

    (checkpoint_path,) = (tmp_path / "checkpoints").glob("*.ckpt")
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert checkpoint["ldm_stage"] == "autoencoder"
    assert checkpoint["hyper_parameters"]["autoencoder"] == dataclasses.asdict(config)
    prefix = "autoencoder."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    assert set(checkpoint["state_dict"]) - {prefix + k for k in state} == {"loss.logvar"}
    restored = KLAutoencoder.from_config(AutoencoderConfig(**checkpoint["hyper_parameters"]["autoencoder"]))
    restored.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(
            restored(val_images, sample_posterior=False)[0], reconstructions, rtol=0, atol=0
        )


@pytest.mark.parametrize("precision, fused", [("32-true", True), ("bf16-mixed", None)])
def test_discriminator_phase_two_optimizers_and_latent_stats(tmp_path, precision, fused):
    # Fused Adam where Lightning can clip its gradients: not under mixed precision (bf16 included).
    torch.manual_seed(0)
    config = tiny_config(
        learning_rate=1e-3,
        max_steps=4,
        disc_start=2,
        disc_channels=8,
        disc_num_layers=2,
        latent_stats_batches=2,
    )
    module = AutoencoderModule(config, gradient_clip_val=1.0)
    assert module.gradient_clip_val == 1.0 and module.loss.discriminator is not None
    train = DataLoader(ImageDataset(simple_images()), batch_size=1)
    val = DataLoader(ImageDataset(simple_images()), batch_size=2)
    trainer = pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    disc_before = [p.detach().clone() for p in module.loss.discriminator.parameters()]
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    assert trainer.global_step == 4  # discriminator steps do not count
    assert [opt.defaults["fused"] for opt in trainer.optimizers] == [fused, fused]
    metrics = trainer.callback_metrics
    assert {"train/g_loss", "train/d_weight", "train/d_loss", "val/psnr", "val/ssim"} <= set(metrics)
    assert 0 < metrics["val/ssim"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, module.loss.discriminator.parameters()))

    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert len(checkpoint["optimizer_states"]) == 2
    steps = [{int(s["step"]) for s in opt["state"].values()} for opt in checkpoint["optimizer_states"]]
    assert steps == [{4}, {2}]  # the autoencoder stepped 4 times, the discriminator from step 2 on
    assert any(k.startswith("loss.discriminator.main.") for k in checkpoint["state_dict"])
    stats = checkpoint["latent_stats"]
    assert stats["num_images"] == 4 and len(stats["mean"]) == len(stats["std"]) == 4
    # 1 / std of all latent elements (4 images x 4 channels x 8 x 8), pooled from the channels' statistics.
    pooled = pooled_std(stats["mean"], stats["std"], n=4 * 8 * 8)
    assert isinstance(stats["scale_factor"], float)
    assert stats["scale_factor"] == pytest.approx(1 / pooled, rel=1e-5)

    from ldm.autoencoder.latent_stats import stored_scale_factor

    assert stored_scale_factor(path) == stats["scale_factor"]


def _reconstruction_step(module: AutoencoderModule) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reconstructions of simple_images through the posterior mode, and the L2 loss's gradients."""
    module.autoencoder.zero_grad()
    reconstructions, _ = module.autoencoder(simple_images(), sample_posterior=False)
    reconstructions.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in module.autoencoder.named_parameters()}
    return reconstructions.detach(), grads


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_compiled_and_channels_last_autoencoder_agrees_with_eager(compile):
    """trainer.channels_last (and trainer.compile, which compiles the encoder and decoder: about a
    minute here) give the eager reconstructions and gradients to float32 rounding. 8 groups as the
    shapes preset: with 32 (one channel per group here) the norms amplify rounding to 1.4e-5."""
    torch.manual_seed(0)
    config = tiny_config(perceptual_weight=0.0, norm_groups=8)
    eager, switched = AutoencoderModule(config), AutoencoderModule(config)
    switched.load_state_dict(eager.state_dict())
    switched.accelerate(compile=compile, channels_last=True)
    assert switched.state_dict().keys() == eager.state_dict().keys()
    out, grads = _reconstruction_step(switched)
    out_ref, grads_ref = _reconstruction_step(eager)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - out_ref).abs().max() <= 1e-5 * out_ref.abs().max()
    scale = max(g.abs().max() for g in grads_ref.values())
    for name, grad in grads.items():
        assert (grad - grads_ref[name]).abs().max() <= 1e-5 * scale, name


def test_cosine_schedule_decays_the_autoencoders_rate_to_zero_at_max_steps(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(learning_rate=1e-3, max_steps=4, lr_schedule="cosine", disc_start=2, disc_channels=8,
                         disc_num_layers=2, latent_stats_batches=0)  # fmt: skip
    module = AutoencoderModule(config)
    rates = []

    class Rates(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            rates.append([group["lr"] for opt in trainer.optimizers for group in opt.param_groups])

    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         callbacks=[Rates()], limit_val_batches=0)  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(ImageDataset(simple_images()), batch_size=1))
    assert trainer.global_step == 4
    # After optimizer step k (1..4) the rate is 1e-3 * (1 + cos(pi k / 4)) / 2; the discriminator's stays.
    expected = [1e-3 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(1, 5)]
    assert [r[0] for r in rates] == pytest.approx(expected, abs=1e-12)
    assert [r[-1] for r in rates] == [1e-3] * 4
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        AutoencoderModule(tiny_config(lr_schedule="linear"))
