"""ldm/sample.py: txt2img and img2img write what the pipeline samples, numbered on; bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.inpainter import Inpainter
from ldm.pipeline import Text2Image
from ldm.sample import main, run
from ldm.samplers.presets import sampler_preset
from ldm.upscaler import Upscaler
from tests.conftest import (
    run_cli,
    save_tiny_autoencoder,
    save_tiny_image_conditioned,
    save_tiny_latent_diffusion,
    tiny_module_configs,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny stage-2 checkpoint with random weights (32 px images, autoencoder factor 2)."""
    return save_tiny_latent_diffusion(tmp_path_factory.mktemp("tiny") / "last.ckpt", seed=0)


@pytest.fixture
def init_img(tmp_path):
    path = tmp_path / "init.png"
    image = Image.new("RGB", (33, 33), (0, 0, 0))  # rounded down to 32x32 (factor 2)
    image.paste((255, 0, 0), (8, 8, 24, 24))
    image.save(path)
    return path


def as_png(images: torch.Tensor) -> np.ndarray:
    """Images [B, 3, H, W] in [0, 1] as the uint8 [B, H, W, 3] that torchvision's save_image writes."""
    return images.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_pngs(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in paths])


def test_txt2img_writes_each_prompt_iteration_and_seed_numbered_on(ckpt, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n  a blue square  \n\n")  # trailing blank lines are no prompts
    out = tmp_path / "out"
    args = ["txt2img", "--ckpt", str(ckpt), "--from-file", str(prompts), "--n_samples", "2", "--n_iter", "2"]
    args += ["--steps", "3", "--seed", "5", "--outdir", str(out), "--device", "cpu"]
    written = run(args)
    assert [p.name for p in written] == [f"{i:05d}.png" for i in range(8)]
    assert sorted((out / "samples").glob("*.png")) == written
    # Rows: prompt x iteration (iteration-major); image k of the call has seed 5 + k.
    pipe = Text2Image.from_checkpoint(ckpt, device="cpu")
    sampler = sampler_preset(pipe.sampler, steps=3)
    order = ["a red circle", "a blue square"] * 2
    expected = torch.cat([pipe([p, p], [5 + 2 * b, 6 + 2 * b], sampler=sampler) for b, p in enumerate(order)])
    assert np.array_equal(read_pngs(written), as_png(expected))
    with Image.open(out / "grid-0000.png") as grid:  # 4 rows of 2 images of 32 px, padding 2
        assert grid.size == (2 * 34 + 2, 4 * 34 + 2)
    # A second call numbers on, and the same seeds give the same images.
    again = run(args)
    assert [p.name for p in again] == [f"{i:05d}.png" for i in range(8, 16)]
    assert np.array_equal(read_pngs(again), read_pngs(written))
    assert (out / "grid-0001.png").is_file()


def test_the_txt2img_script_runs_the_same_command(ckpt, tmp_path):
    args = ["--ckpt", str(ckpt), "--prompt", "a red circle", "--n_samples", "2", "--steps", "2"]
    args += ["--seed", "1", "--device", "cpu"]
    result = run_cli(["scripts/txt2img.py", *args, "--outdir", str(tmp_path / "script")])
    assert result.returncode == 0, result.stderr[-2000:]
    from_script = sorted((tmp_path / "script" / "samples").glob("*.png"))
    from_module = run(["txt2img", *args, "--outdir", str(tmp_path / "module")])
    assert len(from_script) == 2 and np.array_equal(read_pngs(from_script), read_pngs(from_module))
    assert "wrote 2 images to" in result.stderr


def test_img2img_writes_samples_and_a_grid(ckpt, tmp_path, init_img):
    out = tmp_path / "out"
    args = ["img2img", "--ckpt", str(ckpt), "--init-img", str(init_img), "--prompt", "a blue square"]
    args += ["--n_samples", "2", "--n_iter", "2", "--steps", "4", "--strength", "0.5"]
    args += ["--sampler", "dpmpp_2m_sde", "--outdir", str(out), "--device", "cpu"]
    result = run_cli(["-m", "ldm.sample", *args])
    assert result.returncode == 0, result.stderr[-2000:]
    samples = sorted((out / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert Image.open(samples[0]).size == (32, 32)
    assert Image.open(out / "grid-0000.png").size == (2 * 34 + 2, 2 * 34 + 2)
    # What the pipeline redraws from the image cropped to 32x32 (LANCZOS resize), seeds 42 + k.
    pipe = Text2Image.from_checkpoint(ckpt, device="cpu")
    image = Image.open(init_img).convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
    init = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None].expand(4, -1, -1, -1)
    sampler = sampler_preset(pipe.sampler, "dpmpp_2m_sde", steps=4)
    expected = pipe.img2img(init, ["a blue square"] * 4, [42, 43, 44, 45], strength=0.5, sampler=sampler)
    assert np.array_equal(read_pngs(samples), as_png(expected))


def one_error_line(capsys, argv: list[str]) -> str:
    """Run ``main(argv)``, which must exit with status 2 and one ``error:`` line on stderr; returns it."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prompt", ""], 'empty prompt: give --prompt "..." or --from-file FILE'),
        (["--prompt", "   "], "empty prompt"),
        (["--prompt", "a red circle", "--n_samples", "0"], "--n_samples must be >= 1, got 0"),
        (["--prompt", "a red circle", "--n_samples", "-3"], "--n_samples must be >= 1, got -3"),
        (["--prompt", "a red circle", "--n_iter", "0"], "--n_iter must be >= 1, got 0"),
        (["--prompt", "a red circle", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["--prompt", "a red circle", "--scale", "-0.5"], "--scale must be >= 0, got -0.5"),
        (["--prompt", "a red circle", "--scale", "nan"], "--scale must be >= 0, got nan"),
        (["--prompt", "a red circle", "--rescale", "1.5"], "--rescale must be in [0, 1], got 1.5"),
        (
            ["--prompt", "a red circle", "--guidance-interval", "5", "0.3"],
            "--guidance-interval needs 0 <= LOW < HIGH, got 5 0.3",
        ),
        (["--prompt", "a red circle", "--H", "-32"], "--H must be >= 1, got -32"),
        (
            ["--prompt", "a red circle", "--H", "31"],
            "image size 31x32 is not divisible by the autoencoder factor 2",
        ),
        (
            ["--prompt", "a red circle", "--W", "33"],
            "image size 32x33 is not divisible by the autoencoder factor 2",
        ),
        (["--prompt", "a red circle", "--sampler", "nope"], "unknown sampler 'nope'"),
    ],
)
def test_txt2img_input_errors(ckpt, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    line = one_error_line(capsys, ["txt2img", "--ckpt", str(ckpt), "--outdir", str(tmp_path), *extra])
    assert message in line
    assert not (tmp_path / "samples").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--strength", "1.5"], "--strength must be in [0, 1], got 1.5"),
        (["--strength", "-0.1"], "--strength must be in [0, 1], got -0.1"),
        (["--init-img", "/no/such.png"], "init image not found: /no/such.png"),
        (["--prompt", ""], "empty prompt"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--H", "31"], "image size 31x32 is not divisible by the autoencoder factor 2"),
        (["--sampler", "nope"], "unknown sampler 'nope'"),
    ],
)
def test_img2img_input_errors(ckpt, tmp_path, init_img, capsys, monkeypatch, extra, message):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    args = ["img2img", "--ckpt", str(ckpt), "--init-img", str(init_img), "--prompt", "a red circle"]
    line = one_error_line(capsys, [*args, "--outdir", str(tmp_path / "out"), *extra])
    assert message in line


def test_prompt_file_errors(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    prompts = tmp_path / "prompts.txt"
    base = ["txt2img", "--ckpt", str(ckpt), "--outdir", str(tmp_path / "out"), "--from-file", str(prompts)]
    prompts.write_text("a red circle\n\na blue square\n \n")
    assert (
        one_error_line(capsys, base)
        == f"error: prompt file {prompts} has an empty prompt on line 2: one prompt per line"
    )
    prompts.write_text("a red circle\n\n\na blue square\n")
    assert "on lines 2, 3:" in one_error_line(capsys, base)
    prompts.write_text("\n  \n")
    assert one_error_line(capsys, base) == f"error: prompt file {prompts} has no prompts"
    prompts.unlink()
    assert one_error_line(capsys, base) == f"error: prompt file not found: {prompts}"


def test_checkpoint_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    base = ["txt2img", "--prompt", "a red circle", "--outdir", str(tmp_path)]
    line = one_error_line(capsys, [*base, "--ckpt", "/no/such/last.ckpt"])
    assert "checkpoint not found: /no/such/last.ckpt" in line
    ae = save_tiny_autoencoder(tmp_path / "ae.ckpt", tiny_module_configs()["autoencoder"], seed=0)
    assert ae is not None
    line = one_error_line(capsys, [*base, "--ckpt", str(tmp_path / "ae.ckpt")])
    assert "is a stage-1 autoencoder checkpoint, but a stage-2 latent diffusion checkpoint is needed" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["-m", "ldm.sample", "txt2img", "--prompt", ""], "error: empty prompt"),
        (
            ["scripts/img2img.py", "--init-img", "x.png", "--prompt", "a", "--strength", "2"],
            "error: --strength",
        ),
        (["scripts/txt2img.py", "--prompt", "a", "--n_iter", "0"], "error: --n_iter must be >= 1, got 0"),
    ],
)
def test_the_command_line_exits_2_with_one_line(args, message, monkeypatch):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    result = run_cli([*args, "--ckpt", "/no/such.ckpt"])  # the input checks come before the checkpoint
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message) and "Traceback" not in result.stderr


def test_ldm_full_error_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("LDM_FULL_ERROR", "1")
    result = run_cli(["-m", "ldm.sample", "txt2img", "--prompt", "a", "--n_samples", "0", "--ckpt", "x.ckpt"])
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "ValueError: --n_samples must be >= 1, got 0"
    with pytest.raises(ValueError, match="--n_samples must be >= 1"):
        main(["txt2img", "--prompt", "a", "--n_samples", "0", "--ckpt", "x.ckpt"])


@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_compile_flag_reaches_the_pipeline(ckpt, tmp_path, init_img, monkeypatch, mode):
    """--compile builds a compiled pipeline (what it samples: tests/test_pipeline.py), --cuda-graphs one
    replayed as CUDA graphs; both off by default."""
    asked = []
    load = Text2Image.from_checkpoint

    def from_checkpoint(path, device=None, compile=False, cuda_graphs=False):
        asked.append((compile, cuda_graphs))
        return load(path, device)  # eager here: compiling the tiny model takes a minute

    monkeypatch.setattr(Text2Image, "from_checkpoint", from_checkpoint)
    args = [mode, "--ckpt", str(ckpt), "--prompt", "a red circle", "--n_samples", "1", "--steps", "1"]
    args += ["--device", "cpu", "--outdir", str(tmp_path / "out")]
    if mode == "img2img":
        args += ["--init-img", str(init_img)]
    run(args)
    run([*args, "--compile"])
    run([*args, "--cuda-graphs"])  # asked for; the pipeline itself refuses it off CUDA (test_pipeline.py)
    assert asked == [(False, False), (True, False), (False, True)]


# --- upscale and inpaint: image-conditioned checkpoints ---------------------------------------------------


@pytest.fixture(scope="module")
def sr_ckpt(tmp_path_factory):
    """A tiny x2 super-resolution checkpoint with random weights (16 -> 32 px)."""
    path = tmp_path_factory.mktemp("sr") / "last.ckpt"
    return save_tiny_image_conditioned(path, "super_resolution", seed=0)


@pytest.fixture(scope="module")
def inpaint_ckpt(tmp_path_factory):
    """A tiny inpainting checkpoint with random weights (32 px)."""
    return save_tiny_image_conditioned(tmp_path_factory.mktemp("inpaint") / "last.ckpt", "inpainting", seed=0)


def write_png(path, size, box, colour=(255, 255, 255)):
    image = Image.new("RGB" if len(colour) == 3 else "L", size, (0, 0, 0) if len(colour) == 3 else 0)
    image.paste(colour if len(colour) == 3 else colour[0], box)
    image.save(path)
    return path


def test_upscale_writes_what_the_upscaler_samples(sr_ckpt, tmp_path):
    small = write_png(tmp_path / "small.png", (16, 16), (4, 4, 12, 12), (255, 0, 0))
    args = ["upscale", "--ckpt", str(sr_ckpt), "--init-img", str(small), "--prompt", "a red square"]
    args += ["--noise-level", "5", "--n_samples", "2", "--steps", "3", "--seed", "7", "--device", "cpu"]
    written = run([*args, "--outdir", str(tmp_path / "out")])
    assert [p.name for p in written] == ["00000.png", "00001.png"]
    upscaler = Upscaler.from_checkpoint(sr_ckpt, device="cpu")
    low_res = torch.from_numpy(np.asarray(Image.open(small))).permute(2, 0, 1)[None].float() / 255
    expected = upscaler(
        low_res.expand(2, -1, -1, -1),
        ["a red square"] * 2,
        [7, 8],
        noise_level=5,
        sampler=sampler_preset(upscaler.sampler, steps=3),
    )
    assert read_pngs(written).shape == (2, 32, 32, 3) and np.array_equal(read_pngs(written), as_png(expected))


def test_inpaint_writes_what_the_inpainter_samples(inpaint_ckpt, tmp_path):
    image = write_png(tmp_path / "in.png", (32, 32), (4, 4, 20, 20), (0, 0, 255))
    mask = write_png(tmp_path / "mask.png", (32, 32), (8, 8, 24, 24), (255,))
    args = ["inpaint", "--ckpt", str(inpaint_ckpt), "--init-img", str(image), "--mask", str(mask)]
    args += ["--prompt", "a red circle", "--n_samples", "2", "--steps", "3", "--seed", "3", "--device", "cpu"]
    written = run([*args, "--outdir", str(tmp_path / "out")])
    inpainter = Inpainter.from_checkpoint(inpaint_ckpt, device="cpu")
    to_tensor = lambda path: torch.from_numpy(np.asarray(Image.open(path))).float().div(255)  # noqa: E731
    images, masks = to_tensor(image).permute(2, 0, 1)[None], to_tensor(mask)[None, None]
    expected = inpainter(
        images.expand(2, -1, -1, -1),
        masks.expand(2, -1, -1, -1),
        ["a red circle"] * 2,
        [3, 4],
        sampler=sampler_preset(inpainter.sampler, steps=3),
    )
    assert np.array_equal(read_pngs(written), as_png(expected))


def test_inpaint_pastes_the_input_back_outside_the_mask(inpaint_ckpt, tmp_path):
    image = write_png(tmp_path / "in.png", (32, 32), (4, 4, 20, 20), (0, 0, 255))
    mask = write_png(tmp_path / "mask.png", (32, 32), (8, 8, 24, 24), (255,))
    args = ["inpaint", "--ckpt", str(inpaint_ckpt), "--init-img", str(image), "--mask", str(mask)]
    args += ["--prompt", "a red circle", "--n_samples", "2", "--steps", "3", "--seed", "3", "--device", "cpu"]
    drawn = read_pngs(run([*args, "--outdir", str(tmp_path / "drawn")]))
    pasted = read_pngs(run([*args, "--paste-back", "--outdir", str(tmp_path / "pasted")]))
    inside = np.zeros((2, 32, 32, 3), dtype=bool)
    inside[:, 8:24, 8:24] = True
    given = np.broadcast_to(np.asarray(Image.open(image)), (2, 32, 32, 3))
    assert np.array_equal(pasted[~inside], given[~inside]) and np.array_equal(pasted[inside], drawn[inside])
    assert not np.array_equal(drawn[~inside], given[~inside])
    soft = read_pngs(run([*args, "--paste-back", "2", "--outdir", str(tmp_path / "soft")]))
    assert np.array_equal(soft[:, :, :2], given[:, :, :2]) and np.array_equal(soft[inside], drawn[inside])
    assert not np.array_equal(soft[:, :, 7], given[:, :, 7])  # the column beside the mask is blended


def test_image_conditioned_input_errors(sr_ckpt, inpaint_ckpt, ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    image = write_png(tmp_path / "in.png", (32, 32), (4, 4, 20, 20))
    small_mask = write_png(tmp_path / "mask.png", (16, 16), (4, 4, 8, 8), (255,))
    odd = write_png(tmp_path / "odd.png", (33, 33), (4, 4, 20, 20))
    odd_mask = write_png(tmp_path / "odd_mask.png", (33, 33), (4, 4, 20, 20), (255,))
    out = ["--prompt", "a red circle", "--outdir", str(tmp_path / "out")]
    inpaint = ["inpaint", "--ckpt", str(inpaint_ckpt), *out]
    line = one_error_line(capsys, [*inpaint, "--init-img", str(image), "--mask", str(small_mask)])
    assert f"the mask {small_mask} is 16x16 pixels but the image {image} 32x32: they must be the same" in line
    line = one_error_line(capsys, [*inpaint, "--init-img", str(odd), "--mask", str(odd_mask)])
    assert "image size 33x33 is not divisible by the autoencoder factor 2" in line
    upscale = ["upscale", "--ckpt", str(sr_ckpt), "--init-img", str(tmp_path / "in.png"), *out]
    paste = ["--init-img", str(image), "--mask", str(image), "--paste-back", "-1"]
    assert "--paste-back takes a mask blur >= 0 pixels, got -1" in one_error_line(capsys, [*inpaint, *paste])
    line = one_error_line(capsys, [*upscale, "--noise-level", "1000"])
    assert "--noise-level must be in [0, 999], got 1000" in line
    line = one_error_line(capsys, ["upscale", "--ckpt", str(ckpt), "--init-img", str(image), *out])
    assert "is a text-to-image checkpoint (image_conditioning.task=none), but this needs a super-res" in line
    line = one_error_line(capsys, ["txt2img", "--ckpt", str(sr_ckpt), *out])
    assert "is a super-resolution checkpoint" in line and "sample it with scripts/upscale.py" in line
    wrong_kind = ["inpaint", "--ckpt", str(sr_ckpt), "--init-img", str(image), "--mask", str(image), *out]
    assert "needs an inpainting one" in one_error_line(capsys, wrong_kind)
