"""ldm/samplers/distilled.py through the pipeline: a distilled student samples at its own step count with
deterministic DDIM, one network call per step with the guidance scale as input; anything else is refused."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch

from ldm.config import DiffusionConfig, SamplerConfig
from ldm.diffusion.latent_diffusion import LatentDiffusion
from ldm.pipeline import Text2Image
from ldm.sample import main as sample_main
from ldm.sample import run as sample
from ldm.samplers.distilled import DistilledSampling
from tests.conftest import tiny_module_configs

PROMPTS, SEEDS = ["a red circle", "a blue square"], [3, 4]


def distilled_model(steps: int = 3, guidance_range=(1.0, 8.0)) -> LatentDiffusion:
    """A tiny v-predicting student with random (non-zero) weights, distilled for `steps` steps."""
    configs = tiny_module_configs()
    configs["denoiser"] = dataclasses.replace(
        configs["denoiser"], guidance_embed_dim=16 if guidance_range else 0
    )
    configs["diffusion"] = DiffusionConfig(parameterization="v")
    distilled = DistilledSampling(steps, guidance_range, "v", teacher="teacher.ckpt")
    configs["sampler"] = distilled.sampler(SamplerConfig(guidance_scale=5.0))
    torch.manual_seed(0)
    model = LatentDiffusion(**configs, distillation=distilled).eval()
    with torch.no_grad():
        for p in model.model.diffusion_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def record_calls(model: LatentDiffusion) -> list[tuple[int, torch.Tensor | None]]:
    """(batch, guidance) of every U-Net call from now on."""
    calls: list = []

    def hook(module, args, kwargs, output):
        calls.append((args[0].shape[0], kwargs.get("guidance")))

    model.model.diffusion_model.register_forward_hook(hook, with_kwargs=True)
    return calls


def test_a_guidance_distilled_student_makes_one_call_per_step_with_w_as_input():
    model = distilled_model(steps=3)
    calls = record_calls(model)
    pipe = Text2Image.from_module(model)
    assert pipe.sampler == SamplerConfig(
        name="ddim", steps=3, guidance_scale=5.0, eta=0.0, spacing="trailing"
    )
    images = pipe(PROMPTS, SEEDS)
    assert [b for b, _ in calls] == [2, 2, 2]  # 3 steps, 3 calls, no unconditional half
    assert all(torch.equal(w, torch.full((2,), 5.0)) for _, w in calls)
    # The same three DDIM steps written out: trailing timesteps 999, 666, 332 of 1000, then sigma 0.
    sigmas = torch.cat([model.model.sigmas[torch.tensor([999, 666, 332])], torch.zeros(1)])
    noise = torch.stack([torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(s)) for s in SEEDS])
    x = noise * math.sqrt(1 + sigmas[0].item() ** 2)
    with torch.no_grad():
        context = model.cond_stage_model(PROMPTS)
        for sigma, sigma_next in zip(sigmas, sigmas[1:]):
            denoised = model.model(x, sigma.expand(2), context, guidance=torch.full((2,), 5.0))
            x = denoised + sigma_next * (x - denoised) / sigma
    torch.testing.assert_close(images, pipe.decode(x), rtol=0, atol=1e-5)
    pipe(PROMPTS, SEEDS, sampler=dataclasses.replace(pipe.sampler, guidance_scale=2.0))
    assert len(calls) == 9 and torch.equal(calls[-1][1], torch.full((2,), 2.0))  # --scale is w


def test_a_student_without_distilled_guidance_keeps_classifier_free_guidance():
    model = distilled_model(steps=2, guidance_range=None)
    calls = record_calls(model)
    Text2Image.from_module(model)(PROMPTS, SEEDS)
    assert calls == [(4, None), (4, None)]  # conditional and unconditional halves, batched


@pytest.mark.parametrize(
    "change,message",
    [
        ({"steps": 4}, "this checkpoint was distilled for 3 sampling steps, not 4: sample it with 3"),
        (
            {"name": "euler"},
            "distilled for deterministic DDIM on trailing discrete timesteps; got name=euler",
        ),
        ({"eta": 1.0}, "got eta=1.0"),
        ({"spacing": "leading", "schedule": "karras"}, "got schedule=karras, spacing=leading"),
        ({"guidance_rescale": 0.7}, "guidance rescale does not apply to a guidance-distilled checkpoint"),
        ({"guidance_interval": [0.5, 3.0]}, "a guidance interval does not apply to a guidance-distilled"),
    ],
)
def test_other_samplers_are_refused(change, message):
    pipe = Text2Image.from_module(distilled_model(steps=3))
    with pytest.raises(ValueError, match=message):
        pipe(PROMPTS, SEEDS, sampler=dataclasses.replace(pipe.sampler, **change))


def test_negative_prompts_are_refused_and_scales_out_of_range_warned(caplog):
    pipe = Text2Image.from_module(distilled_model(steps=1))
    with pytest.raises(ValueError, match="has no unconditional branch: negative prompts do not apply"):
        pipe(PROMPTS, SEEDS, negative_prompt="blurry")
    with caplog.at_level(logging.WARNING, logger="ldm.samplers.distilled"):
        pipe(PROMPTS, SEEDS, sampler=dataclasses.replace(pipe.sampler, guidance_scale=12.0))
    assert "guidance scale 12 is outside the range 1-8 this checkpoint was distilled for" in caplog.text


def test_a_distilled_checkpoint_samples_at_its_steps_without_flags(tmp_path, capsys, monkeypatch):
    model = distilled_model(steps=2)
    ckpt = tmp_path / "distill-2.ckpt"
    torch.save(
        {
            "ldm_stage": "diffusion",
            "state_dict": model.state_dict(),
            "hyper_parameters": model.checkpoint_hparams,
        },
        ckpt,
    )
    pipe = Text2Image.from_checkpoint(ckpt, device="cpu")
    assert pipe.distilled == DistilledSampling(2, (1.0, 8.0), "v", teacher="teacher.ckpt")
    calls = record_calls(model)
    expected = Text2Image.from_module(model)(["a red circle"], [42])
    assert len(calls) == 2
    args = ["txt2img", "--ckpt", str(ckpt), "--prompt", "a red circle", "--n_samples", "1", "--device", "cpu"]
    written = sample([*args, "--outdir", str(tmp_path / "out")])
    assert len(written) == 1
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    png = pil_to_tensor(Image.open(written[0])).float() / 255
    assert (png - expected[0]).abs().max() <= 1 / 255 + 1e-6  # the same image, up to 8-bit rounding
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    capsys.readouterr()  # the progress bar of the call above
    with pytest.raises(SystemExit) as exit_:
        sample_main([*args, "--outdir", str(tmp_path / "refused"), "--steps", "4"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "this checkpoint was distilled for 2 sampling steps, not 4" in lines[0]
    assert not (tmp_path / "refused").exists()
