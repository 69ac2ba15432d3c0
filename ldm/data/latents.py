"""Cached latents: shards of autoencoder posteriors, encoded once, that stage 2 trains from.

``python -m ldm.data.cache_latents`` reads image shards in order (centre crops, no augmentation), encodes
them with the frozen autoencoder and writes, per split, ``OUT/train-000000.tar``, ... and
``OUT/val-000000.tar``, ... with, for each sample ``KEY``:

* ``KEY.moments.npy``: the posterior's parameters, mean and log-variance stacked on the channel
  axis (``2C x h x w``, float32 or float16; exactly what the encoder's ``quant_conv`` outputs),
  so that training still draws a fresh posterior sample every step, as on-the-fly encoding does;
* ``KEY.context.npy``, with ``--text``: the frozen text encoder's per-token states of the caption
  (``context_length x width``, what cross-attention reads), so that training can skip the text
  encoder too (``data.cached_text=true``);
* ``KEY.txt``: the caption (UTF-8);
* ``KEY.json``: the image shard's metadata, copied when it had one.

``OUT/cache.json``, beside the shards, records what made them: the autoencoder's fingerprint
(sha256 of its state dict, ``weights_fingerprint``), the resolution, the moments' shape and
dtype, per split the shard pattern and the sample and skip counts, and with ``--text`` the text
encoder's fingerprint, config and context shape. Written after the last shard, it is also the
cache's manifest (``ldm.data.shard_writer``): it lists the shards, and writing new shards into the
folder removes it until the new one is written. ``data.cached_latents=true`` reads it to check that
stage 2 uses the same autoencoder and resolution, and ``data.cached_text=true`` the same text encoder.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ldm.data.decode import ImageDecoder, read_caption
from ldm.data.quality import SampleCounter, SampleFilter
from ldm.data.shard_writer import ShardWriter, missing_shards, read_manifest, write_manifest
from ldm.data.stream import ShardStream
from ldm.data.urls import expand_urls

if TYPE_CHECKING:
    from ldm.autoencoder.model import KLAutoencoder
    from ldm.config import DataConfig


CACHE_FILE = "cache.json"
"""The description of a latent cache, written beside its shards."""
CACHE_FORMAT = "ldm-latents-1"
"""Value of ``cache.json``'s ``format`` entry."""
MOMENTS_MEMBER = "moments.npy"
CONTEXT_MEMBER = "context.npy"
CAPTION_MEMBER = "txt"
DTYPES = ("float32", "float16")


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict's tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checkpoint_fingerprint(path: str | Path) -> str:
    """The fingerprint of the autoencoder in a stage-1 (or stage-2) checkpoint."""
    from ldm.weights.checkpoint import autoencoder_weights, read_checkpoint

    return weights_fingerprint(autoencoder_weights(read_checkpoint(path))[1])


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the bytes of a .npy file."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def read_npy(data: bytes) -> np.ndarray:
    """The array of .npy file bytes (no pickled objects)."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def read_array(sample: dict, member: str, shape: Optional[tuple[int, ...]], ndim: int) -> torch.Tensor:
    """A sample's .npy member as a float32 tensor, checked to have `ndim` axes and `shape` (when given)."""
    array = read_npy(sample[member])
    if array.ndim != ndim or shape not in (None, tuple(array.shape)):
        raise ValueError(f"{member} of shape {array.shape}, expected {shape or f'{ndim} axes'}")
    return torch.from_numpy(array.astype(np.float32, copy=False).copy())


@dataclass
class LatentDecoder:
    """Decodes raw latent-shard samples into ``{"moments": 2C x h x w float32, "caption", "key"}``
    (and ``"context": T x D float32`` with `with_context`).

    Samples without moments, with unreadable moments or moments of another shape than
    ``moments_shape`` (when given), and samples without a readable caption are skipped and counted
    (as ``ldm.data.decode.ImageDecoder`` does), one raw sample pulled per sample yielded or skipped.
    With `with_context`, a missing context counts as a missing caption, and an unreadable one, or
    one of another shape than ``context_shape``, as bad text.
    """

    moments_shape: Optional[tuple[int, ...]] = None
    """Expected shape of every moments array (2C, h, w); None accepts any 3-d array."""
    with_context: bool = False
    """Also read each caption's cached text-encoder states."""
    context_shape: Optional[tuple[int, ...]] = None
    """Expected shape of every context array (T, D); None accepts any 2-d array."""

    def __call__(
        self, samples: Iterator[dict], *, counter: SampleCounter, augment_seed: Optional[str] = None
    ) -> Iterator[dict]:
        for sample in samples:
            where = f"sample '{sample.get('__key__')}' in {sample.get('__url__')}"
            if MOMENTS_MEMBER not in sample:
                counter.skip("missing_image", f"{where} has no '{MOMENTS_MEMBER}' member")
                continue
            caption = read_caption(sample, CAPTION_MEMBER, counter, where)
            if caption is None:
                continue
            try:
                moments = read_array(sample, MOMENTS_MEMBER, self.moments_shape, ndim=3)
            except Exception as e:  # numpy raises several kinds for broken .npy bytes
                counter.skip("unreadable_image", f"{where}: {type(e).__name__}: {e}")
                continue
            decoded = {"moments": moments, "caption": caption, "key": sample["__key__"]}
            if self.with_context:
                if CONTEXT_MEMBER not in sample:
                    counter.skip("missing_caption", f"{where} has no '{CONTEXT_MEMBER}' member")
                    continue
                try:
                    decoded["context"] = read_array(sample, CONTEXT_MEMBER, self.context_shape, ndim=2)
                except Exception as e:
                    counter.skip("bad_text", f"{where}: {type(e).__name__}: {e}")
                    continue
            counter.read()
            yield decoded


