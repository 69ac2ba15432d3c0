"""Checkpoint files streamed to disk instead of built in memory first.

Lightning's ``TorchCheckpointIO`` serialises a checkpoint into an in-memory buffer before writing
it, so saving takes the checkpoint's size again in host memory: some 15 GB for the U-Net, AdamW
state, EMA and frozen encoders of SD 2 training (on a 24 GB machine, a CPU run of SD 2's networks
was killed at its first save). Here local paths are written by ``torch.save`` straight into a
temporary file beside the target, which is then renamed over it (``ldm.weights.io.write_torch_file``):
the same guarantee (no half-written file under the checkpoint's name, an earlier checkpoint kept when
a save fails) without the copies. Other paths (``s3://``, ...) go through Lightning's writer. Loading (``resume=``) reads with
``torch.load(weights_only=True)`` unless Lightning is told otherwise: this project's checkpoints
hold only tensors and plain Python types.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ldm.weights.io import write_torch_file


class StreamingCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves stream to a temporary file that replaces the target,
    and whose loads default to ``weights_only=True``."""

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location, True if weights_only is None else weights_only)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Optional[Any] = None
    ) -> None:
        fs, local_path = url_to_fs(str(path))
        if not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}"
            )
        write_torch_file(checkpoint, local_path)
