"""Two CPU processes (DDP over gloo) give the same generative scores and test accuracy as one process.

The test launches this file as a script, once with WORLD_SIZE=1 and twice with WORLD_SIZE=2 (one process per rank,
Lightning picks the ranks up from the environment), each running ``trainer.test`` with ``GenerativeEvaluation`` on a
tiny joint model, then compares what the ranks wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from jointdiff.callbacks import GenerativeEvaluation
from jointdiff.data.base import ImageDataModule, ImageTensorDataset

TINY = dict(
    image_size=16, channels=1, num_classes=3, model_channels=16, channel_mult=[1, 2], norm_groups=8,
    num_res_blocks=1, attention_downsample=[], diffusion_steps=50, classifier_weight=0.1, ema_decay=0.9,
)
N_TEST = 61  # odd, and not a multiple of the eval batch: a padding DistributedSampler would repeat one example


pytestmark = pytest.mark.usefixtures("one_thread")


class SyntheticDataModule(ImageDataModule):
    """Random 16×16 gray images with 3 random classes, in memory (the evaluation code only needs the splits)."""

    name = "synthetic"
    image_size = 16
    channels = 1
    num_classes = 3
    task = "multiclass"

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        g = torch.Generator().manual_seed(0)

        def split(n: int) -> ImageTensorDataset:
            images = torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8)
            return ImageTensorDataset(images, torch.randint(0, 3, (n,), generator=g))

        self.train_set, self.val_set, self.test_set = split(48), split(8), split(N_TEST)


def make_tiny_checkpoint(path: Path) -> Path:
    """A tiny JointDiffusion with a head, trained two steps by Lightning and saved as a checkpoint (reused when
    it already exists: the evaluation test files share one per pytest session)."""
    from jointdiff.models import JointDiffusion

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=str(path.parent), num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(JointDiffusion(**TINY), SyntheticDataModule(batch_size=8, eval_batch_size=8))
    trainer.save_checkpoint(path)
    torch.set_num_threads(threads)
    return path


def evaluation_callback(ckpt: str, cache_dir: str, **kwargs) -> GenerativeEvaluation:
    settings = dict(
        # 36 samples = 5 global batches: 3 on rank 0, 2 on rank 1, the last one short
        num_samples=36, batch_size=8, feature_extractors=[f"clf=classifier:{ckpt}"],
        input_conventions=["standard", "reference"], prd_clusters=5, prd_runs=1, knn_chunk_size=16,
        grid_size=16, cache_dir=cache_dir,
    )
    settings.update(kwargs)
    return GenerativeEvaluation(**settings)


# the worker (run as a script) -----------------------------------------------------------------------------------
def worker(ckpt: str, out: str, cache_dir: str, root: str, world: int, repeats: int) -> None:
    """``repeats`` > 1: later runs (new callbacks) find the real features in the disk cache."""
    from jointdiff.models.checkpoints import load_model

    torch.set_num_threads(1)
    model = load_model(ckpt)
    runs = []
    for _ in range(repeats):
        callback = evaluation_callback(ckpt, cache_dir)
        trainer = L.Trainer(
            accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", logger=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=root, callbacks=[callback],
        )
        logged = trainer.test(model, SyntheticDataModule(batch_size=8, eval_batch_size=8), verbose=False)[0]
        runs.append({"logged": logged, "results": callback.last_results, "record": callback.last_record})
    Path(f"{out}.rank{trainer.global_rank}.json").write_text(json.dumps(runs))


# the test -------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, ckpt: Path, out: Path, cache: Path, root: Path) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                   NODE_RANK="0", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        cmd = [sys.executable, __file__, "--ckpt", str(ckpt), "--out", str(out), "--cache", str(cache),
               "--root", str(root), "--world", str(world), "--repeats", "2"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            output, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, output[-4000:]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-joint" / "tiny.ckpt")


def _independent_accuracy(ckpt: Path) -> tuple[float, float]:
    """Test accuracy of the checkpoint by a plain loop over the split, and what a padding DistributedSampler
    (2 ranks, index 0 repeated) would report instead."""
    from jointdiff.models.checkpoints import load_model

    model = load_model(ckpt)
    dm = SyntheticDataModule()
    dm.setup()
    x, y = dm.test_set.__getitems__(list(range(N_TEST)))
    with torch.no_grad():
        pred = model.eval_network.classify(x, torch.zeros(N_TEST, dtype=torch.long)).argmax(1)
    correct = (pred == y).double()
    return correct.mean().item(), (correct.sum() + correct[0]).item() / (N_TEST + 1)


def test_two_processes_match_one_process(tiny_checkpoint, tmp_path):
    two = _launch(2, tiny_checkpoint, tmp_path / "two", tmp_path / "cache2", tmp_path / "run2")
    try:  # the one-process run, here, while the two ranks run
        worker(str(tiny_checkpoint), str(tmp_path / "one"), str(tmp_path / "cache1"), str(tmp_path / "run1"), 1, 1)
    finally:
        _wait(two)
    single = json.loads((tmp_path / "one.rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"two.rank{r}.json").read_text()) for r in range(2)]

    reference = single[0]["results"]
    assert len(reference) == 10  # 5 scores × 2 input conventions, for the one extractor
    assert all(k.startswith("test/gen_clf/") for k in reference)
    assert reference["test/gen_clf/fid_standard"] > 0
    for runs in ranks:
        for run in runs:
            assert run["record"]["world_size"] == 2
            assert run["results"].keys() == reference.keys()
            for key, value in reference.items():
                assert run["results"][key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert ranks[0][1]["results"] == ranks[0][0]["results"]  # the disk-cached real features give the same scores
    for runs in ranks:
        assert [set(r["record"]["reference_source"].values()) for r in runs] == [{"computed"}, {"disk"}]

    # the real features gathered from two processes are the single process's, row for row
    files1, files2 = sorted((tmp_path / "cache1").glob("*.pt")), sorted((tmp_path / "cache2").glob("*.pt"))
    assert [f.name for f in files1] == [f.name for f in files2] and len(files1) == 2
    for a, b in zip(files1, files2, strict=True):
        fa, fb = torch.load(a)["features"], torch.load(b)["features"]
        # the reference convention's real set drops the last incomplete batch of the DataModule's batch (8)
        rows = N_TEST // 8 * 8 if "-reference-" in a.name else N_TEST
        assert fa.shape == (rows, 112) and torch.equal(fa, fb)

    # test accuracy: no duplicated example counts with two processes
    accuracy, padded = _independent_accuracy(tiny_checkpoint)
    assert padded != pytest.approx(accuracy, abs=1e-6)  # so padding would be visible
    assert single[0]["logged"]["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    for runs in ranks:
        assert runs[0]["logged"]["test/acc"] == pytest.approx(accuracy, abs=1e-6)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for flag in ("--ckpt", "--out", "--cache", "--root"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    worker(args.ckpt, args.out, args.cache, args.root, args.world, args.repeats)