def cache_info_path(train_urls: list[str]) -> Path:
    """Where the cache.json of latent shards is: beside the first training shard (a local path)."""
    first = train_urls[0]
    if first.startswith("pipe:") or "://" in first:
        raise ValueError(
            f"data.cached_latents=true reads {CACHE_FILE} beside the training shards, which must be local "
            f"files; got {first}"
        )
    return Path(first).parent / CACHE_FILE


def read_cache_info(train_urls: list[str]) -> dict[str, Any]:
    """The cache.json of latent shards, checked to be one and to describe shards that are all there.

    A cache.json written before ``ldm.data.shard_writer`` has no ``shards`` list; its splits' patterns
    name its shards.
    """
    path = cache_info_path(train_urls)
    try:
        info = read_manifest(path.parent, CACHE_FILE)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found: data.cached_latents=true needs shards written by python -m ldm.data.cache_latents"
        ) from None
    if info.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a latent cache description (format {info.get('format')!r})")
    missing = missing_shards(path.parent, info, legacy_shards=cache_shards)
    if missing:
        raise FileNotFoundError(
            f"{path} lists {len(missing)} shards that are not there ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): cache them again with python -m ldm.data.cache_latents"
        )
    return info


def latent_decoders(cfg: DataConfig, train_urls: list[str]) -> tuple[LatentDecoder, LatentDecoder]:
    """Training and validation decoders of cached latents, after checking the data config against the cache."""
    if cfg.crop != "center" or cfg.flip:
        raise ValueError(
            "data.cached_latents=true trains on latents of centre crops: set data.crop=center and "
            f"data.flip=false (got crop={cfg.crop}, flip={cfg.flip})"
        )
    if SampleFilter(cfg.filters).active:
        raise ValueError("data.filters do not apply to cached latents: filter the images before caching them")
    info = read_cache_info(train_urls)
    if info["resolution"] != cfg.resolution:
        raise ValueError(
            f"the latents were cached at resolution {info['resolution']}, but data.resolution is "
            f"{cfg.resolution}: set data.resolution={info['resolution']}"
        )
    context_shape = None
    if cfg.cached_text:
        text = info.get("text_encoder")
        if text is None:
            raise ValueError(
                f"the latents in {cache_info_path(train_urls).parent} were cached without text embeddings: "
                "cache them with python -m ldm.data.cache_latents --text, or set data.cached_text=false"
            )
        context_shape = tuple(text["context_shape"])
    decoder = LatentDecoder(
        moments_shape=tuple(info["moments_shape"]), with_context=cfg.cached_text, context_shape=context_shape
    )
    return decoder, decoder


def check_cache_autoencoder(train_urls: list[str], autoencoder_ckpt: str | Path) -> None:
    """Raise a ValueError unless the latents were cached with the autoencoder of `autoencoder_ckpt`."""
    info = read_cache_info(train_urls)
    cached = info["autoencoder"]["fingerprint"]
    if checkpoint_fingerprint(autoencoder_ckpt) != cached:
        raise ValueError(
            f"the latents in {cache_info_path(train_urls).parent} were cached with another autoencoder "
            f"({info['autoencoder'].get('checkpoint')}, sha256 {cached[:12]}...) than "
            f"autoencoder.ckpt_path={autoencoder_ckpt}: cache them again with python -m ldm.data.cache_latents"
        )


def check_cache_text_encoder(train_urls: list[str], text_encoder: torch.nn.Module) -> None:
    """Raise a ValueError unless the cached text embeddings were made by `text_encoder`'s weights."""
    info = read_cache_info(train_urls)
    cached = (info.get("text_encoder") or {}).get("fingerprint")
    if cached is None:
        raise ValueError(f"the latents in {cache_info_path(train_urls).parent} hold no text embeddings")
    if weights_fingerprint(text_encoder.state_dict()) != cached:
        raise ValueError(
            f"the text embeddings in {cache_info_path(train_urls).parent} were cached with another text "
            f"encoder (sha256 {cached[:12]}...) than this run's conditioner: cache them again with "
            "python -m ldm.data.cache_latents --text and this run's config overrides, or set data.cached_text=false"
        )


