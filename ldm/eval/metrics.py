"""FID, KID and CLIP score of generated images (torchmetrics), with extractors read from local files only.

FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) compare the InceptionV3 pool features
(2048-d) of the generated images with those of a folder of reference images; CLIP score (Hessel et
al. 2021) is ``max(100 * mean cos(E_image, E_caption), 0)`` under an open_clip model. Nothing is
downloaded: the Inception weights are torch-fidelity's / pytorch-fid's converted TF file
(``weights-inception-2015-12-05-6726825d.pth`` = ``pt_inception-2015-12-05-6726825d.pth``) named by
a path, by ``$LDM_INCEPTION_WEIGHTS`` or found in torch's hub cache; the open_clip weights are a
local file or a pretrained tag already in the Hugging Face cache. A metric whose weights are not
here raises :class:`ExtractorUnavailable` with a one-line message, and the caller skips it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Optional

import open_clip
import torch
from PIL import Image
from torch import Tensor, nn

from ldm.conditioning.text import WEIGHT_FILE_SUFFIXES, cached_pretrained_file
from ldm.data.decode import pil_to_uint8, resize_and_crop, to_rgb
from ldm.data.tar_reader import read_shards
from ldm.weights.io import WeightsError, load_checked, read_tensors

log = logging.getLogger(__name__)

METRICS = ("fid", "kid", "clip")
"""The names ``--metrics`` takes."""

INCEPTION_ENV = "LDM_INCEPTION_WEIGHTS"
CLIP_WEIGHTS_ENV = "LDM_CLIP_WEIGHTS"
INCEPTION_FILE_NAMES = (
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity's name (what torchmetrics downloads)
    "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid's name for the same file
)
"""The FID Inception weights as torch hub caches them (``$TORCH_HOME/hub/checkpoints/``)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ExtractorUnavailable(RuntimeError):
    """A metric's feature extractor that cannot be had without the network: the metric is skipped."""


def quantize(images: Tensor) -> Tensor:
    """[B, 3, H, W] floats in [0, 1] -> uint8 pixels, as a PNG of the sample would hold them."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


# --- reference images -----------------------------------------------------------------------------


def reference_files(folder: str | Path) -> list[Path]:
    """The image files and ``.tar`` shards under `folder`, sorted (raises if there are none)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"reference folder not found: {folder}")
    suffixes = (*IMAGE_SUFFIXES, ".tar")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"no reference images in {folder} (looked for {', '.join(suffixes)} files)")
    return files


def read_reference_images(folder: str | Path) -> list[Tensor]:
    """Every image under `folder` (image files, and the images inside ``.tar`` shards) as uint8 3 x H x W."""
    images = []
    for path in reference_files(folder):
        if path.suffix.lower() == ".tar":
            images.extend(_shard_images(path))
        else:
            with Image.open(path) as image:
                images.append(pil_to_uint8(to_rgb(image)))
    if not images:
        raise ValueError(f"no reference images in {folder}: its .tar shards hold no image members")
    return images


def _shard_images(path: Path) -> list[Tensor]:
    """The images of one webdataset shard (one per sample: its first image member)."""

    def fail(error: Exception) -> bool:
        raise ValueError(f"cannot read reference shard: {error}")

    images = []
    for sample in read_shards([str(path)], handler=fail):
        key = next((k for k in sample if f".{k.lower()}" in IMAGE_SUFFIXES), None)
        if key is not None:
            with Image.open(io.BytesIO(sample[key])) as image:
                images.append(pil_to_uint8(to_rgb(image)))
    return images


# --- FID and KID ----------------------------------------------------------------------------------


def default_inception_file() -> Optional[Path]:
    """$LDM_INCEPTION_WEIGHTS, else the FID Inception file in torch's hub cache if it is there."""
    if os.environ.get(INCEPTION_ENV):
        return Path(os.environ[INCEPTION_ENV])
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return next((checkpoints / n for n in INCEPTION_FILE_NAMES if (checkpoints / n).is_file()), None)


