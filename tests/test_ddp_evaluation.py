"""Two CPU processes (DDP over gloo) give the same generative scores and test accuracy as one process.

The test launches this file as a script, once with WORLD_SIZE=1 and twice with WORLD_SIZE=2 (one process per rank,
Lightning picks the ranks up from the environment), each running ``trainer.test`` with ``GenerativeEvaluation`` on a
tiny joint model, then compares what the ranks wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import (
    N_TEST,
    SyntheticDataModule,
    evaluation_callback,
    free_port,
    make_tiny_checkpoint,
    wait_all,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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
        runs.append({"logged": logged, "results": callback.last_results, "record": callback.last_record.to_json()})
    Path(f"{out}.rank{trainer.global_rank}.json").write_text(json.dumps(runs))


# the test -------------------------------------------------------------------------------------------------------


def _launch(world: int, ckpt: Path, out: Path, cache: Path, root: Path) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                   NODE_RANK="0", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        cmd = [sys.executable, __file__, "--ckpt", str(ckpt), "--out", str(out), "--cache", str(cache),
               "--root", str(root), "--world", str(world), "--repeats", "2"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


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
        wait_all(two)
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