@dataclass
class WithMetadata:
    """Wraps a decoder, adding each raw sample's ``json`` member (text, '' when absent) to what it yields.

    The decoder pulls one raw sample per sample it yields or skips, so the last raw sample pulled
    when it yields is the one it decoded.
    """

    decoder: Any

    def __call__(
        self, samples: Iterator[dict], *, counter: SampleCounter, augment_seed: Optional[str] = None
    ) -> Iterator[dict]:
        last: dict = {}

        def tap() -> Iterator[dict]:
            for sample in samples:
                last["json"] = sample.get("json", b"")
                yield sample

        for decoded in self.decoder(tap(), counter=counter, augment_seed=augment_seed):
            decoded["json"] = last["json"].decode("utf-8", errors="replace")
            yield decoded


def image_batches(
    urls: list[str], *, resolution: int, batch_size: int, caption_key: str = "txt", num_workers: int = 0
) -> tuple[DataLoader, SampleCounter]:
    """Batches of image shards to cache: in shard order, centre crops, no augmentation, with json metadata.

    Returns the loader and the counter of samples read and skipped.
    """
    decoder = WithMetadata(ImageDecoder(resolution, caption_key=caption_key))
    stream = ShardStream(urls, decoder=decoder, shuffle=False, shuffle_buffer=0, seed=0, split_nodes=False)
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers), stream.counter


@torch.no_grad()
def write_latent_shards(
    autoencoder: KLAutoencoder,
    batches: Iterable[dict],
    folder: str | Path,
    split: str,
    *,
    dtype: str = "float32",
    samples_per_shard: int = 1000,
    text_encoder: Optional[torch.nn.Module] = None,
) -> dict[str, Any]:
    """Encode image batches (``image``, ``caption``, ``key``, optional ``json``) into ``folder/split-NNNNNN.tar``,
    with each caption's per-token states when a (frozen) `text_encoder` is given.

    Returns ``{"pattern": "split-{000000..00000N}.tar", "shards", "samples", "moments_shape": [2C, h, w]}``
    (and ``"context_shape": [T, D]`` with a text encoder); the pattern is None when there were no samples.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; available: {', '.join(DTYPES)}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, got {samples_per_shard}")
    device = next(autoencoder.parameters()).device
    shape, context_shape = None, None
    # Rewriting shards in `folder` voids its cache.json until write_cache_info writes the new one.
    sink = ShardWriter(
        folder, f"{split}-%06d.tar", samples_per_shard, manifest=CACHE_FILE, writes_manifest=False
    )
    with sink:
        for batch in batches:
            moments = autoencoder.encode(batch["image"].to(device)).parameters  # B x 2C x h x w
            array = moments.float().cpu().numpy().astype(dtype)
            shape = list(array.shape[1:])
            contexts = None
            if text_encoder is not None:
                contexts = text_encoder(list(batch["caption"])).float().cpu().numpy().astype(dtype)
                context_shape = list(contexts.shape[1:])
            for i, key in enumerate(batch["key"]):
                sample = {
                    "__key__": key,
                    MOMENTS_MEMBER: npy_bytes(array[i]),
                    CAPTION_MEMBER: batch["caption"][i].encode("utf-8"),
                }
                if contexts is not None:
                    sample[CONTEXT_MEMBER] = npy_bytes(contexts[i])
                if batch.get("json") and batch["json"][i]:
                    sample["json"] = batch["json"][i].encode("utf-8")
                sink.write(sample)
    last = len(sink.shards) - 1
    pattern = f"{split}-000000.tar" if last == 0 else f"{split}-{{000000..{last:06d}}}.tar"
    written = {
        "pattern": pattern if sink.shards else None,  # no shard when there were no samples
        "shards": len(sink.shards),
        "samples": sink.samples,
        "moments_shape": shape,
    }
    if text_encoder is not None:
        written["context_shape"] = context_shape
    return written


def cache_shards(info: dict[str, Any]) -> list[str]:
    """The shard names of a cache description: those of each split's pattern."""
    return [
        name
        for split in info["splits"].values()
        if split["pattern"]
        for name in expand_urls(split["pattern"])
    ]


def write_cache_info(folder: str | Path, info: dict[str, Any]) -> Path:
    """Write ``info`` (with the format tag) as the folder's cache.json: the manifest of the cache's shards
    (``ldm.data.shard_writer``), written after the last of them."""
    samples = sum(split["samples"] for split in info["splits"].values())
    return write_manifest(
        folder, cache_shards(info), samples, {"format": CACHE_FORMAT, **info}, name=CACHE_FILE
    )
