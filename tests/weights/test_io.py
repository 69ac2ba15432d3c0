"""ldm/weights/io.py: one reader, one writer and one key-and-shape check for weight files."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch
from torch import nn

from ldm.weights.checkpoint import read_checkpoint
from ldm.weights.io import (
    WeightsError,
    check_state_dict,
    load_checked,
    read_tensor_names,
    read_tensors,
    read_torch_file,
    write_tensors,
)


def example_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g).half(),
        "norm.weight": torch.randn(5, generator=g).bfloat16(),
        "steps": torch.tensor([3, -7], dtype=torch.int64),
        "transposed": torch.randn(3, 2, generator=g).t(),  # not contiguous
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(sorted(a)) == list(sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def one_line_naming(error: BaseException, path) -> str:
    message = str(error)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_round_trip_is_exact(tmp_path, suffix):
    state = example_state()
    path = write_tensors(state, tmp_path / "sub" / f"weights{suffix}")
    assert path == tmp_path / "sub" / f"weights{suffix}"
    assert_same(read_tensors(path), state)
    assert sorted(read_tensor_names(path)) == sorted(state)
    # The layouts, read by the formats' own readers: a flat safetensors file, or {"state_dict": ...}.
    if suffix == ".safetensors":
        assert_same(safetensors.torch.load_file(str(path)), state)
    else:
        assert_same(torch.load(path, weights_only=True)["state_dict"], state)
    assert os.listdir(path.parent) == [path.name]  # no temporary file left


def test_reads_plain_wrapped_and_legacy_torch_files_memory_mapping_zip_files(tmp_path, monkeypatch):
    state = example_state()
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "wrapped.ckpt")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    seen = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (seen.append(k["mmap"]), load(*a, **k))[1])
    for name in ("plain.pt", "wrapped.ckpt", "legacy.pth"):
        assert_same(read_tensors(tmp_path / name), state)
    assert seen == [True, True, False]  # a legacy (non-zip) file cannot be memory-mapped


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"weights{suffix}"
    write_tensors({"w": torch.ones(3)}, path)
    before = path.read_bytes()

    def fail_midway(obj, f, *args, **kwargs):
        with open(f, "ab") if isinstance(f, str) else f as out:
            out.write(b"half a file")
        raise OSError("disk full")

    if suffix == ".safetensors":
        monkeypatch.setattr(safetensors.torch, "save_file", fail_midway)
    else:
        monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_tensors({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]
    assert torch.equal(read_tensors(path)["w"], torch.ones(3))


class CreatesMarker:
    """A pickle payload: unpickling it calls open(marker, "w"), creating the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": CreatesMarker(str(marker))}, path)
    torch.load(path, weights_only=False)  # the payload is real: a plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    for read in (read_tensors, read_torch_file, read_checkpoint):
        with pytest.raises(ValueError) as error:
            read(path)
        message = one_line_naming(error.value, path)
        assert "weights_only=True) refuses it" in message
        assert not marker.exists()


def test_truncated_and_foreign_files_give_one_line(tmp_path):
    good = tmp_path / "good.ckpt"
    write_tensors(example_state(), good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_bytes(b"not a torch file")
    for name in ("truncated.ckpt", "empty.pt"):
        with pytest.raises(WeightsError) as error:
            read_tensors(tmp_path / name)
        assert "is not a readable weights file: truncated or not a torch file" in one_line_naming(
            error.value, tmp_path / name
        )
    with pytest.raises(WeightsError) as error:
        read_tensors(tmp_path / "text.pt")
    one_line_naming(error.value, tmp_path / "text.pt")

    write_tensors(example_state(), tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[:-10])
    for read in (read_tensors, read_tensor_names):
        with pytest.raises(WeightsError, match="is not a readable safetensors file") as error:
            read(tmp_path / "truncated.safetensors")
        one_line_naming(error.value, tmp_path / "truncated.safetensors")


def test_missing_files_and_non_tensor_contents(tmp_path):
    for name in ("absent.safetensors", "absent.ckpt"):
        with pytest.raises(FileNotFoundError, match=f"weights file not found: .*{name}"):
            read_tensors(tmp_path / name)
    torch.save({"state_dict": {"w": torch.zeros(1), "step": 3}}, tmp_path / "mixed.ckpt")
    with pytest.raises(WeightsError, match=r"holds no state dict of tensors \('step' is of type int\)"):
        read_tensors(tmp_path / "mixed.ckpt")
    torch.save([torch.zeros(1)], tmp_path / "list.ckpt")
    with pytest.raises(WeightsError, match=r"holds no state dict \(it holds an object of type list\)"):
        read_tensors(tmp_path / "list.ckpt")


def test_checker_names_the_first_offence_of_each_kind_with_both_shapes():
    expected = {"a": (2, 3), "b": (4,), "c": (5, 5), "d": (1,), "e": (7,)}
    state = {
        "a": torch.zeros(2, 3),
        "b": torch.zeros(4, 1),  # the first shape mismatch
        "c": torch.zeros(5),
        "x": torch.zeros(1),  # unexpected
    }
    with pytest.raises(WeightsError) as error:
        check_state_dict(state, expected, "the weights do not fit")
    assert str(error.value) == (
        "the weights do not fit: 2 missing keys, e.g. d; 1 unexpected keys, e.g. x; "
        "2 shape mismatches, e.g. b: (4, 1) given, (4,) expected"
    )
    with pytest.raises(
        WeightsError, match=r"^w: 1 shape mismatches, e.g. c: \(5,\) given, \(5, 5\) expected$"
    ):
        check_state_dict(
            {k: torch.zeros(s) for k, s in expected.items()} | {"c": torch.zeros(5)}, expected, "w"
        )
    check_state_dict({k: torch.zeros(s) for k, s in expected.items()}, expected, "w")  # fits: no error


def test_load_checked_loads_exactly_or_leaves_the_module():
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    load_checked(target, source.state_dict(), "linear")
    assert torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)
    before = nn.Linear(3, 2).state_dict()
    fresh = nn.Linear(3, 2)
    fresh.load_state_dict(before)
    with pytest.raises(WeightsError, match=r"^linear: 1 missing keys, e.g. bias$"):
        load_checked(fresh, {"weight": source.weight}, "linear")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())
