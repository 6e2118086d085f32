"""SampleGrid and MetricsJSON under 2-process DDP (gloo): fit and test finish (no rank waits alone in a collective),
rank zero alone writes the grid and the metrics JSON (the files a one-process run writes, no more), and the
evaluation losses logged are the same on every rank (synchronised, not rank zero's half of the test set).
Launched like tests/test_ddp_evaluation.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from conftest import TINY_JOINT, SyntheticDataModule, free_port, wait_all


def worker(root: str, world: int) -> None:
    import jointdiff.callbacks.logging as logging_module
    import jointdiff.callbacks.samples as samples_module
    from jointdiff.callbacks import MetricsJSON, SampleGrid
    from jointdiff.models import JointDiffusion

    rank = int(os.environ.get("LOCAL_RANK", "0"))
    written = []

    def recording(fn):
        def wrapper(data, path, *a, **k):
            written.append(Path(path).name)
            return fn(data, path, *a, **k)
        return wrapper

    # every file the two callbacks write, per process
    logging_module.atomic_write_json = recording(logging_module.atomic_write_json)
    samples_module.save_grid = recording(samples_module.save_grid)
    torch.set_num_threads(1)
    L.seed_everything(0)
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", max_steps=2,
        limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        logger=L.pytorch.loggers.CSVLogger(root, name="ddp"), default_root_dir=root,
        callbacks=[SampleGrid(num_samples=2), MetricsJSON()],
    )
    model, dm = JointDiffusion(**TINY_JOINT), SyntheticDataModule(batch_size=8, eval_batch_size=8)
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    (Path(root) / f"rank{rank}.json").write_text(json.dumps({"written": written, "logged": logged}))


def test_sample_grid_and_metrics_json_do_not_hang_under_ddp(tmp_path):
    import subprocess

    single = tmp_path / "single"
    subprocess.run([sys.executable, __file__, "--root", str(single), "--world", "1"], check=True, capture_output=True,
                   env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"), timeout=240)
    tmp_path = tmp_path / "ddp"
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                   LOCAL_RANK=str(rank), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        cmd = [sys.executable, __file__, "--root", str(tmp_path), "--world", "2"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    wait_all(procs)  # fails on a timeout (a hang) or a non-zero exit
    metrics = json.loads(next(tmp_path.rglob("metrics.json")).read_text())
    assert metrics["fit"]["global_step"] == 2 and "test/acc" in metrics["test"]
    assert Path(metrics["sample_grid"]).is_file()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    one = json.loads((single / "rank0.json").read_text())
    assert ranks[1]["written"] == []  # rank one writes nothing
    assert ranks[0]["written"] == one["written"] and "metrics.json" in one["written"]  # rank zero: a 1-process run's
    assert set(ranks[0]["logged"]) == set(one["logged"])
    for key in ("test/diffusion_loss", "test/acc"):  # synchronised: both ranks report the whole test set's value
        assert ranks[0]["logged"][key] == ranks[1]["logged"][key], key


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--world", type=int, required=True)
    args = parser.parse_args()
    worker(args.root, args.world)
