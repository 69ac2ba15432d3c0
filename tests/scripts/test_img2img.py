"""scripts/img2img.py through its command line: files written, and one-line errors."""

import pytest
from PIL import Image

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def init_img(tmp_path):
    path = tmp_path / "init.png"
    image = Image.new("RGB", (33, 33), (0, 0, 0))  # rounded down to 32x32 (factor 2)
    image.paste((255, 0, 0), (8, 8, 24, 24))
    image.save(path)
    return path


def test_img2img_writes_samples_and_a_grid(debug_run, tmp_path, init_img):
    out = tmp_path / "out"
    args = [
        "scripts/img2img.py",
        "--ckpt",
        str(debug_run / "checkpoints" / "last.ckpt"),
        "--init-img",
        str(init_img),
    ]
    args += ["--prompt", "a blue square", "--n_samples", "2", "--n_iter", "2", "--steps", "4"]
    args += ["--strength", "0.5", "--sampler", "dpmpp_2m_sde", "--outdir", str(out)]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-2000:]
    samples = sorted((out / "samples").glob("*.png"))
    assert [p.name for p in samples] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert Image.open(samples[0]).size == (32, 32)
    assert Image.open(out / "grid-0000.png").size == (2 * 34 + 2, 2 * 34 + 2)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--init-img", "/no/such.png"], "init image not found: /no/such.png"),
        (["--strength", "1.5"], "--strength must be in [0, 1], got 1.5"),
        (["--sampler", "nope"], "unknown sampler 'nope'"),
    ],
)
def test_img2img_errors(debug_run, tmp_path, init_img, extra, message):
    args = [
        "scripts/img2img.py",
        "--ckpt",
        str(debug_run / "checkpoints" / "last.ckpt"),
        "--init-img",
        str(init_img),
    ]
    result = run_cli(args + ["--prompt", "a red circle", "--outdir", str(tmp_path)] + extra)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
