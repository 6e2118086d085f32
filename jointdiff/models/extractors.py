"""Feature extractors named by a spec string (``inception``, ``classifier:<checkpoint>``, optionally
``<name>=…``), resolved here because a classifier extractor loads a checkpoint of this project: ``metrics/`` only
ever receives the loaded network (docs/evaluation.md)."""

from __future__ import annotations

from jointdiff.metrics.extractors import (
    CLASSIFIER_PREFIX,
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    file_sha256,
    parse_extractor_spec,
)
from jointdiff.models.checkpoints import load_model


def load_classifier_features(checkpoint: str, name: str | None = None) -> ClassifierFeatures:
    """The classifier extractor of a checkpoint: the module's ``eval_network`` (its EMA copy by default), else
    ``network``, with the checkpoint file's fingerprint."""
    module = load_model(checkpoint)
    network = module.eval_network if hasattr(module, "eval_network") else getattr(module, "network", module)
    hp = module.hparams
    return ClassifierFeatures(
        network, fingerprint=file_sha256(checkpoint)[:16], source=str(checkpoint), name=name,
        image_size=int(hp.get("image_size", 0)) or None, channels=int(hp.get("channels", 0)) or None,
        task=hp.get("task", "multiclass"), module_class=type(module).__name__,
    )


def build_extractor(spec: str, inception_weights: str | None = None, allow_download: bool = True) -> FeatureExtractor:
    """``inception`` (default, standard FID) or ``classifier:<checkpoint>``; ``<name>=`` sets the key name."""
    name, body = parse_extractor_spec(spec)
    if body == "inception":
        extractor = InceptionFeatures(inception_weights, allow_download)
        if name:
            extractor.name = name
        return extractor
    if body.startswith(CLASSIFIER_PREFIX):
        path = body[len(CLASSIFIER_PREFIX):]
        if not path:
            raise ValueError("classifier extractor needs a checkpoint: 'classifier:/path/to/last.ckpt'")
        return load_classifier_features(path, name)
    raise ValueError(f"unknown feature extractor {spec!r}: use 'inception' or 'classifier:<checkpoint path>'")