def load_inception(path: str | Path | None) -> nn.Module:
    """torchmetrics' FID InceptionV3 (2048-d pool features of uint8 images) with weights from a local file."""
    how = (
        f"pass --inception FILE or set {INCEPTION_ENV} (the file {INCEPTION_FILE_NAMES[0]}, "
        "which torchmetrics/torch-fidelity download into $TORCH_HOME/hub/checkpoints/)"
    )
    if path is None:
        searched = Path(torch.hub.get_dir()) / "checkpoints"
        raise ExtractorUnavailable(f"no InceptionV3 weights file (none in {searched}): {how}")
    if not Path(path).is_file():
        raise ExtractorUnavailable(f"InceptionV3 weights file not found: {path}; {how}")
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ExtractorUnavailable(
            "the InceptionV3 of FID and KID comes with torch-fidelity: pip install torch-fidelity (ldm[eval])"
        )
    from torchmetrics.image.fid import NoTrainInceptionV3

    # Read once here with weights_only=True: a file that holds code is refused before torch-fidelity's
    # own torch.load (which is weights-only by default only from torch 2.6) sees it.
    read_tensors(path)
    try:
        inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
        )
    except RuntimeError as e:  # load_state_dict's report of missing or unexpected keys, over many lines
        keys = " ".join(str(e).partition(":")[2].split())  # after "Error(s) in loading state_dict for ...:"
        cut = keys[:150] + ("..." if len(keys) > 150 else "")
        raise WeightsError(f"{path} does not hold the FID InceptionV3 weights ({cut})") from e
    inception.num_features = 2048
    log.info("loaded InceptionV3 weights from %s", path)
    return inception


@torch.no_grad()
def extract_features(extractor: nn.Module, images: Sequence[Tensor], batch_size: int = 64) -> Tensor:
    """The extractor's features [N, D] (float64, CPU) of uint8 3 x H x W images; equal sizes are batched."""
    device = next(extractor.parameters()).device
    features, start = [], 0
    while start < len(images):
        size = images[start].shape
        stop = start + 1
        while stop < len(images) and stop - start < batch_size and images[stop].shape == size:
            stop += 1
        batch = torch.stack(list(images[start:stop])).to(device)  # b 3 h w, uint8
        features.append(extractor(batch).double().cpu())
        start = stop
    return torch.cat(features)


class _Precomputed(nn.Module):
    """torchmetrics' ``feature=`` hook for features already extracted, so that FID and KID share one pass."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def _check_counts(generated: Tensor, reference: Tensor, what: str) -> None:
    if len(generated) < 2 or len(reference) < 2:
        raise ValueError(
            f"{what} needs 2 or more generated and reference images; got {len(generated)}, {len(reference)}"
        )


def frechet_distance(generated: Tensor, reference: Tensor) -> float:
    """FID between two sets of features [N, D] (torchmetrics' FrechetInceptionDistance)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_counts(generated, reference, "FID")
    metric = FrechetInceptionDistance(feature=_Precomputed(generated.shape[1]))
    metric.update(reference, real=True)
    metric.update(generated, real=False)
    return float(metric.compute())


def kernel_distance(
    generated: Tensor, reference: Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over `subsets` random subsets) between two sets of features [N, D] (torchmetrics).

    The subsets hold min(`subset_size`, both counts) features each, drawn with a generator seeded by `seed`.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    _check_counts(generated, reference, "KID")
    size = min(subset_size, len(generated), len(reference))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=_Precomputed(generated.shape[1]), subsets=subsets, subset_size=size
        )
    metric.update(reference, real=True)
    metric.update(generated, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # KID draws its subsets from the global generator
        mean, std = metric.compute()
    return float(mean), float(std)


# --- CLIP score -----------------------------------------------------------------------------------


class OpenCLIPFeatures(nn.Module):
    """An open_clip model behind the two methods that torchmetrics' CLIPScore calls on a CLIP model."""

    config = None
    """What torchmetrics reads a Hugging Face model's text length from; open_clip's tokenizer truncates."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        """Image embeddings [B, D] of normalised pixels [B, 3, S, S]."""
        return self.model.encode_image(pixel_values)

    def get_text_features(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Caption embeddings [B, D] of token ids [B, T] (pooled at the end token: the mask is not needed)."""
        return self.model.encode_text(input_ids)


class OpenCLIPProcessor:
    """Images and captions into open_clip inputs, called as torchmetrics' CLIPScore calls a processor.

    Images (3 x H x W, uint8 or floats in [0, 1]) are resized on their short side to the model's size
    (antialiased bicubic), centre-cropped and normalised with the model's mean and std.
    """

    def __init__(self, tokenizer: Callable, size: int, mean: Sequence[float], std: Sequence[float]):
        self.tokenizer = tokenizer
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(
        self, text: Optional[list[str]] = None, images: Optional[list[Tensor]] = None, **_: object
    ) -> dict[str, Tensor]:
        if images is not None:
            pixels = [self._pixels(image) for image in images]
            return {"pixel_values": torch.stack(pixels)}
        tokens = self.tokenizer(list(text))
        return {"input_ids": tokens, "attention_mask": (tokens != 0).long()}

    def _pixels(self, image: Tensor) -> Tensor:
        if image.dtype != torch.uint8:
            image = quantize(image)
        image, _ = resize_and_crop(image, self.size)  # 3 s s, uint8
        return (image.float() / 255 - self.mean) / self.std


def default_clip_weights(arch: str) -> Optional[str]:
    """$LDM_CLIP_WEIGHTS, else the first pretrained tag of `arch` whose weights are in the local cache."""
    if os.environ.get(CLIP_WEIGHTS_ENV):
        return os.environ[CLIP_WEIGHTS_ENV]
    if arch not in open_clip.list_models():
        return None
    tags = open_clip.list_pretrained_tags_by_model(arch)
    return next((tag for tag in tags if cached_pretrained_file(arch, tag) is not None), None)


def _model_name(model: str) -> str:
    """An open_clip architecture name; a config file (``NAME.json``) is registered with open_clip first."""
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config not found: {path}")
        config = json.loads(path.read_text())
        if not all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError(f"{path} is not an open_clip model config (embed_dim, vision_cfg, text_cfg)")
        open_clip.add_model_config(path)  # open_clip's registry of configs, keyed by the file's stem
        return path.stem
    if model not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model '{model}'; see open_clip.list_models(), or pass a config .json"
        )
    return model


