"""``GenerativeEvaluation``: FID and precision/recall of generated samples, correct on one process or many.

At the end of chosen training epochs and at ``test``, the callback draws ``num_samples`` unconditional samples
(EMA weights by default) and scores them against the real images of ``reference_split`` with every requested
feature extractor and input convention. Work is split across processes by *global batch*: batch ``b`` has its own
seed (derived from ``seed`` and ``b``) and runs on rank ``b mod W``. The generated set is therefore the same for any
number of processes, and the metrics (torchmetrics, synced on ``compute``, which every rank calls) give the same
numbers as one process. Real features are computed once per key (dataset, split, contents, extractor, convention,
count) and cached on disk (:mod:`jointdiff.metrics.reference`).

Logged keys: ``{val|test}/gen_{extractor}/{metric}_{convention}`` with metric ∈ ``fid``, ``precision_knn``,
``recall_knn``, ``precision_prd``, ``recall_prd`` (e.g. ``test/gen_inception/fid_standard``). Every evaluation also
appends its numbers and provenance (sample counts, reference split, extractors, sampler and steps, weights, seed,
world size, timings) to ``<run dir>/generative_eval.json`` and saves a grid of the first samples as PNG.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from jointdiff.callbacks.contracts import GenerativeModel, ImageData, missing_members
from jointdiff.callbacks.logging import log_image, run_dir
from jointdiff.files import atomic_write_json
from jointdiff.images import save_grid, to_uint8
from jointdiff.metrics.extractors import FeatureExtractor, check_convention
from jointdiff.metrics.generative import generative_metrics, generative_results
from jointdiff.metrics.knn_precision_recall import DistanceDtype, KNNPrecisionRecall
from jointdiff.metrics.prd import PRDPrecisionRecall
from jointdiff.metrics.reference import (
    ReferenceCache,
    ReferenceKey,
    assemble,
    extract_reference_features,
    global_batches,
    rank_batches,
    real_indices,
    reference_key,
)
from jointdiff.models.extractors import build_extractor

Split = Literal["train", "val", "test"]
RESULTS_FILE = "generative_eval.json"


def batch_seed(seed: int, batch: int) -> int:
    """Seed of global sample batch ``batch``: independent streams per batch, whatever process draws it."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass(frozen=True)
