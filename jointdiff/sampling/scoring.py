"""Scoring a sample file: FID, k-NN and PRD precision/recall against a dataset split in a named feature space, and
the class hit rate of an independent classifier when the file holds the requested targets. The library behind
``jointdiff score``; the same metrics, real-feature cache and result keys as the training-time evaluation
(:class:`~jointdiff.callbacks.GenerativeEvaluation`), so a file of that evaluation's samples scores the same."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from jointdiff.data.base import ImageDataModule
from jointdiff.files import atomic_write_json
from jointdiff.metrics.extractors import check_convention
from jointdiff.metrics.generative import generative_metrics, generative_results
from jointdiff.metrics.reference import ReferenceCache, cached_reference_features
from jointdiff.models.extractors import build_extractor, load_classifier_features
from jointdiff.sampling.files import Layout, ValueRange, read_samples


def named_extractors(specs: Sequence[str], inception_weights: str | None, allow_download: bool,
                     device: str) -> dict:
    """The feature extractors of ``specs`` by name (two with one name are refused)."""
    extractors = {}
    for spec in specs:
        e = build_extractor(spec, inception_weights, allow_download).to(device)
        if e.name in extractors:
            raise ValueError(f"two feature extractors are named {e.name!r}; prefix one with 'name='")
        extractors[e.name] = e
    return extractors


def judge_hit_rates(judge: str, images: torch.Tensor, targets: torch.Tensor, batch_size: int, device: str) -> dict:
    """``score/judge_hit_rate`` and its per-class values: the judge checkpoint's class hit rate of the samples."""
    from jointdiff.metrics.accuracy import ClassHitRate

    hit = ClassHitRate(load_classifier_features(judge).to(device)).to(device)
    for i in range(0, len(images), batch_size):
        hit.update(images[i:i + batch_size].to(device), targets[i:i + batch_size].to(device))
    out = hit.compute()
    return {"score/judge_hit_rate": float(out["hit_rate"]),
            "score/judge_hit_rate_per_class": [float(v) for v in out["per_class"]]}


def score_samples(
    samples: str,
    data: ImageDataModule,
    split: str = "test",
    features: Sequence[str] = ("inception",),
    conventions: Sequence[str] = ("standard",),
    judge: str | None = None,
    num_reference: int | None = None,
    layout: Layout = "auto",
    value_range: ValueRange = "auto",
    batch_size: int = 250,
    seed: int = 0,
    knn_k: int = 3,
    prd_clusters: int = 20,
    prd_runs: int = 10,
    prd_angles: int = 1001,
    inception_weights: str | None = None,
    allow_download: bool = True,
    cache_dir: str | None = None,
    output: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Score the samples of a file (``.npz`` of ``jointdiff sample``/``alpha-sweep``/the evaluation, or another
    implementation's ``.npz``/``.npy``/``.pt``) against ``split`` of ``data``.

    Args:
        samples: the sample file (see :func:`jointdiff.sampling.files.read_samples` for the layouts read).
        data: the DataModule of the real images (e.g. ``FashionMNISTDataModule``).
        split: train, val or test (the paper: test).
        features: feature extractors, ``inception`` and/or ``classifier:<ckpt>`` (``name=`` prefix to rename).
        conventions: ``standard`` and/or ``reference`` input conventions (docs/evaluation.md).
        judge: an independent classifier checkpoint for the class hit rate (needs targets in the file).
        num_reference: a seeded subset of that many real images (default all).
        layout: NHWC, NCHW or auto. value_range: uint8, 0,1, -1,1 or auto (for float images).
        batch_size: feature-extraction batch. seed: PRD's seed. knn_k, prd_*: the metrics' settings.
        inception_weights, allow_download: the FID Inception weights (as the evaluation callback).
        cache_dir: real-feature cache (default ``$JOINTDIFF_CACHE/reference_features``).
        output: where to write the record (default ``<samples>.score.json``).
        device: cpu, cuda, …
        progress: progress bars.
    """
    began = time.perf_counter()
    for c in conventions:
        check_convention(c)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    images, targets, info = read_samples(samples, layout, value_range)
    if (images.shape[1], images.shape[2]) != (data.channels, data.image_size) or images.shape[3] != data.image_size:
        raise ValueError(f"{samples} holds {tuple(images.shape[1:])} images, {type(data).__name__} "
                         f"{data.channels}×{data.image_size}×{data.image_size}")
    if judge and targets is None:
        raise ValueError(f"--judge scores the class hit rate, but {samples} holds no targets (arr_1/labels)")
    extractors = named_extractors(features, inception_weights, allow_download, device)
    data.setup("fit" if split in ("train", "val") else "test")
    dataset = getattr(data, f"{split}_set")
    dataset_name = getattr(data, "name", type(data).__name__)
    cache = ReferenceCache(cache_dir)
    knn, prd = dict(k=knn_k), dict(num_clusters=prd_clusters, num_angles=prd_angles, num_runs=prd_runs)

    results, sources, counts = {}, {}, {}
    for name, extractor in extractors.items():
        for conv in conventions:
            bar = (lambda it, n=name, c=conv: tqdm(it, desc=f"real features ({n}, {c})", leave=False)) \
                if progress else None
            real, key, sources[f"{name}/{conv}"] = cached_reference_features(
                dataset, dataset_name, split, extractor, conv, batch_size, cache, device, num_reference,
                getattr(data, "batch_size", None), bar)
            counts[f"{name}/{conv}"] = key.count
            metrics = generative_metrics(extractor.dim, knn, prd, seed, device)
            for m in metrics.values():
                m.update(real.to(device), real=True)
            for i in range(0, len(images), batch_size):
                fake = extractor(images[i:i + batch_size].to(device), conv)
                for m in metrics.values():
                    m.update(fake, real=False)
            results.update(generative_results(metrics, "score", name, conv))
    if judge:
        results.update(judge_hit_rates(judge, images, targets, batch_size, device))
    record = {
        "samples": info, "num_generated": len(images), "dataset": dataset_name, "reference_split": split,
        "num_reference": counts, "reference_source": sources,
        "extractors": {n: e.describe() for n, e in extractors.items()}, "input_conventions": list(conventions),
        "judge": judge, "seed": seed, "batch_size": batch_size, "knn": knn, "prd": {**prd, "beta": 8, "seed": seed},
        "seconds": round(time.perf_counter() - began, 3), "results": results,
    }
    path = Path(output) if output else Path(samples).with_suffix(".score.json")
    atomic_write_json(record, path)
    for k, v in results.items():
        if isinstance(v, float):
            print(f"{k:<52} {v:.4f}")
    print(f"wrote {path}")
    return record
