import pytest
import torch

from ldm.checkpoint import CheckpointError, read_checkpoint


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
