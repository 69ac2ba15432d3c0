"""ldm/training/distill_module.py and stage=distill: the phase plan, a student built from its teacher, the
teacher handed on between rounds, and one distillation of the debug preset through the command line
(checkpoints with their metadata, sampling them without flags, the SD-layout round trip, resume)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm.conditioning.concat import Conditioning
from ldm.config import DiffusionConfig, DistillConfig, TrainConfig
from ldm.denoiser.unet import UNetModel
from ldm.diffusion.latent_diffusion import LatentDiffusion
from ldm.eval.__main__ import run as evaluate
from ldm.optim import lr_multiplier
from ldm.pipeline import Text2Image
from ldm.sample import run as sample
from ldm.training.config_store import compose_config
from ldm.training.distill_module import (
    TEACHER_KEY,
    DistillationModule,
    Phase,
    distillation_phases,
    phase_index,
    phase_lr_multiplier,
)
from ldm.training.train import ResumePoint, check_distill_resume, run
from ldm.training.validate import ConfigError, check_config
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import (
    assert_float32_close,
    run_cli,
    save_tiny_image_conditioned,
    tiny_module_configs,
    train_on_debug_data,
)


def test_phases_are_stage_1_then_halving_rounds():
    phases = distillation_phases(
        DistillConfig(start_steps=32, end_steps=1, guidance_steps=300, steps_per_round=100)
    )
    assert phases == [
        Phase("stage1", 32, 0, 300),
        Phase("round", 16, 300, 400),
        Phase("round", 8, 400, 500),
        Phase("round", 4, 500, 600),
        Phase("round", 2, 600, 700),
        Phase("round", 1, 700, 800),
    ]
    assert [phase_index(phases, s) for s in (0, 299, 300, 399, 799, 800)] == [0, 0, 1, 1, 5, 5]
    assert [p.steps for p in distillation_phases(DistillConfig(guidance_steps=0))] == [32, 16, 8, 4]
    with pytest.raises(ValueError, match="nothing to distil"):
        distillation_phases(DistillConfig(start_steps=4, end_steps=4, guidance_steps=0))


def test_the_learning_rate_schedule_restarts_in_every_phase():
    phases = (Phase("stage1", 4, 0, 10), Phase("round", 2, 10, 30))
    schedule = [phase_lr_multiplier(s, phases=phases, warmup_steps=2, schedule="cosine") for s in range(30)]
    first = [lr_multiplier(s, warmup_steps=2, schedule="cosine", max_steps=10) for s in range(10)]
    second = [lr_multiplier(s, warmup_steps=2, schedule="cosine", max_steps=20) for s in range(20)]
    assert schedule == first + second
    assert schedule[10] == 0.5 and schedule[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))


def save_teacher(path: Path) -> Path:
    """A tiny stage-2 checkpoint whose U-Net has every parameter perturbed, so that the time embedding
    and the context reach the output (as in a trained one)."""
    torch.manual_seed(0)
    model = LatentDiffusion(**tiny_module_configs())
    with torch.no_grad():
        for p in model.model.diffusion_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(
        {
            "ldm_stage": "diffusion",
            "state_dict": model.state_dict(),
            "hyper_parameters": model.checkpoint_hparams,
        },
        path,
    )
    return path


def tiny_student(tmp_path: Path, **distill) -> DistillationModule:
    teacher = save_teacher(tmp_path / "teacher.ckpt")
    config = TrainConfig(
        stage="distill",
        diffusion=DiffusionConfig(learning_rate=1e-3, ema=True),
        distill=DistillConfig(
            **{"start_steps": 4, "end_steps": 2, "guidance_steps": 3, "steps_per_round": 3, **distill}
        ),
    )
    return DistillationModule.from_teacher(teacher, config)


def batch(n: int = 4) -> dict:
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return {"image": images, "caption": ["a red circle", "a blue square", "", "a green triangle"][:n]}


def test_a_student_starts_as_its_teachers_conditional_model(tmp_path):
    student = tiny_student(tmp_path, parameterization="eps").eval()
    teacher = student.teacher
    assert teacher.config.guidance_embed_dim == 0 and student.model.diffusion_model.guidance_embed_dim == 32
    assert not any(p.requires_grad for p in teacher.denoiser.parameters())
    assert not any(k.startswith("teacher") for k in student.state_dict())  # not part of the student's weights
    g = torch.Generator().manual_seed(1)
    x, sigma, context = (
        torch.randn(2, 4, 16, 16, generator=g) * 3,
        torch.tensor([0.5, 9.0]),
        student.cond_stage_model(["a", "b"]),
    )
    with torch.no_grad():
        for w in (1.0, 6.0):
            guidance = torch.full((2,), w)
            assert torch.equal(
                student.model(x, sigma, context, guidance=guidance), teacher.denoiser(x, sigma, context)
            )
    # At w = 1 the guided target is the conditional output: the untrained student's stage-1 loss vanishes.
    one = tiny_student(tmp_path, parameterization="eps", guidance_range=[1.0, 1.0]).eval()
    one.enter_phase(0)
    with torch.no_grad():
        assert one.loss(batch(), train=False, generator=torch.Generator().manual_seed(0)).item() < 1e-10
        assert student.loss(batch(), train=False, generator=torch.Generator().manual_seed(0)).item() > 1e-6


def test_each_round_makes_the_student_the_next_teacher(tmp_path):
    student = tiny_student(tmp_path)  # v-prediction, with an EMA
    student.enter_phase(0)
    assert student.sampler_config.steps == 4 and student.distillation.steps == 4
    optimizer = torch.optim.SGD(student.model.parameters(), lr=0.1)
    loss = student.loss(batch(), train=True, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert student.model.diffusion_model.guidance_embed[2].weight.grad.abs().sum() > 0  # w's MLP learns
    optimizer.step()
    student.model_ema.update(student.model.diffusion_model)
    average = {k: v.clone() for k, v in student.model_ema.module.state_dict().items()}
    student.enter_phase(1)
    assert student.teacher.phase == 1 and student.teacher.denoiser.parameterization == "v"
    assert student.teacher.config.guidance_embed_dim == 32
    for name, value in student.teacher.denoiser.diffusion_model.state_dict().items():  # the EMA weights
        assert torch.equal(value, average[name]) and torch.equal(
            student.model.diffusion_model.state_dict()[name], value
        )
    assert student.sampler_config.steps == 2 and student.distillation.steps == 2
    assert student.sampler_config.name == "ddim" and student.sampler_config.spacing == "trailing"
    # The teacher travels in the checkpoint, outside the state dict, and comes back as it was.
    checkpoint = {"hyper_parameters": dict(student.hparams)}
    student.on_save_checkpoint(checkpoint)
    assert checkpoint["hyper_parameters"]["distillation"]["steps"] == 2
    assert checkpoint["hyper_parameters"]["sampler"]["steps"] == 2
    config = TrainConfig(stage="distill", distill=student.distill, diffusion=DiffusionConfig(ema=True))
    resumed = DistillationModule.from_resume(checkpoint["hyper_parameters"], config)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.phase == 1 and resumed.teacher.config == student.teacher.config
    for name, value in student.teacher.denoiser.state_dict().items():
        assert torch.equal(resumed.teacher.denoiser.state_dict()[name], value)
    changed = TrainConfig(stage="distill", distill=dataclasses.replace(student.distill, steps_per_round=5))
    with pytest.raises(ValueError, match="change the phases this run has already gone through"):
        DistillationModule.from_resume(checkpoint["hyper_parameters"], changed).on_load_checkpoint(checkpoint)


def test_an_image_conditioned_teacher_is_distilled_with_its_image_in_both_guidance_branches(tmp_path):
    teacher = save_tiny_image_conditioned(tmp_path / "inpaint.ckpt", "inpainting", seed=0)
    config = TrainConfig(stage="distill", distill=DistillConfig(
        start_steps=4, end_steps=2, guidance_steps=3, steps_per_round=3, parameterization="eps"))  # fmt: skip
    student = DistillationModule.from_teacher(teacher, config).eval()
    assert student.image_conditioning.task == "inpainting" and student.checkpoint_hparams["distillation"]
    assert student.model.diffusion_model.concat_channels == 5
    student.enter_phase(0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        conditioning = student.conditioning_of(batch(), drop=False, generator=g)  # text + mask + masked latent
        x, sigma = torch.randn(4, 4, 16, 16, generator=g) * 3, torch.tensor([0.5, 2.0, 9.0, 30.0])
        scale = torch.tensor([1.0, 3.0, 5.0, 7.5])
        target = student.teacher_call(conditioning, scale)(x, sigma)
        uncond = Conditioning(student.empty_context().expand(4, -1, -1), conditioning.image)
        d_cond = student.teacher.denoiser(x, sigma, conditioning)
        d_uncond = student.teacher.denoiser(x, sigma, uncond)
        assert_float32_close(target, d_uncond + scale[:, None, None, None] * (d_cond - d_uncond))
        # The student starts as the teacher's conditional model, the image and w given alike.
        assert torch.equal(student.model(x, sigma, conditioning, guidance=scale), d_cond)
        loss = student.loss(batch(), train=True, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() > 0


def test_distillation_needs_a_teacher_and_continues_only_its_own_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="stage=distill needs a stage-2 checkpoint to distil"):
        check_distill_resume(TrainConfig(stage="distill"), None)
    stage2 = ResumePoint("run/last.ckpt", "diffusion", {}, distilling=False)
    with pytest.raises(
        ValueError, match="is not a distillation run's checkpoint: to distil it, set diffusion.init_from"
    ):
        check_distill_resume(TrainConfig(stage="distill"), stage2)
    distilled = dataclasses.replace(stage2, distilling=True)
    with pytest.raises(ValueError, match="is a distillation run's checkpoint: set stage=distill"):
        check_distill_resume(TrainConfig(stage="diffusion"), distilled)
    check_distill_resume(TrainConfig(stage="distill"), distilled)  # accepted


IMPOSSIBLE = [
    (
        ["distill.start_steps=24", "distill.end_steps=5"],
        "distill.start_steps must be end_steps (5) times a power of two",
    ),
    (["distill.guidance_range=[3,2]"], "distill.guidance_range must be [low, high] with 0 <= low <= high"),
    (
        ["distill.parameterization=v_pred"],
        "distill.parameterization must be one of eps, v, x0 (got 'v_pred')",
    ),
    (
        ["distill.loss_weighting=snr"],
        "distill.loss_weighting must be one of truncated_snr, uniform (got 'snr')",
    ),
    (
        ["distill.end_steps=64", "distill.guidance_steps=0"],
        "distill.guidance_steps must be > 0 when start_steps",
    ),
    (
        ["stage=diffusion", "denoiser.guidance_embed_dim=8"],
        "denoiser.guidance_embed_dim is for stage=distill",
    ),
]


@pytest.mark.parametrize("overrides,message", IMPOSSIBLE, ids=[" ".join(o) for o, _ in IMPOSSIBLE])
def test_impossible_distill_settings_stop_the_run_before_anything_is_built(tmp_path, overrides, message):
    base = [
        "experiment=debug",
        "stage=distill",
        f"data.root={tmp_path / 'data'}",
        "diffusion.init_from=x.ckpt",
    ]
    with pytest.raises(ConfigError, match=re.escape(f"config: {message}")):
        run(compose_config([*base, *overrides]), tmp_path / "run")
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_the_distillation_preset_composes_and_passes():
    config = compose_config(["experiment=distill_shapes"])
    check_config(config)
    assert config.stage == "distill" and config.denoiser == compose_config([]).denoiser
    phases = distillation_phases(config.distill)
    assert [p.steps for p in phases] == [32, 16, 8, 4, 2, 1] and phases[-1].end == 13_000


# -- through the command line ----------------------------------------------------------------------

DISTILL = [
    "stage=distill",
    "distill.start_steps=4",
    "distill.end_steps=2",
    "distill.guidance_steps=2",
    "distill.steps_per_round=2",
    "trainer.checkpoint_every_n_steps=100",
]


@pytest.fixture(scope="module")
def distill_run(debug_run, tmp_path_factory) -> Path:
    """Stage 1 (2 steps) and one round 4 -> 2 steps (2 steps) of the debug run's checkpoint."""
    run_dir = tmp_path_factory.mktemp("distill") / "run"
    teacher = debug_run / "checkpoints" / "last.ckpt"
    result = train_on_debug_data(debug_run, run_dir, *DISTILL, f"diffusion.init_from={teacher}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_a_distillation_writes_a_checkpoint_per_student_with_what_it_was_distilled_for(
    debug_run, distill_run
):
    teacher = debug_run / "checkpoints" / "last.ckpt"
    folder = distill_run / "checkpoints"
    stage1, round1 = read_checkpoint(folder / "distill-4.ckpt"), read_checkpoint(folder / "distill-2.ckpt")
    assert (stage1["global_step"], round1["global_step"]) == (2, 4)
    for checkpoint, steps in ((stage1, 4), (round1, 2)):
        hparams = checkpoint["hyper_parameters"]
        assert hparams["distillation"] == {
            "steps": steps, "guidance_range": [1.0, 8.0], "parameterization": "v", "teacher": str(teacher)
        }  # fmt: skip
        assert (hparams["sampler"]["name"], hparams["sampler"]["steps"], hparams["sampler"]["eta"]) == (
            "ddim",
            steps,
            0.0,
        )
        assert (
            hparams["diffusion"]["parameterization"] == "v"
            and hparams["denoiser"]["guidance_embed_dim"] == 32
        )
    # Stage 1's teacher is the original model; the round's is stage 1's student.
    assert stage1[TEACHER_KEY]["phase"] == 0 and stage1[TEACHER_KEY]["denoiser"]["guidance_embed_dim"] == 0
    assert stage1[TEACHER_KEY]["parameterization"] == "eps"
    original = read_checkpoint(teacher)["state_dict"]
    assert all(
        torch.equal(v, original["model.diffusion_model." + k])
        for k, v in stage1[TEACHER_KEY]["state_dict"].items()
    )
    assert round1[TEACHER_KEY]["phase"] == 1 and round1[TEACHER_KEY]["parameterization"] == "v"
    student = {k: v for k, v in stage1["state_dict"].items() if k.startswith("model.diffusion_model.")}
    assert all(
        torch.equal(v, student["model.diffusion_model." + k])
        for k, v in round1[TEACHER_KEY]["state_dict"].items()
    )
    # The autoencoder, text encoder and latent statistics are the teacher's, unchanged; last.ckpt is the
    # last student.
    frozen = [k for k in original if not k.startswith("model.")]
    assert frozen and all(torch.equal(round1["state_dict"][k], original[k]) for k in frozen)
    last = read_checkpoint(folder / "last.ckpt")
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in round1["state_dict"].items())
    assert (distill_run / "images" / "samples-step000002.png").is_file()  # a grid per phase
    assert (distill_run / "images" / "samples-step000004.png").is_file()


