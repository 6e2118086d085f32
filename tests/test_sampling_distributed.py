"""Generation on several processes: a 2-process DDP run (gloo, CPU) of ``jointdiff sample`` launched by Lightning
Fabric writes exactly the samples of a 1-process run with the same seed, and the shards cover every index once."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_checkpoint
from test_sampling_cli import run

from jointdiff.sampling.distributed import shard


@pytest.mark.parametrize("total,world", [(7, 2), (6, 3), (2, 4), (0, 2)])
def test_shards_cover_every_index_once_in_order(total, world):
    covered = [i for rank in range(world) for i in shard(total, rank, world)]
    assert covered == list(range(total))


def test_two_processes_write_the_samples_of_one(tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    write_checkpoint(ckpt)
    common = ["--checkpoint", str(ckpt), "--sampler", "joint", "--alpha", "5", "--classes", "[0, 2]", "--num", "3",
              "--batch_size", "2", "--seed", "4", "--clip_denoised", "true"]
    run(*common, "--output", tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("MASTER_PORT", None)
    done = subprocess.run([sys.executable, "-m", "jointdiff.cli", "sample", *common, "--devices", "2",
                           "--progress", "false", "--output", str(tmp_path / "two")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    assert one["arr_0"].shape == (6, 8, 8, 1)
    assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])
    assert len(np.unique(one["arr_0"])) > 2  # clamped, so not all saturated
    import json

    assert json.loads((tmp_path / "two" / "sample.json").read_text())["processes"] == 2


def test_two_process_alpha_sweep_writes_the_samples_and_rows_of_one(tmp_path):
    ckpt = tmp_path / "tiny.ckpt"
    write_checkpoint(ckpt)
    common = ["alpha-sweep", "--checkpoint", str(ckpt), "--alphas", "[0, 5]", "--num_per_class", "2",
              "--batch_size", "2", "--judge", str(ckpt), "--progress", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("MASTER_PORT", None)
    for name, extra in (("one", []), ("two", ["--devices", "2"])):
        done = subprocess.run([sys.executable, "-m", "jointdiff.cli", *common, *extra, "--output",
                               str(tmp_path / name)], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    import json

    for a in ("0", "5"):
        one, two = (np.load(tmp_path / n / "grids" / f"alpha_{a}.npz") for n in ("one", "two"))
        assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])
    rows = [json.loads((tmp_path / n / "alpha_sweep.json").read_text())["rows"] for n in ("one", "two")]
    assert [r["judge_hit_rate"] for r in rows[0]] == [r["judge_hit_rate"] for r in rows[1]]
