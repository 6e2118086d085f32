"""Feature extractors for FID and precision/recall: the standard FID InceptionV3 and a project classifier.

Both take images as the models produce and the DataModules serve them, ``(B, c, H, W)`` floats in about [-1, 1],
and return ``(B, D)`` float32 features. Each applies one of the two input conventions of decision D8:

``standard``
    The image as a PNG file would hold it: ``round(clamp((x+1)·127.5, 0, 255))`` to uint8 (real data, being
    uint8 already, pass through unchanged), then the extractor's own standard preprocessing. For Inception that
    is torch-fidelity's path (the one torchmetrics uses): TF1-exact bilinear resize of the uint8 image to 299 and
    ``(u − 128)/128``; this is what "FID" means in the literature.
``reference``
    What the authors' code feeds (docs/design.md §10): the unclipped float image, for Inception resized with
    ``F.interpolate(bilinear, align_corners=False)`` to 299 and mapped by ``2x − 1`` (so the network sees
    [-3, 1]); for the classifier the unclipped floats as they are. Use it to compare with the paper's numbers.

Grayscale images are repeated to three channels for Inception.

The extractor's ``name`` goes into every logged key, so a score never appears without the network that produced it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from jointdiff.images import from_uint8, to_uint8

Convention = Literal["standard", "reference"]
CONVENTIONS: tuple[str, ...] = ("standard", "reference")

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_OPTION = "inception_weights"  # the GenerativeEvaluation argument that points at a weights file


class InceptionWeightsNotFoundError(FileNotFoundError):
    """The FID Inception weights are neither at the configured path nor in the torch hub cache (and could not be
    downloaded). Never answered by falling back to other weights: FID is only comparable with these."""


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"input convention must be one of {CONVENTIONS}, got {convention!r}")
    return convention


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class FeatureExtractor(nn.Module):
    """Base: ``forward(images, convention) -> (B, D)``; ``name`` (used in metric keys), ``dim`` (D),
    ``fingerprint`` (identifies the weights, for the reference-feature cache), ``describe()`` (provenance) and the
    input it takes (``image_size``, ``channels``)."""

    name: str
    dim: int
    fingerprint: str
    image_size: int | None = None  # the one input size it takes (None: any, resized as needed)
    channels: int | None = None

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # a fixed measuring instrument: never dropout or batch statistics

    def describe(self) -> dict:
        raise NotImplementedError


# Inception ----------------------------------------------------------------------------------------------------
_INCEPTION_POOL3 = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
)  # torch-fidelity's FeatureExtractorInceptionV3 layers up to the 2048-d pool3 output, in forward order


def inception_cache_path() -> Path:
    """Where torch-fidelity (and so torchmetrics) keeps the FID Inception weights: the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def missing_inception_message(configured: str | None, cache: Path, download_error: Exception | None) -> str:
    lines = ["FID needs the standard InceptionV3 FID weights, and they are not available."]
    if configured is not None:
        lines.append(f"  {INCEPTION_OPTION}={configured!r}: no such file.")
    else:
        lines.append(f"  Not in the torch hub cache: {cache}")
        if download_error is not None:
            lines.append(f"  Downloading {INCEPTION_URL} failed: {type(download_error).__name__}: {download_error}")
        else:
            lines.append("  Downloading is switched off (allow_download=false).")
    lines += [
        f"Get the file {INCEPTION_FILE} (torch-fidelity's release, the one torchmetrics loads) from",
        f"  {INCEPTION_URL}",
        f"and either put it at {cache} or pass its path with `{INCEPTION_OPTION}: /path/to/{INCEPTION_FILE}`.",
        "Without internet, evaluate with a project classifier instead: feature_extractors: [\"classifier:<ckpt>\"]",
        "(scores are then named after that classifier and are not comparable with published FIDs).",
    ]
    return "\n".join(lines)


def locate_inception_weights(configured: str | None = None, allow_download: bool = True) -> Path:
    """The FID Inception weights file: the configured path (must exist), else the torch hub cache, else (when
    allowed) a download into that cache, the standard way. Raises :class:`InceptionWeightsNotFoundError`."""
    if configured is not None:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise InceptionWeightsNotFoundError(missing_inception_message(configured, inception_cache_path(), None))
        return path
    cache = inception_cache_path()
    if cache.is_file():
        return cache
    download_error = None
    if allow_download:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_URL, str(cache), progress=True)
            return cache
        except Exception as err:  # offline, proxy, HTTP errors: all end in the same instructions
            download_error = err
    raise InceptionWeightsNotFoundError(missing_inception_message(None, cache, download_error))


def check_weights_file(path: Path) -> None:
    """Raise one line unless ``path`` is a state dict that loads with ``weights_only=True`` (:mod:`jointdiff.trust`):
    torch-fidelity unpickles the file in full, which would run any code stored in it."""
    from jointdiff.trust import UntrustedFileError, load_torch_file

    try:
        state = load_torch_file(path, "weights file")
    except UntrustedFileError:
        raise
    except Exception as err:
        raise ValueError(f"{path} is not a readable PyTorch weights file ({type(err).__name__}): pass torch-fidelity's "
                         f"{INCEPTION_FILE}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors: pass torch-fidelity's {INCEPTION_FILE}")