@pytest.mark.slow
def test_the_students_sample_at_their_steps_with_one_call_each(distill_run, tmp_path, monkeypatch):
    calls = []
    forward = UNetModel.forward

    def counting(self, x, timesteps, context, guidance=None):
        calls.append((x.shape[0], None if guidance is None else guidance.tolist()))
        return forward(self, x, timesteps, context, guidance)

    monkeypatch.setattr(UNetModel, "forward", counting)
    for steps in (4, 2):
        calls.clear()
        ckpt = distill_run / "checkpoints" / f"distill-{steps}.ckpt"
        flags = ["--prompt", "a red circle", "--n_samples", "3", "--device", "cpu"]
        args = ["txt2img", "--ckpt", str(ckpt), *flags]
        assert len(sample([*args, "--outdir", str(tmp_path / str(steps)), "--scale", "4"])) == 3
        assert calls == [(3, [4.0, 4.0, 4.0])] * steps
    calls.clear()
    result = evaluate(["--ckpt", str(ckpt), "--n_per_prompt", "1", "--device", "cpu"])
    assert result["sampler"]["steps"] == 2 and result["n"] == 18
    assert len(calls) == 2 and sum(b for b, _ in calls) == 2 * 18  # 18 prompts, one batch, 2 calls
    monkeypatch.undo()
    refused = run_cli(["-m", "ldm.sample", *args, "--outdir", str(tmp_path / "x"), "--steps", "3"])
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert lines[-1] == (
        "error: this checkpoint was distilled for 2 sampling steps, not 3: sample it with 2 (the default) "
        "or take the checkpoint of another round"
    )