@contextlib.contextmanager
def _open_clip_narration_silenced() -> Iterator[None]:
    """Hold back the root logger's records below ERROR: open_clip's factory logs each step there, and warns
    that a model built without weights is random (its weights are loaded next, here)."""
    level = logging.root.level
    logging.root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logging.root.setLevel(level)


def load_clip(model: str, weights: Optional[str]) -> tuple[OpenCLIPFeatures, OpenCLIPProcessor]:
    """An open_clip model (a name, or a config .json) with weights from a local file or a cached tag."""
    name = _model_name(model)
    how = f"pass --clip_weights FILE (open_clip weights for '{name}') or set {CLIP_WEIGHTS_ENV}"
    config = open_clip.get_model_config(name)
    if "hf_model_name" in config["text_cfg"] or "timm_model_name" in config["vision_cfg"]:
        raise ValueError(
            f"open_clip '{name}' builds towers from the Hugging Face hub or timm; use a plain CLIP model"
        )
    if weights is None:
        raise ExtractorUnavailable(f"no open_clip weights for '{name}' in the local cache; {how}")
    tag_config = {}
    if Path(weights).suffix in WEIGHT_FILE_SUFFIXES:
        path = weights
        if not Path(path).is_file():
            raise ExtractorUnavailable(f"open_clip weights file not found: {path}; {how}")
    else:
        tag_config = open_clip.get_pretrained_cfg(name, weights)
        if not tag_config:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise ValueError(f"unknown pretrained tag '{weights}' for open_clip '{name}'; available: {tags}")
        path = cached_pretrained_file(name, weights)
        if path is None:
            raise ExtractorUnavailable(
                f"open_clip '{name}' weights '{weights}' are not in the local cache; {how}"
            )
    with torch.random.fork_rng(devices=[]), _open_clip_narration_silenced():
        # The initial weights are all overwritten; seeded so that building draws the same numbers each time.
        torch.manual_seed(0)
        network = open_clip.create_model(
            name, pretrained=None, force_quick_gelu=tag_config.get("quick_gelu", False)
        )
        tokenizer = open_clip.get_tokenizer(name)
    state = read_tensors(path)
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}  # saved from DDP
    load_checked(network, state, f"{path} does not fit open_clip '{name}'")
    network.requires_grad_(False).eval()
    log.info("loaded open_clip '%s' weights from %s", name, path)
    preprocess = {**open_clip.get_model_preprocess_cfg(network), **tag_config}
    size = preprocess["size"]
    if not isinstance(size, int):
        if size[0] != size[1]:
            raise ValueError(
                f"open_clip '{name}' takes {size[0]}x{size[1]} images; only square inputs are supported"
            )
        size = size[0]
    processor = OpenCLIPProcessor(tokenizer, size, preprocess["mean"], preprocess["std"])
    return OpenCLIPFeatures(network), processor


