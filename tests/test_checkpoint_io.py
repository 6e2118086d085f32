"""Checkpoint writes survive a kill at any moment, wherever $TMPDIR is; SLURM auto-resume survives an unreadable
newest HPC checkpoint; old HPC checkpoints are pruned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from jointdiff.files import atomic_write_json
from jointdiff.workflow.checkpoint_io import (
    AtomicCheckpointIO,
    hpc_checkpoints,
    install,
    set_aside_unreadable_hpc_checkpoints,
)

WRITER = """
import sys, torch
from jointdiff.workflow.checkpoint_io import AtomicCheckpointIO
io, dest = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"step": 1, "w": torch.zeros(4)}, dest)
print("ready", flush=True)
io.save_checkpoint({"step": 2, "w": torch.arange(40_000_000, dtype=torch.float32)}, dest)  # 160 MB
print("done", flush=True)
"""


PARTIALS = ".last.ckpt.*.partial"


def _other_filesystem_tmpdir(tmp_path: Path) -> Path:
    """A temp folder on another filesystem than ``tmp_path`` (tmpfs /dev/shm on Linux), else beside it."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(tmp_path).st_dev:
        return Path(tempfile.mkdtemp(dir=shm, prefix="jointdiff-test-"))
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    return folder


def test_a_writer_killed_mid_save_leaves_the_old_or_the_new_checkpoint_whole(tmp_path):
    tmpdir = _other_filesystem_tmpdir(tmp_path)
    dest = tmp_path / "run" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmpdir)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        before = os.stat(dest)
        deadline = time.monotonic() + 120
        killed = False
        while time.monotonic() < deadline and proc.poll() is None:
            st = os.stat(dest)
            if (st.st_ino, st.st_size, st.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
                proc.send_signal(signal.SIGKILL)  # the moment the destination changes: mid-save for a copy
                killed = True
                break
            partials = list(dest.parent.glob(PARTIALS))
            if partials and partials[0].stat().st_size > 10_000_000:
                proc.send_signal(signal.SIGKILL)  # well into writing the new checkpoint
                killed = True
                break
        proc.wait(timeout=60)
        assert killed, "the writer finished before it could be killed"
        checkpoint = torch.load(dest, weights_only=True)  # whole: either the old or the new one
        assert checkpoint["step"] in (1, 2)
        if checkpoint["step"] == 2:
            assert torch.equal(checkpoint["w"], torch.arange(40_000_000, dtype=torch.float32))
        assert list(tmpdir.iterdir()) == []  # nothing written to (or orphaned in) $TMPDIR
        # the next save removes the killed write's leftover
        AtomicCheckpointIO().save_checkpoint({"step": 3}, dest)
        assert list(dest.parent.glob(PARTIALS)) == []
        assert torch.load(dest, weights_only=True)["step"] == 3
    finally:
        if proc.poll() is None:
            proc.kill()
        if str(tmpdir).startswith("/dev/shm"):
            for f in tmpdir.iterdir():
                f.unlink()
            tmpdir.rmdir()


def test_old_hpc_checkpoints_are_pruned(tmp_path):
    io = AtomicCheckpointIO(keep_hpc=2)
    for n in range(1, 5):
        io.save_checkpoint({"n": n}, tmp_path / f"hpc_ckpt_{n}.ckpt")
    assert [p.name for p in hpc_checkpoints(tmp_path)] == ["hpc_ckpt_4.ckpt", "hpc_ckpt_3.ckpt"]
    io.save_checkpoint({"step": 1}, tmp_path / "last.ckpt")  # other checkpoints are not touched
    assert (tmp_path / "last.ckpt").is_file()


def test_unreadable_newest_hpc_checkpoint_is_set_aside_so_the_previous_one_resumes(tmp_path):
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    AtomicCheckpointIO().save_checkpoint({"n": 1}, tmp_path / "hpc_ckpt_1.ckpt")
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(b"")  # e.g. written by another tool and killed
    (tmp_path / "hpc_ckpt_3.ckpt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(UserWarning, match="unreadable HPC checkpoint"):
        moved = set_aside_unreadable_hpc_checkpoints(tmp_path)
    assert sorted(p.name for p in moved) == ["unreadable-hpc-ckpt-2.ckpt", "unreadable-hpc-ckpt-3.ckpt"]

    class FakeTrainer:
        default_root_dir = str(tmp_path)

    assert Path(_CheckpointConnector(FakeTrainer())._hpc_resume_path).name == "hpc_ckpt_1.ckpt"


def test_the_cli_installs_atomic_checkpoint_io_unless_another_plugin_is_given():
    import lightning as L
    from lightning.fabric.plugins import TorchCheckpointIO

    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    assert install(trainer) and isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)

    class Custom(TorchCheckpointIO):
        pass

    trainer = L.Trainer(logger=False, enable_progress_bar=False, plugins=[Custom()])
    assert not install(trainer) and type(trainer.strategy.checkpoint_io) is Custom


def test_atomic_json_keeps_the_old_content_when_the_writer_fails(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json({"a": 1}, path)
    with pytest.raises(TypeError):
        atomic_write_json({"a": object()}, path)  # not serialisable: fails mid-write
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    assert list(tmp_path.glob(".m.json.*.partial")) == []


def test_temporary_files_are_never_taken_for_hpc_checkpoints(tmp_path):
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    AtomicCheckpointIO().save_checkpoint({"n": 1}, tmp_path / "hpc_ckpt_1.ckpt")
    # what a kill during the save of hpc_ckpt_2 leaves: a writer process that dies mid-write
    subprocess.run([sys.executable, "-c", "import os, sys; from jointdiff.files import atomic_open\n"
                    "with atomic_open(sys.argv[1]) as f:\n    f.write(b'half'); f.flush(); os._exit(9)",
                    str(tmp_path / "hpc_ckpt_2.ckpt")], check=False)
    (leftover,) = tmp_path.glob(".hpc-ckpt-2.ckpt.*.partial")

    class FakeTrainer:
        default_root_dir = str(tmp_path)

    assert Path(_CheckpointConnector(FakeTrainer())._hpc_resume_path).name == "hpc_ckpt_1.ckpt"
    AtomicCheckpointIO().save_checkpoint({"n": 2}, tmp_path / "hpc_ckpt_2.ckpt")
    assert not leftover.exists()