class InceptionFeatures(FeatureExtractor):
    """2048-d pool3 features of torch-fidelity's FID InceptionV3 (the network torchmetrics' FID uses).

    Args:
        weights: path of the weights file; ``None`` looks in the torch hub cache and downloads there if allowed.
        allow_download: try the standard download when the cache lacks the file (``False`` on air-gapped
            machines fails at once instead of waiting for the network).
    """

    def __init__(self, weights: str | None = None, allow_download: bool = True):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = locate_inception_weights(weights, allow_download)
        check_weights_file(path)  # torch-fidelity unpickles it in full: only plain tensors may reach it
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
            )
        except Exception as err:
            raise ValueError(
                f"{path} is not a torch-fidelity FID InceptionV3 state dict ({INCEPTION_FILE}): {err}"
            ) from err
        self.weights_path = path
        self.name = "inception"
        self.dim = 2048
        # The default file is one fixed release; a configured file is identified by its content.
        self.fingerprint = INCEPTION_FILE if path == inception_cache_path() else file_sha256(path)[:16]

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """Network input already at 299×299 and normalised → (B, 2048)."""
        for name in _INCEPTION_POOL3:
            x = getattr(self.net, name)(x)
        return torch.flatten(x, 1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, convention: Convention = "standard") -> torch.Tensor:
        check_convention(convention)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if convention == "standard":
            (features,) = self.net(to_uint8(images, rounding="round"))  # torch-fidelity's own forward, bit for bit
            return features.float()
        # The authors' pytorch-fid port (docs/design.md §10): resize the float image, then 2x − 1 on data already in
        # [-1, 1].
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.pool3(2 * x - 1).float()

    def describe(self) -> dict:
        return {"type": "inception", "weights": str(self.weights_path), "fingerprint": self.fingerprint, "dim": 2048}


# Project classifier -------------------------------------------------------------------------------------------
CLASSIFIER_PREFIX = "classifier:"


class ClassifierFeatures(FeatureExtractor):
    """A classifier network of this project (a ``JointNetwork`` with a head: ``representation``, ``classify``),
    already loaded; :func:`jointdiff.models.extractors.load_classifier_features` builds one from a checkpoint.

    Works offline, for any data the classifier was trained on. Features for FID and precision/recall are the pooled
    encoder representation ``z = [GAP(m), GAP(e_1), …]`` (docs/design.md §2.2, dimension F) at step index 0;
    ``logits`` gives the head's outputs (the class hit rate). We use ``z`` rather than a head layer because it is
    defined for every classifier of the project, does not pass through the head's dropout/BatchNorm, and is the
    representation the paper studies.

    Scores are only comparable between runs that use the very same weights; ``fingerprint`` (of the checkpoint file)
    is recorded with every result. The classifier should be independent of the model under evaluation (a
    stand-alone classifier, not the joint model's own head).
    """

    def __init__(self, network: nn.Module, *, fingerprint: str, source: str = "", name: str | None = None,
                 image_size: int | None = None, channels: int | None = None, task: str = "multiclass",
                 module_class: str = ""):
        super().__init__()
        unet = getattr(network, "unet", None)
        if unet is None or not hasattr(unet, "encode") or getattr(network, "head", None) is None:
            raise ValueError(
                f"{source or 'the network'} holds a {module_class or type(network).__name__} without a UNet encoder "
                "and classifier head; the classifier extractor needs a StandaloneClassifier or a JointDiffusion with "
                "classifier_weight > 0"
            )
        self.network = network.requires_grad_(False).eval()
        self.checkpoint = source
        self.fingerprint = fingerprint
        self.name = name or f"classifier-{fingerprint[:8]}"
        self.dim = int(unet.feature_dim)
        self.image_size, self.channels = image_size, channels
        self.num_classes = int(network.head.layers[-1].out_features)
        self.task = task
        self.module_class = module_class or type(network).__name__

    def _inputs(self, images: torch.Tensor, convention: Convention) -> tuple[torch.Tensor, torch.Tensor]:
        check_convention(convention)
        if self.channels is not None and (images.shape[1] != self.channels or images.shape[-1] != self.image_size):
            raise ValueError(
                f"classifier {self.name} takes {self.channels}×{self.image_size}×{self.image_size} images, "
                f"got {tuple(images.shape[1:])}"
            )
        x = images.float()
        if convention == "standard":
            x = from_uint8(to_uint8(x, rounding="round"))  # exactly the DataModules' uint8 → [-1, 1] map
        return x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, convention: Convention = "standard") -> torch.Tensor:
        x, t = self._inputs(images, convention)
        return self.network.representation(x, t).float()

    @torch.no_grad()
    def logits(self, images: torch.Tensor, convention: Convention = "standard") -> torch.Tensor:
        x, t = self._inputs(images, convention)
        return self.network.classify(x, t).float()

    def describe(self) -> dict:
        return {
            "type": "classifier", "checkpoint": self.checkpoint, "class": self.module_class,
            "fingerprint": self.fingerprint, "dim": self.dim, "features": "pooled encoder z at step 0",
        }


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # safe in every logger's metric keys (TensorBoard, W&B, CSV)


def parse_extractor_spec(spec: str) -> tuple[str | None, str]:
    """``"inception"``, ``"classifier:<ckpt>"``, optionally prefixed ``"<name>="`` → (name or None, spec)."""
    name, sep, rest = spec.partition("=")
    if not sep or name.startswith(CLASSIFIER_PREFIX) or "/" in name:
        return None, spec.strip()
    name = name.strip()
    if not _NAME.match(name):
        raise ValueError(
            f"extractor name {name!r} may only hold letters, digits, '_', '.', '-' (it goes into metric keys)"
        )
    return name, rest.strip()
