"""ldm/data/cache_latents.py through its command line, then stage 2 trained from the cache it wrote."""

from __future__ import annotations

import csv
import json
import shlex

import pytest
import torch

from ldm.conditioning.text import OpenCLIPTextEncoder
from ldm.data.cache_latents import main
from ldm.data.latents import LatentDecoder, checkpoint_fingerprint, weights_fingerprint
from ldm.data.stream import ShardStream
from ldm.training.config_store import compose_config
from ldm.weights.checkpoint import read_checkpoint
from tests.conftest import run_cli, save_tiny_autoencoder, tiny_module_configs


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--text", "--", "experiment=debug", "conditioner.trainable=true"],
            "--text caches a frozen text encoder's states; the config has conditioner.trainable=true",
        ),
        (
            ["--text", "--", "experiment=debug", "diffusion.init_from={tmp}/none.ckpt"],
            "diffusion.init_from not found: {tmp}/none.ckpt",
        ),
        (["--ckpt", "{tmp}/none.ckpt"], "checkpoint not found: {tmp}/none.ckpt"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    save_tiny_autoencoder(tmp_path / "ae.ckpt", tiny_module_configs()["autoencoder"], seed=0)
    argv = ["--ckpt", str(tmp_path / "ae.ckpt"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, *(arg.format(tmp=tmp_path) for arg in args)])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message.format(tmp=tmp_path) in lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A tiny autoencoder, and the latents of a 24 + 8 image shapes set cached by the command."""
    root = tmp_path_factory.mktemp("cache_latents")
    ckpt = root / "ae.ckpt"
    save_tiny_autoencoder(ckpt, tiny_module_configs()["autoencoder"], seed=0)
    out = root / "latents"
    args = ["--ckpt", str(ckpt), "--data", "shapes", "--data-root", str(root / "shapes"), "--out", str(out)]
    args += ["--num-train", "24", "--num-val", "8", "--batch-size", "8", "--samples-per-shard", "10"]
    result = run_cli(["-m", "ldm.data.cache_latents", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    return {"ckpt": ckpt, "out": out, "output": result.stdout + result.stderr}


@pytest.mark.slow
def test_cache_json_describes_the_shards(cached):
    info = json.loads((cached["out"] / "cache.json").read_text())
    assert info["autoencoder"]["fingerprint"] == checkpoint_fingerprint(cached["ckpt"])
    assert (info["resolution"], info["moments_shape"], info["dtype"]) == (32, [8, 16, 16], "float32")
    assert info["splits"]["train"] == {
        "pattern": "train-{000000..000002}.tar",
        "shards": 3,
        "samples": 24,
        "skipped": {},
    }
    assert info["splits"]["val"] == {"pattern": "val-000000.tar", "shards": 1, "samples": 8, "skipped": {}}
    assert sorted(p.name for p in cached["out"].glob("*.tar")) == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
        "val-000000.tar",
    ]


@pytest.mark.slow
def test_training_from_the_printed_command(cached, tmp_path):
    output = cached["output"]
    command = shlex.split(output.split("train from the cache with:")[1].strip().splitlines()[0])
    assert command[:4] == ["python", "-m", "ldm.train", "stage=diffusion"]
    run_dir = tmp_path / "run"
    extra = [
        "experiment=debug",
        f"hydra.run.dir={run_dir}",
        "diffusion.max_steps=3",
        "diffusion.batch_size=8",
    ]
    result = run_cli([*command[1:], *extra, "trainer.enable_progress_bar=false"])
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expected_stage="diffusion")
    assert checkpoint["global_step"] == 3
    autoencoder = read_checkpoint(cached["ckpt"])["state_dict"]
    for key, value in autoencoder.items():
        assert torch.equal(checkpoint["state_dict"]["first_stage_model." + key[len("autoencoder.") :]], value)
    # The per-channel statistics (the debug preset normalizes each latent channel) were estimated from
    # posterior samples of the cached moments: 2 batches of 8 images, 8 x 8 latents, 1,024 values a channel.
    stream = ShardStream(
        sorted(str(p) for p in cached["out"].glob("train-*.tar")),
        decoder=LatentDecoder(),
        shuffle=False,
        shuffle_buffer=0,
        seed=0,
    )
    moments = torch.stack([sample["moments"] for sample in stream])
    mean, logvar = (m.transpose(0, 1).flatten(1) for m in moments.chunk(2, dim=1))  # [C, N * h * w]
    expected_mean = mean.mean(dim=1)
    expected_std = (mean.var(dim=1) + logvar.exp().mean(dim=1)).sqrt()  # std of mean + exp(logvar / 2) * eps
    state = checkpoint["state_dict"]
    assert state["scale_factor"].item() == 1.0
    # Within 5 standard errors of 1,024 draws: std / 32 for a mean, std / sqrt(2,048) relative for a std.
    assert torch.all((state["latent_mean"] - expected_mean).abs() < 5 * expected_std / 32)
    assert torch.all((state["latent_std"] / expected_std - 1).abs() < 5 / 2048**0.5)
    rows = list(csv.DictReader(open(run_dir / "logs" / "diffusion" / "metrics.csv")))
    assert any(row.get("val/loss") for row in rows)


@pytest.mark.slow
def test_training_refuses_another_autoencoder(cached, tmp_path):
    command = shlex.split(cached["output"].split("train from the cache with:")[1].strip().splitlines()[0])
    other = tmp_path / "other.ckpt"
    save_tiny_autoencoder(other, tiny_module_configs()["autoencoder"], seed=1)
    command = [
        arg if not arg.startswith("autoencoder.ckpt_path=") else f"autoencoder.ckpt_path={other}"
        for arg in command
    ]
    result = run_cli([*command[1:], "experiment=debug", f"hydra.run.dir={tmp_path / 'run'}"])
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "were cached with another autoencoder" in output
    assert "Traceback" not in output


@pytest.fixture(scope="module")
def cached_text(cached, tmp_path_factory):
    """The same images cached with --text, for the text encoder of `experiment=debug`."""
    out = tmp_path_factory.mktemp("cache_text") / "latents"
    args = [
        "--ckpt",
        str(cached["ckpt"]),
        "--data",
        "shapes",
        "--data-root",
        str(cached["out"].parent / "shapes"),
    ]
    args += ["--out", str(out), "--num-train", "24", "--num-val", "8", "--batch-size", "8", "--text"]
    result = run_cli(["scripts/cache_latents.py", *args, "--", "experiment=debug"])  # the script: the same
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    command = shlex.split(output.split("train from the cache with:")[1].strip().splitlines()[0])
    return {"out": out, "command": command}


@pytest.mark.slow
def test_text_cache_describes_the_text_encoder(cached_text):
    info = json.loads((cached_text["out"] / "cache.json").read_text())
    encoder = OpenCLIPTextEncoder(compose_config(["experiment=debug"]).conditioner)
    assert info["text_encoder"] == {
        "fingerprint": weights_fingerprint(encoder.state_dict()),
        "overrides": ["experiment=debug"],
        "context_shape": [16, 32],
    }
    assert info["splits"]["train"]["samples"] == 24
    assert cached_text["command"][-2:] == ["data.cached_text=true", "experiment=debug"]


@pytest.mark.slow
def test_training_from_cached_text(cached_text, tmp_path):
    run_dir = tmp_path / "run"
    extra = [f"hydra.run.dir={run_dir}", "diffusion.max_steps=3", "diffusion.batch_size=8"]
    result = run_cli([*cached_text["command"][1:], *extra, "trainer.enable_progress_bar=false"])
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt", expected_stage="diffusion")
    assert checkpoint["global_step"] == 3
    rows = list(csv.DictReader(open(run_dir / "logs" / "diffusion" / "metrics.csv")))
    assert any(row.get("val/loss") for row in rows)
    # A resumed run checks the text encoder once its weights are restored, and goes on.
    resumed = [*cached_text["command"][1:], f"hydra.run.dir={tmp_path / 'resumed'}", "diffusion.batch_size=8"]
    result = run_cli([*resumed, f"resume={run_dir / 'checkpoints' / 'last.ckpt'}", "diffusion.max_steps=5"])
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = read_checkpoint(
        tmp_path / "resumed" / "checkpoints" / "last.ckpt", expected_stage="diffusion"
    )
    assert checkpoint["global_step"] == 5
    # Another text encoder (another seed of the random one) is refused, with the remedy.
    other = [*cached_text["command"][1:], f"hydra.run.dir={tmp_path / 'other'}", "conditioner.init_seed=1"]
    result = run_cli(other)  # fails before the scale factor is estimated (too few samples for a batch of 32)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "were cached with another text encoder" in output
    assert "python -m ldm.data.cache_latents --text" in output and "Traceback" not in output