@pytest.mark.slow
def test_a_distilled_checkpoint_round_trips_through_the_sd_layout(distill_run, tmp_path):
    ckpt = distill_run / "checkpoints" / "distill-2.ckpt"
    sd = tmp_path / "student.safetensors"
    result = run_cli(["scripts/convert_checkpoint.py", "to-sd", "--ckpt", str(ckpt), "--out", str(sd)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model.diffusion_model.guidance_embed.2.weight" in load_file(str(sd))
    back = tmp_path / "back.ckpt"
    args = ["from-sd", "--sd", str(sd), "--arch", str(ckpt), "--out", str(back)]
    result = run_cli(["scripts/convert_checkpoint.py", *args])
    assert result.returncode == 0, result.stderr[-2000:]
    original, converted = read_checkpoint(ckpt), read_checkpoint(back)
    assert converted["hyper_parameters"]["distillation"] == original["hyper_parameters"]["distillation"]
    assert converted["hyper_parameters"]["sampler"] == original["hyper_parameters"]["sampler"]
    unet = [k for k in original["state_dict"] if k.startswith("model.diffusion_model.")]
    assert all(torch.equal(converted["state_dict"][k], original["state_dict"][k]) for k in unet)

    def sample_latents(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """(final latents, images) of txt2img's defaults; the latents are the last step's denoised estimate."""
        last = {}
        images = Text2Image.from_checkpoint(path, device="cpu")(
            ["a blue square", "a red circle"], [3, 4], callback=lambda step: last.update(step)
        )
        return last["denoised"], images

    latents, images = sample_latents(back)
    expected_latents, expected_images = sample_latents(ckpt)
    assert torch.equal(latents, expected_latents)  # the same student, step by step
    # The per-channel latent normalization is folded into the autoencoder's 1x1 convolutions in SD's
    # layout (test_convert.py): the decoder rounds differently, by far less than one 8-bit level.
    assert (images - expected_images).abs().max() < 1e-4


@pytest.mark.slow
def test_a_resumed_distillation_ends_where_the_uninterrupted_one_does(debug_run, distill_run, tmp_path):
    resumed_dir = tmp_path / "resumed"
    stage1 = distill_run / "checkpoints" / "distill-4.ckpt"
    result = train_on_debug_data(debug_run, resumed_dir, *DISTILL, f"resume={stage1}")
    assert result.returncode == 0, result.stderr[-3000:]
    whole = read_checkpoint(distill_run / "checkpoints" / "last.ckpt")
    resumed = read_checkpoint(resumed_dir / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 4 and resumed["hyper_parameters"]["distillation"]["steps"] == 2
    for name, value in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
    wrong = run_cli(
        [
            "-m",
            "ldm.train",
            "experiment=debug",
            f"hydra.run.dir={tmp_path / 'w'}",
            "stage=diffusion",
            f"resume={stage1}",
        ]
    )
    assert wrong.returncode != 0
    assert "is a distillation run's checkpoint: set stage=distill" in wrong.stdout + wrong.stderr
