"""Writing webdataset tar shards: numbered shards, each written atomically, and a manifest written last.

Every writer of shards in ldm goes through here: the shapes set (``ldm.data.shapes``), image folders
(``ldm.data.writer``), cached latents (``ldm.data.latents``) and the data benchmark's JPEGs.

A shard is written under a temporary name and renamed (``os.replace``) to its final name when it
is closed, so a file under a final name is always a whole shard. After the last shard, a small JSON
manifest lists the shards, the number of samples and the caller's metadata; it is written the same
way, and it is what marks the set complete: ``read_complete_manifest`` accepts a folder only when
its manifest is there and every shard it lists is a file. A run killed midway leaves finished
shards and perhaps a ``*.tmp-*`` file, but no manifest of the new set. Members get a fixed owner and
modification time, so the same samples always give byte-identical shards.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Optional

from webdataset import TarWriter

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
"""The default file name of a set's manifest, beside (or above) its shards."""
_OWNER = "ldm"
"""User and group of every tar member (with mtime 0: reproducible tar files)."""

LegacyShards = Callable[[dict], list[str]]
"""Names the shards of a manifest written before this module, which has no ``shards`` entry."""


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to write that appears at ``path`` (replacing any file there) only if the block ends
    without error; otherwise it is removed."""
    path = Path(path)
    # Unique per process and call, so that concurrent writers of the same file never share a temporary.
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(temporary, "xb") as stream:
            yield stream
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_manifest(
    folder: str | Path,
    shards: list[str],
    samples: int,
    metadata: Optional[dict[str, Any]] = None,
    *,
    name: str = MANIFEST,
) -> Path:
    """Write the manifest that marks a set complete: ``metadata``, then the shard names (relative to
    ``folder``) and the sample count. Call it after the last shard is closed."""
    metadata = metadata or {}
    for own in ("shards", "samples"):
        if own in metadata:
            raise ValueError(f"metadata key '{own}' is the manifest's own; use another name")
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as stream:
        content = {**metadata, "shards": list(shards), "samples": samples}
        stream.write((json.dumps(content, indent=2) + "\n").encode("utf-8"))
    return path


def read_manifest(folder: str | Path, name: str = MANIFEST) -> dict[str, Any]:
    """The manifest ``name`` in ``folder``: FileNotFoundError when it is missing, ValueError when it is
    not a JSON object."""
    path = Path(folder) / name
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} holds a {type(manifest).__name__}, not a JSON object")
    return manifest


def missing_shards(
    folder: str | Path, manifest: dict[str, Any], legacy_shards: Optional[LegacyShards] = None
) -> list[str]:
    """The shards that a manifest lists and that are not files in ``folder`` (ValueError if it lists none:
    no ``shards`` entry, and no ``legacy_shards`` to name them)."""
    try:
        names = (
            manifest["shards"] if "shards" in manifest or legacy_shards is None else legacy_shards(manifest)
        )
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"the manifest in {folder} does not list its shards ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"the manifest in {folder} lists its shards as {names!r}, not a list of names")
    return [n for n in names if not (Path(folder) / n).is_file()]


def read_complete_manifest(
    folder: str | Path, name: str = MANIFEST, *, legacy_shards: Optional[LegacyShards] = None
) -> Optional[dict[str, Any]]:
    """The manifest of the complete set in ``folder``, or None: no manifest, an unreadable one, or one that
    lists a shard that is not there."""
    try:
        manifest = read_manifest(folder, name)
        missing = missing_shards(folder, manifest, legacy_shards)
    except (OSError, ValueError):
        return None
    return None if missing else manifest


@contextmanager
def _tar_shard(path: Path) -> Iterator[TarWriter]:
    """A tar writer with fixed owner and mtime whose file appears at ``path`` only when it is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_file(path) as stream,
        TarWriter(stream, user=_OWNER, group=_OWNER, mtime=0, encoder=False) as tar,
    ):
        yield tar


