"""LatentDiffusionModule wiring: EMA (updates, checkpoints, sampling), trainable text encoder, options."""

import dataclasses
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from ldm.config import DiffusionConfig
from ldm.denoiser.attention import BasicTransformerBlock
from ldm.denoiser.blocks import ResBlock
from ldm.pipeline import Text2Image
from ldm.training.diffusion_module import LatentDiffusionModule
from ldm.weights.checkpoint import load_latent_diffusion
from tests.conftest import quiet_trainer, tiny_module_configs

PROMPTS, SEEDS = ["a red circle", "a blue square"], [3, 4]


def _module(**diffusion) -> LatentDiffusionModule:
    configs = tiny_module_configs()
    configs["diffusion"] = DiffusionConfig(max_steps=10, **diffusion)
    torch.manual_seed(0)
    return LatentDiffusionModule(**configs)


def _perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _save(module: LatentDiffusionModule, path) -> None:
    torch.save(
        {
            "ldm_stage": "diffusion",
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
        },
        path,
    )


def test_ema_model_saved_and_reloaded_samples_identically(tmp_path):
    module = _module(ema=True, ema_decay=0.5, ema_warmup="none")
    unet = module.model.diffusion_model
    for _ in range(3):  # three "optimizer steps"
        _perturb(unet)
        module.model_ema.update(unet)
    module.eval()
    with module.ema_scope():
        expected = Text2Image.from_module(module)(PROMPTS, SEEDS)
    raw = Text2Image.from_module(module)(PROMPTS, SEEDS)
    assert (expected - raw).abs().max() > 1e-3  # the average differs from the last weights

    path = tmp_path / "ema.ckpt"
    _save(module, path)
    reloaded = load_latent_diffusion(path)  # use_ema=True: the average is what samples
    assert reloaded.model_ema is None
    assert torch.equal(Text2Image.from_module(reloaded)(PROMPTS, SEEDS), expected)
    # Resuming restores the EMA state itself; use_ema=False samples the raw weights.
    resumed = load_latent_diffusion(path, use_ema=False)
    assert int(resumed.model_ema.num_updates) == 3
    for (name, a), b in zip(module.model_ema.state_dict().items(), resumed.model_ema.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(Text2Image.from_module(resumed)(PROMPTS, SEEDS), raw)


def _batches(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "caption": PROMPTS} for _ in range(n)]


def _fit(module: LatentDiffusionModule, steps: int, **trainer_options: Any) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        **trainer_options,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    loader = torch.utils.data.DataLoader(_batches(steps), batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    return trainer


def test_ema_is_updated_after_every_optimizer_step():
    module = _module(ema=True, ema_decay=0.9, ema_warmup="none")
    before = {k: v.clone() for k, v in module.model.diffusion_model.state_dict().items()}
    trainer = _fit(module, steps=3)
    assert trainer.global_step == 3 and int(module.model_ema.num_updates) == 3
    key = "out.2.weight"
    w = module.model.diffusion_model.state_dict()[key]
    assert not torch.equal(w, before[key])
    # Validation ran with the average swapped in, and put the trained weights back after.
    assert not torch.equal(module.model_ema.module.state_dict()[key], w)


@pytest.mark.parametrize("precision, fused", [("32-true", True), ("bf16-mixed", None)])
def test_clipped_training_under_mixed_precision_uses_an_unfused_optimizer(precision, fused):
    # Lightning refuses to clip the gradients of a fused optimizer under mixed precision (bf16 too).
    torch.manual_seed(0)
    module = LatentDiffusionModule(**tiny_module_configs())
    before = module.model.diffusion_model.out[2].weight.detach().clone()
    trainer = _fit(module, steps=2, precision=precision, gradient_clip_val=1.0)
    assert trainer.global_step == 2
    assert trainer.optimizers[0].defaults["fused"] is fused
    assert not torch.equal(module.model.diffusion_model.out[2].weight, before)


def test_trainable_text_encoder_gets_its_own_parameter_group_and_gradients():
    configs = tiny_module_configs()
    configs["conditioner"] = dataclasses.replace(configs["conditioner"], trainable=True, learning_rate=1e-5)
    module = LatentDiffusionModule(**configs).train()
    assert module.cond_stage_model.training
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [1e-4, 1e-5]
    assert all(g["fused"] for g in groups)  # one kernel over both groups on CPU
    text = module.cond_stage_model.model
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in text.parameters() if p.requires_grad}
    assert not text.text_projection.requires_grad  # unused by the per-token states
    assert not any(p.requires_grad for p in text.transformer.resblocks[-1].parameters())  # penultimate
    _perturb(module.model.diffusion_model)
    loss = module.training_step(_batches(1)[0], 0)
    loss.backward()
    assert text.token_embedding.weight.grad.abs().sum() > 0
    frozen = LatentDiffusionModule(**tiny_module_configs()).train()
    assert not frozen.cond_stage_model.training
    assert len(frozen.configure_optimizers()["optimizer"].param_groups) == 1


def test_options_reach_the_networks():
    configs = tiny_module_configs()
    configs["denoiser"] = dataclasses.replace(configs["denoiser"], use_checkpoint=True)
    configs["diffusion"] = DiffusionConfig(
        parameterization="v", zero_terminal_snr=True, loss_weighting="min_snr", offset_noise=0.05
    )
    module = LatentDiffusionModule(**configs)
    blocks = [m for m in module.modules() if isinstance(m, (ResBlock, BasicTransformerBlock))]
    assert blocks and all(b.use_checkpoint for b in blocks)
    assert module.model.parameterization == module.objective.parameterization == "v"
    assert module.objective.loss_weighting == "min_snr" and module.objective.offset_noise == 0.05
    assert module.objective.alphas_cumprod[-1].item() == 0.0 and torch.isfinite(module.model.sigma_max)
    configs["diffusion"] = DiffusionConfig(zero_terminal_snr=True)
    with pytest.raises(ValueError, match="needs parameterization v or x0"):
        LatentDiffusionModule(**configs)


@pytest.mark.slow
def test_a_checkpoint_of_a_compiled_channels_last_run_loads_into_an_eager_model(tmp_path):
    """trainer.compile and trainer.channels_last leave the checkpoint's keys and values loadable."""
    module = _module()
    module.accelerate(compile=True, channels_last=True)
    unet = module.model.diffusion_model
    assert unet.out[2].weight.is_contiguous(memory_format=torch.channels_last)
    before = unet.out[2].weight.detach().clone()
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_batches(2), batch_size=None))
    assert trainer.global_step == 2 and not torch.equal(unet.out[2].weight, before)
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path, weights_only=False)

    reloaded = load_latent_diffusion(path)  # a new eager model; strict: every key must match
    trained = module.state_dict()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, trained[key]), key
    # The eager copy samples what the trained weights sample when run eagerly and contiguous.
    eager = _module()
    eager.load_state_dict({k: v.contiguous() for k, v in trained.items()})
    eager.eval()
    torch.testing.assert_close(
        Text2Image.from_module(reloaded)(PROMPTS, SEEDS), Text2Image.from_module(eager)(PROMPTS, SEEDS)
    )