class EvaluationRecord:
    """One evaluation's numbers and provenance: an entry of ``generative_eval.json``."""

    stage: str  # val | test
    checkpoint: str | None  # weights loaded by fit/test's ckpt_path (None: the in-memory model)
    global_step: int
    epoch: int
    num_generated: int
    num_reference: dict[str, int]  # "extractor/convention" → real images scored against
    dataset: str
    reference_split: str
    reference_source: dict[str, str]  # "extractor/convention" → memory | disk | computed
    extractors: dict[str, dict]  # name → FeatureExtractor.describe()
    input_conventions: list[str]
    sampler: str  # the model's sampler_name
    sampling_steps: int  # network evaluations per sample
    weights: Literal["ema", "raw"]
    seed: int
    batch_size: int
    world_size: int
    knn: dict
    prd: dict
    seconds_rank0: dict[str, float]  # per process; the wall clock of the evaluation is the slowest rank's
    sample_grid: str | None
    samples_npz: str | None
    results: dict[str, float]  # the logged keys and values

    def to_json(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GenerativeEvaluation(L.Callback):
    """Generative evaluation with FID, k-NN precision/recall and PRD precision/recall.

    Args:
        num_samples: generated samples per evaluation (D9: 10k against the full test split).
        batch_size: samples per global batch (also the batch of real-feature extraction).
        feature_extractors: ``inception`` (standard FID InceptionV3, the default) and/or ``classifier:<ckpt>``
            (a project classifier checkpoint, offline); prefix ``name=`` to choose the name used in the keys.
        input_conventions: ``standard`` ([0,1]/uint8 images, the usual FID; every image of the reference split)
            and/or ``reference`` (what the authors' code feeds Inception, decision D8, against the real set it
            uses: the split without its last incomplete batch of ``datamodule.batch_size``, docs/fidelity.md). Every
            combination with the extractors is scored; the convention is part of each logged key.
        inception_weights: path of the FID Inception weights; ``None`` uses the torch hub cache (torch-fidelity's
            and torchmetrics' location), downloading there when ``allow_download``.
        reference_split: real images compared against (D9: ``test``); ``num_reference``: a seeded subset of that
            many (``None``: all).
        every_n_epochs: also evaluate at the end of every n-th training epoch (``None``: only at ``test``).
        at_test: evaluate in ``trainer.test``.
        use_ema: sample with the EMA weights (else the raw ones).
        seed: base seed of the sample batches (the same samples at every evaluation of the same weights).
        knn_k, knn_chunk_size, distance_dtype: k-NN precision/recall (:mod:`jointdiff.metrics.knn_precision_recall`).
        prd_clusters, prd_runs, prd_angles: PRD (:mod:`jointdiff.metrics.prd`; 20, 10, 1001 in the paper).
        grid_size: samples in the saved grid (0: none).
        save_samples: also write every sample, uint8 as the ``standard`` convention scores them, to
            ``samples/eval_<stage>_step_<step>.npz`` in the run folder (``jointdiff score`` re-scores such a file).
        cache_dir: where real features are cached (default ``$JOINTDIFF_CACHE/reference_features``).
    """

    def __init__(
        self,
        num_samples: int = 10000,
        batch_size: int = 250,
        feature_extractors: Sequence[str] = ("inception",),
        input_conventions: Sequence[Literal["standard", "reference"]] = ("standard",),
        inception_weights: str | None = None,
        allow_download: bool = True,
        reference_split: Split = "test",
        num_reference: int | None = None,
        every_n_epochs: int | None = None,
        at_test: bool = True,
        use_ema: bool = True,
        seed: int = 0,
        knn_k: int = 3,
        knn_chunk_size: int = 1024,
        distance_dtype: DistanceDtype = "float64",
        prd_clusters: int = 20,
        prd_runs: int = 10,
        prd_angles: int = 1001,
        grid_size: int = 64,
        save_samples: bool = False,
        cache_dir: str | None = None,
    ):
        if num_samples < 2 or batch_size < 1:
            raise ValueError(f"num_samples must be >= 2 and batch_size >= 1, got {num_samples}, {batch_size}")
        if not feature_extractors:
            raise ValueError("feature_extractors is empty")
        if not input_conventions:
            raise ValueError("input_conventions is empty")
        for c in input_conventions:
            check_convention(c)
        if reference_split not in ("train", "val", "test"):
            raise ValueError(f"reference_split must be train, val or test, got {reference_split!r}")
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or None, got {every_n_epochs}")
        # Validate the metric settings now, not after the samples are drawn.
        KNNPrecisionRecall(knn_k, knn_chunk_size, distance_dtype)
        PRDPrecisionRecall(prd_clusters, prd_angles, prd_runs)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.extractor_specs = list(feature_extractors)
        self.conventions = list(dict.fromkeys(input_conventions))
        self.inception_weights = inception_weights
        self.allow_download = allow_download
        self.reference_split = reference_split
        self.num_reference = num_reference
        self.every_n_epochs = every_n_epochs
        self.at_test = at_test
        self.use_ema = use_ema
        self.seed = seed
        self.knn = dict(k=knn_k, chunk_size=knn_chunk_size, distance_dtype=distance_dtype)
        self.prd = dict(num_clusters=prd_clusters, num_angles=prd_angles, num_runs=prd_runs)
        self.grid_size = grid_size
        self.save_samples = save_samples
        self.cache = ReferenceCache(cache_dir)
        self.extractors: dict[str, FeatureExtractor] = {}
        self._reference: dict[ReferenceKey, torch.Tensor] = {}
        self.last_results: dict[str, float] | None = None
        self.last_record: EvaluationRecord | None = None

    # set-up: everything that can fail does so before any training or sampling ------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, GenerativeModel):
            raise TypeError(f"GenerativeEvaluation needs a generative model (sample(num, generator, use_ema, "
                            f"progress), sampler_name, diffusion); {type(pl_module).__name__} lacks "
                            f"{', '.join(missing_members(pl_module, GenerativeModel))}")
        n_batches = len(global_batches(self.num_samples, self.batch_size))
        if n_batches < trainer.world_size:
            raise ValueError(f"num_samples={self.num_samples} in batches of {self.batch_size} gives {n_batches} "
                             f"batches for {trainer.world_size} processes; every process needs at least one")
        if trainer.datamodule is None:
            raise ValueError("GenerativeEvaluation takes the real images from the DataModule; pass datamodule=")
        if not isinstance(trainer.datamodule, ImageData):
            raise TypeError(f"GenerativeEvaluation reads the real images of an image DataModule; "
                            f"{type(trainer.datamodule).__name__} lacks "
                            f"{', '.join(missing_members(trainer.datamodule, ImageData))}")
        if not self.extractors:
            for spec in self.extractor_specs:
                extractor = build_extractor(spec, self.inception_weights, self.allow_download)
                if extractor.name in self.extractors:
                    raise ValueError(f"two feature extractors are named {extractor.name!r}; prefix one with 'name='")
                self.extractors[extractor.name] = extractor
        dm = trainer.datamodule
        for extractor in self.extractors.values():
            size, channels = extractor.image_size, extractor.channels
            if size is not None and (dm.image_size, dm.channels) != (size, channels):
                raise ValueError(f"feature extractor {extractor.name} takes {channels}×{size}×{size} images but the "
                                 f"data are {dm.channels}×{dm.image_size}×{dm.image_size}")

    # hooks ---------------------------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_test:
            self.evaluate(trainer, pl_module, "test")

    # real features ---------------------------------------------------------------------------------------------
    def _reference_dataset(self, trainer: L.Trainer):
        dm = trainer.datamodule
        split = {"train": lambda: dm.train_set, "val": lambda: dm.val_set, "test": lambda: dm.test_set}[
            self.reference_split]
        if split() is None:
            dm.setup("test" if self.reference_split == "test" else "fit")
        dataset = split()
        if dataset is None:
            raise ValueError(f"{type(dm).__name__} provides no {self.reference_split} split for the reference features")
        return dataset

    @staticmethod
    def _reference_loader_batch(dm) -> int:
        """The batch of the reference's evaluation loader: its training (micro)batch, the DataModule's
        ``batch_size``."""
        if not isinstance(dm.batch_size, int):
            raise ValueError(f"the reference input convention needs the DataModule's batch_size as an integer; "
                             f"{type(dm).__name__} has {dm.batch_size!r}")
        return dm.batch_size

    def reference_features(
        self, trainer: L.Trainer, extractor: FeatureExtractor, convention: str, device: torch.device
    ) -> tuple[torch.Tensor, ReferenceKey, str]:
        """(N_ref, D) real features on the CPU, identical on every rank, with the key and where they came from:
        ``memory``, ``disk`` (the cache) or ``computed`` (split across ranks, gathered, written by rank 0)."""
        dm = trainer.datamodule
        dataset = self._reference_dataset(trainer)
        loader_batch = self._reference_loader_batch(dm) if convention == "reference" else None
        indices = real_indices(len(dataset), self.num_reference, convention, loader_batch)
        key = reference_key(dm.name, self.reference_split, dataset, extractor,
                            convention, len(indices))
        if key in self._reference:
            return self._reference[key], key, "memory"
        strategy, world, rank = trainer.strategy, trainer.world_size, trainer.global_rank
        cached = self.cache.load(key)
        if strategy.reduce_boolean_decision(cached is not None, all=True):
            features, source = cached, "disk"
        else:
            source = "computed"

            def featurize(x: torch.Tensor) -> torch.Tensor:
                return extractor(x.to(device), convention)

            bar = (lambda it: tqdm(it, desc=f"real features ({extractor.name}, {convention})", leave=False)) \
                if rank == 0 else None
            local = extract_reference_features(dataset, indices, featurize, self.batch_size, rank, world, bar)
            if world > 1:
                n_max = len(rank_batches(len(indices), self.batch_size, 0, world)) * self.batch_size
                padded = torch.zeros(n_max, extractor.dim, device=device, dtype=torch.float32)
                padded[: len(local)] = local
                gathered = strategy.all_gather(padded)  # (W, n_max, D)
                features = assemble(gathered, len(indices), self.batch_size, world).cpu()
            else:
                features = local.cpu()
            if rank == 0:
                path = self.cache.save(key, features)
                rank_zero_info(f"cached {len(features)} real features ({extractor.name}, {convention}) in {path}")
            strategy.barrier()
        self._reference[key] = features
        return features, key, source

    # evaluation ------------------------------------------------------------------------------------------------
    def _metrics(self, dim: int, device: torch.device) -> dict:
        return generative_metrics(dim, self.knn, self.prd, self.seed, device)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, prefix: str) -> dict[str, float]:
        """Sample, score and log; every rank must call it (it runs collectives). Returns the scores."""
        t_start = time.perf_counter()
        device = pl_module.device
        world, rank = trainer.world_size, trainer.global_rank
        out_dir = run_dir(trainer)  # on every rank: log_dir broadcasts
        combos = [(name, conv) for name in self.extractors for conv in self.conventions]
        for extractor in self.extractors.values():
            extractor.to(device)
        metrics, keys, sources = self._feed_reference(trainer, combos, device)
        t_reference = time.perf_counter() - t_start
        t_sampling, t_features, grid_path, kept = self._feed_samples(trainer, pl_module, combos, metrics, prefix,
                                                                     out_dir)
        samples_path = None
        if self.save_samples:
            samples_path = self._write_samples(trainer, kept, out_dir / "samples" /
                                               f"eval_{prefix}_step_{trainer.global_step:07d}.npz", pl_module)
        t0 = time.perf_counter()
        results: dict[str, float] = {}
        for name, conv in combos:  # the same order on every rank: compute() gathers
            results.update(generative_results(metrics[(name, conv)], prefix, name, conv))
        t_metrics = time.perf_counter() - t0
        for key, value in results.items():
            # Identical on every rank already; "max" keeps the exact value where "mean" could round.
            pl_module.log(key, value, sync_dist=True, reduce_fx="max")

        record = EvaluationRecord(
            stage=prefix, checkpoint=trainer.ckpt_path, global_step=trainer.global_step, epoch=trainer.current_epoch,
            num_generated=self.num_samples, num_reference={f"{n}/{c}": keys[(n, c)].count for n, c in combos},
            dataset=keys[combos[0]].dataset, reference_split=self.reference_split, reference_source=sources,
            extractors={n: e.describe() for n, e in self.extractors.items()}, input_conventions=self.conventions,
            sampler=pl_module.sampler_name, sampling_steps=int(pl_module.diffusion.num_steps),
            weights="ema" if self.use_ema else "raw", seed=self.seed, batch_size=self.batch_size, world_size=world,
            knn=self.knn, prd={**self.prd, "beta": 8, "seed": self.seed},
            seconds_rank0={
                "reference_features": round(t_reference, 3), "sampling": round(t_sampling, 3),
                "generated_features": round(t_features, 3), "metrics": round(t_metrics, 3),
                "total": round(time.perf_counter() - t_start, 3),
            },
            sample_grid=str(grid_path) if grid_path else None,
            samples_npz=str(samples_path) if samples_path else None,
            results=results,
        )
        self.last_results, self.last_record = results, record
        if rank == 0:
            self._append(out_dir / RESULTS_FILE, record.to_json())
            lines = [f"generative evaluation ({prefix}, step {trainer.global_step}): {self.num_samples} samples vs "
                     f"{self.reference_split} split, {record.seconds_rank0['total']:.1f} s"]
            lines += [f"  {k:<52} {v:.4f}" for k, v in results.items()]
            rank_zero_info("\n".join(lines))
        return results

    def _feed_reference(self, trainer: L.Trainer, combos: list[tuple[str, str]], device: torch.device):
        """Fresh metrics per (extractor, convention), each fed the real features (each row on one rank); returns
        the metrics, the reference keys and their sources."""
        world, rank = trainer.world_size, trainer.global_rank
        metrics, keys, sources = {}, {}, {}
        for name, conv in combos:
            extractor = self.extractors[name]
            real, keys[(name, conv)], sources[f"{name}/{conv}"] = self.reference_features(
                trainer, extractor, conv, device
            )
            metrics[(name, conv)] = self._metrics(extractor.dim, device)
            shard = real[rank::world].to(device)  # each real row fed on exactly one rank; synced on compute
            for m in metrics[(name, conv)].values():
                m.update(shard, real=True)
        _sync(device)
        return metrics, keys, sources

    def _feed_samples(self, trainer: L.Trainer, pl_module: L.LightningModule, combos: list[tuple[str, str]],
                      metrics: dict, prefix: str, out_dir: Path) -> tuple[float, float, Path | None, list]:
        """Draw this rank's sample batches (each seeded by its global index) and feed their features to the
        metrics; writes and logs the first batch's grid. Returns (sampling s, feature s, grid path, this rank's
        uint8 samples when ``save_samples``)."""
        device, world, rank = pl_module.device, trainer.world_size, trainer.global_rank
        batches = global_batches(self.num_samples, self.batch_size)
        mine = rank_batches(self.num_samples, self.batch_size, rank, world)
        t_sampling = t_features = 0.0
        grid_path = None
        kept: list[torch.Tensor] = []
        for b in tqdm(mine, desc=f"generative eval ({len(batches)} batches over {world} process(es))",
                      disable=rank != 0):
            start, stop = batches[b]
            t0 = time.perf_counter()
            generator = torch.Generator(device=device).manual_seed(batch_seed(self.seed, b))
            images = pl_module.sample(stop - start, generator=generator, use_ema=self.use_ema, progress=False)
            _sync(device)
            t1 = time.perf_counter()
            for name, conv in combos:
                features = self.extractors[name](images, conv)
                for m in metrics[(name, conv)].values():
                    m.update(features, real=False)
            _sync(device)
            t_sampling += t1 - t0
            t_features += time.perf_counter() - t1
            if self.save_samples:
                kept.append(to_uint8(images, rounding="round").flatten(1).cpu())
            if b == 0 and self.grid_size > 0:
                name = f"eval_{prefix}_step_{trainer.global_step:07d}.png"
                grid_path = save_grid(images[: self.grid_size], out_dir / "samples" / name)
                log_image(trainer, f"samples/eval_{prefix}", grid_path, step=trainer.global_step)
        return t_sampling, t_features, grid_path, kept

    def _write_samples(self, trainer: L.Trainer, kept: list[torch.Tensor], path: Path, pl_module) -> Path:
        """Gather every rank's uint8 samples in global order; rank 0 writes them (``write_samples`` layout)."""
        from jointdiff.sampling.files import write_samples

        hp = pl_module.hparams
        local = torch.cat(kept) if kept else torch.empty(0, hp.channels * hp.image_size ** 2, dtype=torch.uint8)
        if trainer.world_size > 1:
            batches = rank_batches(self.num_samples, self.batch_size, 0, trainer.world_size)
            padded = torch.zeros(len(batches) * self.batch_size, local.shape[1], device=pl_module.device)
            padded[: len(local)] = local.to(pl_module.device).float()  # float: gloo gathers every dtype of it
            gathered = trainer.strategy.all_gather(padded)
            local = assemble(gathered, self.num_samples, self.batch_size, trainer.world_size).round().to(torch.uint8)
        images = local.reshape(-1, hp.channels, hp.image_size, hp.image_size).cpu()
        if trainer.global_rank == 0:
            write_samples(path, images)
        return path

    @staticmethod
    def _append(path: Path, record: dict) -> None:
        data = json.loads(path.read_text()) if path.exists() else {"evaluations": []}
        data["evaluations"].append(record)
        atomic_write_json(data, path)
