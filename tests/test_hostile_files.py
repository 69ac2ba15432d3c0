"""A malicious pickle given to every command that reads a checkpoint or weights file: refused in one line.

The file is a torch file whose unpickling would create a marker file. Each command must exit
non-zero with exactly one line containing "error" that names the file, no traceback, and the
marker must not exist afterwards (the payload did not run). The commands with an in-process
``main(argv)`` are called directly; ``python -m ldm.train`` runs as a subprocess.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from ldm import convert, sample
from ldm.data import cache_latents
from ldm.eval import __main__ as evaluate
from tests.conftest import run_cli


class CreatesMarker:
    """A pickle payload: unpickling it calls open(marker, "w"), creating the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_hostile(path: Path, marker: Path) -> Path:
    """A torch file at `path` shaped like a checkpoint, whose unpickling creates `marker`; proven to run
    its payload under ``torch.load(weights_only=False)`` (so that a test of its refusal can fail)."""
    checkpoint = {"ldm_stage": "diffusion", "state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {}}
    torch.save({**checkpoint, "payload": CreatesMarker(str(marker))}, path)
    torch.load(path, weights_only=False)  # the payload is real: a plain unpickling runs it
    assert marker.is_file()
    marker.unlink()
    return path


@pytest.fixture(params=[".ckpt", ".pt"])
def hostile(request, tmp_path) -> tuple[Path, Path]:
    """(the malicious file x.ckpt or x.pt, the marker its payload would create)."""
    marker = tmp_path / "marker"
    return write_hostile(tmp_path / f"x{request.param}", marker), marker


def assert_refused_in_one_line(output: str, path: Path, marker: Path) -> None:
    """One line of `output` contains "error" and names `path`; no traceback; the payload did not run."""
    lines = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, output
    assert str(path) in lines[0] and "weights_only=True) refuses it" in lines[0], output
    assert "Traceback" not in output
    assert not marker.exists()


def init_image(tmp_path: Path) -> Path:
    path = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    return path


def command_line(command: str, path: Path, tmp_path: Path) -> tuple[Callable[[list[str]], None], list[str]]:
    """(main, argv) of `command` given the file `path` (outputs under `tmp_path`)."""
    sampling = ["--prompt", "a red circle", "--outdir", str(tmp_path)]
    if command == "txt2img --ckpt":
        return sample.main, ["txt2img", "--ckpt", str(path), *sampling]
    if command == "img2img --ckpt":
        return sample.main, [
            "img2img",
            "--ckpt",
            str(path),
            "--init-img",
            str(init_image(tmp_path)),
            *sampling,
        ]
    if command == "convert to-sd --ckpt":
        return convert.main, ["to-sd", "--ckpt", str(path), "--out", str(tmp_path / "o.safetensors")]
    if command == "convert from-sd --sd":
        return convert.main, [
            "from-sd",
            "--sd",
            str(path),
            "--arch",
            "sd2",
            "--out",
            str(tmp_path / "o.ckpt"),
        ]
    if command == "cache_latents --ckpt":
        return cache_latents.main, ["--ckpt", str(path), "--out", str(tmp_path / "latents")]
    assert command == "eval --ckpt"
    return evaluate.main, ["--ckpt", str(path)]


COMMANDS = [
    "txt2img --ckpt",
    "img2img --ckpt",
    "convert to-sd --ckpt",
    "convert from-sd --sd",
    "cache_latents --ckpt",
    "eval --ckpt",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_in_process_commands_refuse_the_pickle(command, hostile, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    path, marker = hostile
    main, argv = command_line(command, path, tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert_refused_in_one_line(captured.out + captured.err, path, marker)
    assert not (tmp_path / "samples").exists() and not (tmp_path / "latents").exists()
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.ckpt").exists()


@pytest.mark.parametrize(
    "override,suffix",
    [("resume", ".ckpt"), ("autoencoder.ckpt_path", ".ckpt"), ("diffusion.init_from", ".pt")],
)
def test_training_refuses_the_pickle(override, suffix, tmp_path, monkeypatch):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    marker = tmp_path / "marker"
    path = write_hostile(tmp_path / f"x{suffix}", marker)
    run_dir = tmp_path / "run"
    args = [
        "-m",
        "ldm.train",
        "experiment=debug",
        f"hydra.run.dir={run_dir}",
        f"data.root={tmp_path / 'data'}",
    ]
    result = run_cli([*args, "autoencoder.max_steps=1", "diffusion.max_steps=1", f"{override}={path}"])
    assert result.returncode == 2
    assert_refused_in_one_line(result.stdout + result.stderr, path, marker)
    # Refused before any data was generated or any stage trained.
    assert not (tmp_path / "data").exists()
    assert not (run_dir / "autoencoder").exists() and not (run_dir / "checkpoints").exists()