def clip_score(
    features: OpenCLIPFeatures, processor: OpenCLIPProcessor, images: Tensor, captions: Sequence[str],
    batch_size: int = 64,
) -> float:  # fmt: skip
    """torchmetrics' CLIPScore of images [B, 3, H, W] (floats in [0, 1] or uint8) against their captions."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images and {len(captions)} captions; the counts must match")
    metric = CLIPScore(model_name_or_path=lambda: (features, processor))
    device = next(features.parameters()).device
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            metric.update(
                images[start : start + batch_size].to(device), list(captions[start : start + batch_size])
            )
    return float(metric.compute())


# --- all of them ----------------------------------------------------------------------------------


def image_metrics(
    images: Tensor,
    captions: Sequence[str],
    metrics: Sequence[str],
    *,
    reference: Optional[str | Path] = None,
    inception: Optional[str | Path] = None,
    clip_model: str = "ViT-B-32",
    clip_weights: Optional[str] = None,
    device: Optional[torch.device | str] = None,
    batch_size: int = 64,
) -> tuple[dict[str, float | int], dict[str, str]]:
    """The asked `metrics` of generated images [B, 3, H, W] in [0, 1]: (values, {skipped metric: why}).

    FID and KID need `reference` (a folder); a metric whose extractor weights are not on this
    machine is skipped with one logged line. `inception`/`clip_weights` default to
    :func:`default_inception_file` / :func:`default_clip_weights`.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric '{unknown[0]}'; available: {', '.join(METRICS)}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    values: dict[str, float | int] = {}
    skipped: dict[str, str] = {}
    distances = [m for m in ("fid", "kid") if m in metrics]
    if distances:
        if reference is None:
            raise ValueError(f"{' and '.join(distances)} need a folder of reference images (--reference DIR)")
        real_images = read_reference_images(reference)
        try:
            extractor = load_inception(inception if inception is not None else default_inception_file())
        except ExtractorUnavailable as e:
            _skip(distances, str(e), skipped)
        else:
            extractor = extractor.to(device)
            generated = extract_features(extractor, list(quantize(images)), batch_size)
            real = extract_features(extractor, real_images, batch_size)
            values["n_reference"] = len(real_images)
            if "fid" in distances:
                values["fid"] = frechet_distance(generated, real)
            if "kid" in distances:
                values["kid"], values["kid_std"] = kernel_distance(generated, real)
    if "clip" in metrics:
        weights = clip_weights if clip_weights is not None else default_clip_weights(clip_model)
        try:
            features, processor = load_clip(clip_model, weights)
        except ExtractorUnavailable as e:
            _skip(["clip"], str(e), skipped)
        else:
            values["clip_score"] = clip_score(features.to(device), processor, images, captions, batch_size)
    return values, skipped


def _skip(metrics: list[str], why: str, skipped: dict[str, str]) -> None:
    """Log one line for `metrics` skipped for one reason, and note it."""
    log.warning("%s skipped: %s", " and ".join(metrics), why)
    for metric in metrics:
        skipped[metric] = why


# --- command-line flags ---------------------------------------------------------------------------


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of these metrics: --metrics, --reference, --inception, --clip_model, --clip_weights."""
    parser.add_argument("--metrics", nargs="+", default=[], choices=METRICS, help="also FID, KID, CLIP score")
    parser.add_argument(
        "--reference", default=None, help="fid, kid: a folder of reference images or .tar shards"
    )
    inception_help = f"fid, kid: InceptionV3 weights file (default: ${INCEPTION_ENV}, else the hub cache)"
    parser.add_argument("--inception", default=None, help=inception_help)
    parser.add_argument(
        "--clip_model", default="ViT-B-32", help="clip: an open_clip model name or config .json"
    )
    parser.add_argument(
        "--clip_weights",
        default=None,
        help=f"clip: a local weights file or a cached tag (${CLIP_WEIGHTS_ENV})",
    )


def check_metric_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any sampling, FID or KID without a folder of reference images."""
    distances = [m for m in ("fid", "kid") if m in args.metrics]
    if distances and args.reference is None:
        parser.error(f"--metrics {' '.join(distances)} needs --reference DIR (a folder of reference images)")
    if distances:
        reference_files(args.reference)


def metrics_from_arguments(
    args: argparse.Namespace,
    images: Tensor,
    captions: Sequence[str],
    *,
    device: torch.device | str | None = None,
) -> dict:
    """The metrics asked by the flags, for a JSON report: values, ``skipped_metrics`` and ``reference``."""
    if not args.metrics:
        return {}
    values, skipped = image_metrics(
        images, captions, args.metrics, reference=args.reference, inception=args.inception,
        clip_model=args.clip_model, clip_weights=args.clip_weights, device=device,
    )  # fmt: skip
    return {**values, "skipped_metrics": skipped, "reference": args.reference}
