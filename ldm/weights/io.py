"""Weight files in and out: one reader, one writer and one key-and-shape check for every weights file.

Files are ``.safetensors``, or torch files read with ``torch.load(weights_only=True)`` (memory-mapped
when they are zip archives, as ``torch.save`` writes them), so that loading a file never runs code
from it. A state dict may be wrapped as ``{"state_dict": ...}`` (LDM's and Lightning's layout).
Writes go to a temporary file beside the target that replaces it once complete, so that a failed
write leaves the previous file as it was. Every error is one line naming the file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of a zip archive: what ``torch.save`` writes (since 1.6), and what can be memory-mapped."""


class WeightsError(ValueError):
    """A weights file that cannot be read, or weights that do not fit what they are loaded into."""


def _reason(error: BaseException) -> str:
    """The informative line of an error that torch may spread over several lines and paragraphs."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if (
        isinstance(error, pickle.UnpicklingError)
        and lines
        and lines[0].startswith("Weights only load failed")
    ):
        # torch's first paragraph is advice about weights_only=False; what was refused comes later.
        lines = [
            line for line in lines[1:] if not line.startswith(("Please file", "Check the documentation"))
        ]
        # Some versions number their advice "(1) ... (2) ..."; the refused global is named elsewhere.
        refused = [line for line in lines if "WeightsUnpickler" in line or "global" in line.lower()]
        lines = refused or lines
    if not lines:
        return type(error).__name__
    return f"{type(error).__name__}: {lines[0].split('. ')[0].rstrip('.')}"


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")


def read_torch_file(path: str | Path, what: str = "weights file") -> Any:
    """The object in a torch file, read with ``torch.load(weights_only=True)`` onto the CPU.

    Raises FileNotFoundError, or a one-line WeightsError naming the file when it is truncated, not a
    torch file, or refused by ``weights_only`` (it holds Python objects besides tensors and plain types).
    `what` names the file in the messages ("checkpoint", ...).
    """
    path = Path(path)
    _require_file(path, what)
    with open(path, "rb") as f:
        mmap = f.read(len(ZIP_MAGIC)) == ZIP_MAGIC  # a legacy (non-zip) torch file cannot be memory-mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path} is not a readable {what}: torch.load(weights_only=True) refuses it, as it is not a "
            f"torch file or holds Python objects besides tensors and plain types ({_reason(e)})"
        ) from e
    except Exception as e:
        raise WeightsError(
            f"{path} is not a readable {what}: truncated or not a torch file ({_reason(e)})"
        ) from e


def read_tensors(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a ``.safetensors`` file or a torch file (unwrapping ``{"state_dict": ...}``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        _require_file(path, "weights file")
        try:
            return load_file(str(path))
        except SafetensorError as e:
            raise WeightsError(f"{path} is not a readable safetensors file ({_reason(e)})") from e
    state = read_torch_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds no state dict (it holds an object of type {type(state).__name__})")
    other = next((k for k, v in state.items() if not isinstance(v, Tensor)), None)
    if other is not None:
        kind = type(state[other]).__name__
        raise WeightsError(f"{path} holds no state dict of tensors ({other!r} is of type {kind})")
    return state


def read_tensor_names(path: str | Path) -> list[str]:
    """The keys of a weights file; a ``.safetensors`` file's are read from its header alone."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return list(read_tensors(path))
    from safetensors import SafetensorError, safe_open

    _require_file(path, "weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except SafetensorError as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({_reason(e)})") from e


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on success it is synced to disk and renamed over
    `path`, on failure removed (so `path` is either the old file or the complete new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_torch_file(obj: Any, path: str | Path) -> Path:
    """``torch.save`` `obj` to `path`, streamed to a temporary file that replaces `path` once complete."""
    with atomic_target(path) as temporary, open(temporary, "xb") as f:  # a new file, usual permissions
        torch.save(obj, f)
    return Path(path)


def write_tensors(state: Mapping[str, Tensor], path: str | Path) -> Path:
    """Write a state dict as ``.safetensors``, or for another suffix as a torch file ``{"state_dict": ...}``.

    The write is atomic (:func:`atomic_target`).
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if path.suffix != ".safetensors":
        return write_torch_file({"state_dict": tensors}, path)
    from safetensors.torch import save_file

    with atomic_target(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    return path


def check_state_dict(
    state: Mapping[str, Tensor], expected_shapes: Mapping[str, Sequence[int]], what: str
) -> None:
    """Raise a one-line WeightsError, beginning with `what`, unless `state` has exactly the keys and
    shapes of `expected_shapes`; it counts the missing keys, unexpected keys and shape mismatches and
    names the first of each (in the order of `expected_shapes`, then of `state`), with both shapes."""
    missing = [k for k in expected_shapes if k not in state]
    unexpected = [k for k in state if k not in expected_shapes]
    wrong = [k for k in expected_shapes if k in state and tuple(state[k].shape) != tuple(expected_shapes[k])]
    details = []
    if missing:
        details.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
    if wrong:
        k = wrong[0]
        given, expected = tuple(state[k].shape), tuple(expected_shapes[k])
        details.append(f"{len(wrong)} shape mismatches, e.g. {k}: {given} given, {expected} expected")
    if details:
        raise WeightsError(f"{what}: {'; '.join(details)}")


def load_checked(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` after :func:`check_state_dict`'s one-line check."""
    check_state_dict(state, {k: v.shape for k, v in module.state_dict().items()}, what)
    module.load_state_dict(state, strict=True)