class ShardWriter:
    """Writes samples into numbered tar shards ``folder / (pattern % i)``, ``samples_per_shard`` to a shard.

    A sample is a dict of member name (``png``, ``txt``, ``moments.npy``...) to bytes, with a ``__key__``.
    Each shard is renamed into place when it is full or the writer closes. The first shard removes the
    folder's manifest (the set is being rewritten); leaving the ``with`` block without error writes the
    new one (shards, samples and ``metadata``, which may be added to while writing). A set written by
    several writers (train and val, say) passes ``writes_manifest=False`` to each and calls
    ``write_manifest`` after the last. An error inside the block leaves the shards closed before it, no
    manifest and no partly written shard under a final name.
    """

    def __init__(
        self,
        folder: str | Path,
        pattern: str = "%06d.tar",
        samples_per_shard: int = 1000,
        *,
        manifest: str = MANIFEST,
        metadata: Optional[dict[str, Any]] = None,
        writes_manifest: bool = True,
    ):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
        try:
            numbered = pattern % 0 != pattern % 1
        except TypeError:
            numbered = False
        if not numbered:
            raise ValueError(f"shard pattern '{pattern}' needs one integer field such as %06d")
        self.folder = Path(folder)
        self.pattern = pattern
        self.samples_per_shard = samples_per_shard
        self.manifest = manifest
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.writes_manifest = writes_manifest
        self.shards: list[str] = []
        """Names of the shards started so far, relative to the folder, in order."""
        self.samples = 0
        """Samples written so far."""
        self._shard: Optional[ExitStack] = None
        self._tar: Optional[TarWriter] = None
        self._in_shard = 0

    def __enter__(self) -> ShardWriter:
        return self

    def write(self, sample: dict[str, Any]) -> None:
        """Add one sample to the current shard, starting a shard first or closing it after as needed."""
        if self._shard is None:
            self._start_shard()
        self._tar.write(sample)
        self.samples += 1
        self._in_shard += 1
        if self._in_shard == self.samples_per_shard:
            self._close_shard()

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            if self._shard is not None:
                self._shard.__exit__(exc_type, exc, traceback)  # removes the shard's temporary file
                self._shard = None
            return
        self._close_shard()
        if self.writes_manifest:
            write_manifest(self.folder, self.shards, self.samples, self.metadata, name=self.manifest)

    def _start_shard(self) -> None:
        if not self.shards:
            (self.folder / self.manifest).unlink(missing_ok=True)
        name = self.pattern % len(self.shards)
        self._shard = ExitStack()
        self._tar = self._shard.enter_context(_tar_shard(self.folder / name))
        self.shards.append(name)
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._shard is not None:
            self._shard.close()
            logger.debug("wrote %s (%d samples)", self.folder / self.shards[-1], self._in_shard)
            self._shard, self._tar = None, None


@contextmanager
def staged_folder(
    folder: str | Path, *, manifest: str = MANIFEST, legacy_shards: Optional[LegacyShards] = None
) -> Iterator[Path]:
    """A temporary sibling of ``folder`` to write a whole set into, renamed to ``folder`` when the block
    ends without error (and removed either way).

    Whatever is at ``folder`` without a complete manifest is replaced; a complete set that appeared there
    meanwhile (another process, such as another rank, wrote the same set) is kept and the copy dropped.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the finished set should be readable like any folder

    def complete(path: Path) -> bool:
        return read_complete_manifest(path, manifest, legacy_shards=legacy_shards) is not None

    try:
        yield staging
        if not complete(staging):
            raise RuntimeError(f"the set written into {staging} has no complete manifest {manifest}")
        if folder.exists() and not complete(folder):
            logger.warning("replacing the incomplete set at %s", folder)
            shutil.rmtree(folder)
        try:
            os.rename(staging, folder)
        except OSError:
            if not complete(folder):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
