from pathlib import Path

import pytest
import torch

from ldm.weights.checkpoint import CheckpointError, load_autoencoder, load_latent_diffusion, read_checkpoint


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.ckpt", expected_stage="diffusion")


def test_not_an_ldm_checkpoint(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not an ldm checkpoint"):
        read_checkpoint(path)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(garbage)


def test_wrong_stage(tmp_path):
    path = tmp_path / "ae.ckpt"
    torch.save({"ldm_stage": "autoencoder", "state_dict": {}}, path)
    assert read_checkpoint(path, expected_stage="autoencoder")["ldm_stage"] == "autoencoder"
    with pytest.raises(CheckpointError, match="is a stage-1 autoencoder checkpoint"):
        read_checkpoint(path, expected_stage="diffusion")


def test_pickled_objects_are_refused(tmp_path):
    # weights_only=True: arbitrary objects in a checkpoint are not unpickled.
    path = tmp_path / "evil.ckpt"
    torch.save({"ldm_stage": "diffusion", "x": object()}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(path)


LEGACY = Path(__file__).parent.parent / "fixtures" / "legacy"


def test_weights_that_do_not_fit_the_hyper_parameters_give_one_line(tmp_path):
    checkpoint = torch.load(LEGACY / "autoencoder.ckpt", weights_only=True)
    key = "autoencoder.decoder.conv_out.weight"
    shape = tuple(checkpoint["state_dict"][key].shape)
    checkpoint["state_dict"][key] = torch.zeros(1, *shape[1:])
    torch.save(checkpoint, tmp_path / "ae.ckpt")
    with pytest.raises(CheckpointError) as error:
        load_autoencoder(tmp_path / "ae.ckpt")
    assert str(error.value) == (
        f"the autoencoder weights in {tmp_path / 'ae.ckpt'} do not fit its hyper-parameters: "
        f"1 shape mismatches, e.g. decoder.conv_out.weight: {(1, *shape[1:])} given, {shape} expected"
    )
    checkpoint = torch.load(LEGACY / "diffusion.ckpt", weights_only=True)
    del checkpoint["state_dict"]["scale_factor"]
    torch.save(checkpoint, tmp_path / "ldm.ckpt")
    with pytest.raises(
        CheckpointError, match=r"do not fit its hyper-parameters: 1 missing keys, e.g. scale_factor$"
    ):
        load_latent_diffusion(tmp_path / "ldm.ckpt")
