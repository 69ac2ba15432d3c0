"""A distilled student through SD's single-file layout (ldm/weights/sd.py, export.py): its guidance embedding
travels as extra model.diffusion_model.* keys and comes back with the student's own checkpoint as --arch."""

import torch

from ldm.convert import main as convert
from ldm.pipeline import Text2Image
from ldm.samplers.distilled import DistilledSampling
from ldm.weights.checkpoint import load_latent_diffusion
from ldm.weights.export import unstatable_settings
from ldm.weights.io import read_tensors
from tests.samplers.test_distilled import PROMPTS, SEEDS, distilled_model


def test_a_distilled_student_round_trips_through_the_sd_layout(tmp_path):
    model = distilled_model(steps=2)
    with torch.no_grad():
        model.model.diffusion_model.guidance_embed[2].weight.normal_(std=0.05)  # w matters
    ckpt = tmp_path / "distill-2.ckpt"
    checkpoint = {
        "ldm_stage": "diffusion",
        "state_dict": model.state_dict(),
        "hyper_parameters": model.checkpoint_hparams,
    }
    torch.save(checkpoint, ckpt)
    sd = tmp_path / "student.safetensors"
    convert(["to-sd", "--ckpt", str(ckpt), "--out", str(sd)])
    state = read_tensors(sd)
    extra = sorted(k for k in state if "guidance_embed" in k)
    assert extra == [
        f"model.diffusion_model.guidance_embed.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")
    ]
    # Neither LDM's yaml nor diffusers' UNet config can state the guidance input: not written.
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert "student.yaml" not in written and "student-diffusers/unet/config.json" not in written
    unstatable = unstatable_settings(model.checkpoint_hparams)
    assert any("guidance_embed_dim=16" in line for line in unstatable["diffusers_unet"])

    back = tmp_path / "back.ckpt"
    convert(["from-sd", "--sd", str(sd), "--arch", str(ckpt), "--out", str(back)])
    converted = load_latent_diffusion(back)
    assert converted.distillation == DistilledSampling(2, (1.0, 8.0), "v", teacher="teacher.ckpt")
    for name, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[name], value), name
    expected = Text2Image.from_module(model)(PROMPTS, SEEDS)
    assert torch.equal(Text2Image.from_checkpoint(back, device="cpu")(PROMPTS, SEEDS), expected)
