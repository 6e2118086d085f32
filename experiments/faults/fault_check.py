"""Fault injection against the installed ``jointdiff`` command: one line per scenario, expected vs observed.

    python experiments/faults/fault_check.py [--work DIR] [--keep]

Scenarios: a poisoned or replaced data cache (1), a checkpoint that does not fit the configured model
(2), a kill during a checkpoint save with ``$TMPDIR`` on another filesystem and an unreadable newest HPC checkpoint
(5), a mid-epoch resume compared bit for bit with the uninterrupted run (6), SIGTERM and SIGKILL during training
(8), bad values and files given to the command line (9), and the trust boundary (T1–T7: a corrupt idx file beside a
user's data, pickle payloads in checkpoints and weight files, a diverged run, NaN sample files, two writers of one
file, a requeue with only corrupt HPC checkpoints, unsafe sweep values and names). Everything runs on CPU on small
fixture data in the real idx format, in a few minutes; exit status 1 if any scenario fails.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
JOINTDIFF = Path(sys.executable).parent / "jointdiff"  # the console script installed beside this interpreter

TINY_CONFIG = {
    "seed_everything": 0,
    "test_after_fit": False,
    "trainer": {
        "max_steps": 3, "limit_val_batches": 0, "enable_progress_bar": False, "enable_model_summary": False,
        "log_every_n_steps": 1,
        "logger": {"class_path": "jointdiff.workflow.loggers.RunCSVLogger",
                   "init_args": {"save_dir": "unused", "flush_logs_every_n_steps": 1}},
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"save_last": True, "every_n_train_steps": 3, "save_top_k": -1}},
            {"class_path": "jointdiff.callbacks.MetricsJSON"},
            {"class_path": "jointdiff.callbacks.workflow.RunRecord"},
        ],
    },
    "model": {"class_path": "jointdiff.models.JointDiffusion",
              "init_args": {"model_channels": 16, "norm_groups": 8, "num_res_blocks": 1, "attention_downsample": [],
                            "channel_mult": [1, 2], "diffusion_steps": 50, "ema_decay": 0.9}},
    "data": {"class_path": "jointdiff.data.FashionMNISTDataModule",
             "init_args": {"batch_size": 8, "eval_batch_size": 16, "val_fraction": 0.1}},
}


class Checker:
    def __init__(self, work: Path):
        self.work = work
        self.rows: list[tuple[str, str, str, bool]] = []
        self.config = work / "tiny.yaml"
        self.config.write_text(yaml.safe_dump(TINY_CONFIG))
        self.data = work / "data"
        write_idx = runpy.run_path(str(REPO / "tests" / "fixtures.py"))["write_idx"]  # the tests' dataset writers

        write_idx(self.data / "fashion-mnist", n_train=40, n_test=16, seed=0)  # 36 train images: 4 batches/epoch
        self.env = {**os.environ, "JOINTDIFF_DATA_ROOT": str(self.data), "JOINTDIFF_CACHE": str(work / "cache"),
                    "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
        for key in ("JOINTDIFF_RUN_DIR", "JOINTDIFF_DEBUG", "WANDB_RUN_ID"):
            self.env.pop(key, None)

    # helpers ---------------------------------------------------------------------------------------------------
    def cli(self, *args: str, run_dir: Path | None = None, env: dict | None = None, timeout: float = 300):
        env = {**self.env, **(env or {})}
        if run_dir is not None:
            env["JOINTDIFF_RUN_DIR"] = str(run_dir)
        start = time.perf_counter()
        proc = subprocess.run([str(JOINTDIFF), *args], env=env, capture_output=True, text=True, timeout=timeout)
        return proc, time.perf_counter() - start

    def fit(self, run_dir: Path, *extra: str, **kw):
        return self.cli("fit", "-c", str(self.config), f"--trainer.default_root_dir={run_dir}", *extra,
                        run_dir=run_dir, **kw)

    def record(self, name: str, expected: str, check: Callable[[], tuple[str, bool]]) -> None:
        try:
            observed, ok = check()
        except Exception as err:  # a crash of the scenario itself is a failure, with its reason
            observed, ok = f"scenario crashed: {type(err).__name__}: {err}"[:300], False
        self.rows.append((name, expected, observed, ok))
        print(f"{'PASS' if ok else 'FAIL'}  {name}\n      expected: {expected}\n      observed: {observed}", flush=True)

    @staticmethod
    def error_lines(proc) -> list[str]:
        return [line for line in proc.stderr.splitlines() if line.startswith("jointdiff: error:")]

    def said(self, proc, width: int = 110) -> str:
        """What a command told the user: its first error line (without the prefix), else the end of its stderr."""
        lines = self.error_lines(proc)
        return lines[0][len("jointdiff: error: "):][:width] if lines else proc.stderr[-150:]

    # scenarios ---------------------------------------------------------------------------------------------------
    def data_cache(self) -> None:
        from jointdiff.data import FashionMNISTDataModule
        write_idx = runpy.run_path(str(REPO / "tests" / "fixtures.py"))["write_idx"]  # the tests' dataset writers

        root = self.work / "cache_root"
        good = self.work / "cache_good"
        write_idx(good, n_train=20, n_test=10, seed=0)
        shutil.copytree(good, root)
        (root / "train-images-idx3-ubyte.gz").write_bytes(b"")
        cache = {"JOINTDIFF_CACHE": str(self.work / "cache_1")}

        def poisoned():
            bad, _ = self.fit(self.work / "run_cache", f"--data.init_args.root={root}", "--trainer.max_steps=1",
                              env=cache)
            shutil.copy2(good / "train-images-idx3-ubyte.gz", root / "train-images-idx3-ubyte.gz")
            fixed, _ = self.fit(self.work / "run_cache2", f"--data.init_args.root={root}", "--trainer.max_steps=1",
                                env=cache)
            lines = self.error_lines(bad)
            names_source = bool(lines) and str(root / "train-images-idx3-ubyte.gz") in lines[0]
            return (f"empty file: exit {bad.returncode}, {len(lines)} error line naming the source: {names_source}; "
                    f"after restoring it: exit {fixed.returncode}"), (
                bad.returncode == 2 and len(lines) == 1 and names_source and fixed.returncode == 0)

        self.record("1a empty .gz, then restored", "one line naming the .gz file; the restored file trains",
                    poisoned)

        def replaced():
            os.environ["JOINTDIFF_CACHE"] = str(self.work / "cache_2")
            folder = self.work / "replaced"
            write_idx(folder, n_train=20, n_test=10, seed=0)
            first = FashionMNISTDataModule(root=str(folder), val_fraction=0.0)
            first.setup()
            other = write_idx(self.work / "replacement", n_train=30, n_test=10, seed=1)
            for f in (self.work / "replacement").iterdir():
                shutil.copyfile(f, folder / f.name)
            second = FashionMNISTDataModule(root=str(folder), val_fraction=0.0)
            second.setup()
            served_new = torch.equal(second.test_set.images[:, 0], torch.from_numpy(other["t10k_images"]))
            return f"after replacing the files: {len(second.train_set)} train images, new test images: " \
                   f"{served_new}", len(second.train_set) == 30 and served_new

        self.record("1b files replaced in a root that loaded once", "the new files are served", replaced)

    def checkpoint_fit(self) -> None:
        run = self.work / "run_ckpt"
        proc, _ = self.fit(run)
        ckpt = next(run.rglob("last.ckpt"), None)

        def mismatch():
            if ckpt is None:
                return f"the 3-step fit failed: {proc.stderr[-300:]}", False
            test, seconds = self.cli("test", "-c", str(self.config), "--data.init_args.image_size=32",
                                     f"--ckpt_path={ckpt}", f"--trainer.default_root_dir={self.work / 'run_t'}")
            lines = self.error_lines(test)
            ok = test.returncode == 2 and len(lines) == 1 and "image_size: checkpoint 28, this run 32" in lines[0]
            return f"exit {test.returncode} after {seconds:.1f} s: {lines[0] if lines else test.stderr[-200:]}", ok

        self.record("2  28-px checkpoint tested at image_size=32", "one line naming 28 and 32, exit 2", mismatch)

    def atomic_saves(self) -> None:
        writer = ("import sys, torch\nfrom lightning.fabric.plugins import TorchCheckpointIO\n"
                  "from jointdiff.workflow.checkpoint_io import AtomicCheckpointIO\n"
                  "io = AtomicCheckpointIO() if sys.argv[1] == 'atomic' else TorchCheckpointIO()\n"
                  "io.save_checkpoint({'step': 1}, sys.argv[2]); print('ready', flush=True)\n"
                  "io.save_checkpoint({'step': 2, 'w': torch.zeros(60_000_000)}, sys.argv[2])\n")
        shm = Path("/dev/shm")
        other_fs = shm.is_dir() and os.stat(shm).st_dev != os.stat(self.work).st_dev

        def kill_mid_save(kind: str) -> tuple[str, bool]:
            tmpdir = Path(tempfile.mkdtemp(dir=shm if other_fs else self.work))
            dest = self.work / f"save_{kind}" / "last.ckpt"
            proc = subprocess.Popen([sys.executable, "-c", writer, kind, str(dest)], stdout=subprocess.PIPE,
                                    text=True, env={**self.env, "TMPDIR": str(tmpdir)})
            proc.stdout.readline()
            before = os.stat(dest)
            while proc.poll() is None:
                st = os.stat(dest)
                partial = list(dest.parent.glob(".*.partial"))
                if (st.st_ino, st.st_size) != (before.st_ino, before.st_size) or (
                        partial and partial[0].stat().st_size > 50_000_000):
                    proc.send_signal(signal.SIGKILL)
                    break
            proc.wait()
            orphans = sum(f.stat().st_size for f in tmpdir.rglob("*") if f.is_file())  # (torch may add empty folders)
            try:
                step = torch.load(dest, weights_only=True)["step"]
                state = f"readable (step {step})"
            except Exception as err:
                step, state = None, f"UNREADABLE ({dest.stat().st_size} bytes: {type(err).__name__})"
            shutil.rmtree(tmpdir, ignore_errors=True)
            return f"last.ckpt {state}; {orphans / 1e6:.0f} MB left in $TMPDIR", step is not None and orphans == 0

        where = "tmpfs /dev/shm" if other_fs else "the same filesystem (no /dev/shm here)"
        self.record(f"5a kill during a save, AtomicCheckpointIO, TMPDIR on {where}",
                    "last.ckpt whole (old or new), nothing in $TMPDIR", lambda: kill_mid_save("atomic"))
        observed = kill_mid_save("lightning")
        self.rows.append(("5b (reference) the same kill with Lightning's default TorchCheckpointIO",
                          "shows the fault fixed by 5a (not counted)", observed[0], True))
        print(f"INFO  5b Lightning's default TorchCheckpointIO under the same kill: {observed[0]}", flush=True)

        def hpc():
            from jointdiff.workflow.checkpoint_io import set_aside_unreadable_hpc_checkpoints

            folder = self.work / "hpc"
            folder.mkdir()
            torch.save({"n": 1}, folder / "hpc_ckpt_1.ckpt")
            (folder / "hpc_ckpt_2.ckpt").write_bytes(b"")
            set_aside_unreadable_hpc_checkpoints(folder)
            from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

            class T:
                default_root_dir = str(folder)

            chosen = Path(_CheckpointConnector(T())._hpc_resume_path).name
            return f"auto-resume picks {chosen}", chosen == "hpc_ckpt_1.ckpt"

        self.record("5c unreadable newest hpc_ckpt_2 (0 bytes)", "resume from hpc_ckpt_1 with a warning", hpc)

    def exact_resume(self) -> None:
        def check():
            straight, resumed = self.work / "run_straight", self.work / "run_resumed"
            a, _ = self.fit(straight, "--trainer.max_steps=6")
            mid = next(straight.rglob("*step=3.ckpt"), None)
            if a.returncode or mid is None:
                return f"straight run failed: {a.stderr[-300:]}", False
            b, _ = self.fit(resumed, "--trainer.max_steps=6", f"--ckpt_path={mid}")
            if b.returncode:
                return f"resumed run failed: {b.stderr[-300:]}", False
            x = torch.load(next(straight.rglob("last.ckpt")), weights_only=True)
            y = torch.load(next(resumed.rglob("last.ckpt")), weights_only=True)
            weights = all(torch.equal(v, y["state_dict"][k]) for k, v in x["state_dict"].items())
            opt = all(torch.equal(s[n], y["optimizer_states"][0]["state"][i][n])
                      for i, s in x["optimizer_states"][0]["state"].items() for n in s)
            return (f"step 3 of a 4-batch epoch, resumed to 6: weights+EMA equal {weights}, AdamW state equal {opt}, "
                    f"steps {x['global_step']}/{y['global_step']}"), weights and opt and x["global_step"] == 6

        self.record("6  3 steps + resume + 3 steps vs 6 steps", "bit-identical weights, EMA, optimizer", check)

    def signals(self) -> None:
        def run_until_steps(run_dir: Path, sig: int):
            env = {**self.env, "JOINTDIFF_RUN_DIR": str(run_dir)}
            proc = subprocess.Popen([str(JOINTDIFF), "fit", "-c", str(self.config), "--trainer.max_steps=100000",
                                     f"--trainer.default_root_dir={run_dir}"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            csv = run_dir / "metrics.csv"
            deadline = time.time() + 180
            while (not csv.exists() or len(csv.read_text().splitlines()) < 3) and time.time() < deadline:
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
            proc.send_signal(sig)
            proc.wait(timeout=120)
            return proc.returncode, json.loads((run_dir / "run.json").read_text())["attempts"][-1]

        def sigterm():
            rc, attempt = run_until_steps(self.work / "run_term", signal.SIGTERM)
            return f"exit {rc}, run.json status {attempt['status']!r}", rc == 143 and attempt["status"] == "interrupted"

        def sigkill():
            from jointdiff.runs import attempt_status

            rc, attempt = run_until_steps(self.work / "run_kill", signal.SIGKILL)
            status = attempt_status(attempt)
            return f"exit {rc}, run.json says {attempt['status']!r}, read as {status!r}", status == "stale"

        self.record("8a SIGTERM during training", "exit 143, attempt recorded 'interrupted'", sigterm)
        self.record("8b SIGKILL during training", "attempt read as 'stale' (sweep run re-runs it)", sigkill)

    def bad_inputs(self) -> None:
        cases = [
            ("--model.init_args.classifier_weight=-1", "classifier_weight"),
            ("--model.init_args.diffusion_steps=0", "diffusion_steps"),
            ("--data.init_args.batch_size=0", "batch_size"),
            ("--data.init_args.labelled_fraction=1.5", "labelled_fraction"),
            ("--model.init_args.ema_decay=1.5", "ema decay"),
            ("--model.init_args.lr=-1", "lr must be > 0"),
            ("--model.init_args.num_classes=5", "num_classes=5 is set by hand"),
        ]
        for arg, needle in cases:
            def check(arg=arg, needle=needle):
                run = self.work / f"run_bad_{arg.split('.')[-1].split('=')[0]}"
                proc, seconds = self.fit(run, arg)
                lines = self.error_lines(proc)
                ok = (proc.returncode == 2 and len(lines) == 1 and needle in lines[0]
                      and len(proc.stderr.strip().splitlines()) <= 2 and not (run / "config.yaml").exists())
                shown = lines[0] if lines else proc.stderr.strip().splitlines()[-1:]
                return f"exit {proc.returncode} in {seconds:.1f} s, {len(proc.stderr.splitlines())} stderr lines: " \
                       f"{shown}", ok

            self.record(f"9  {arg}", f"one line about {needle}, exit 2, no run folder", check)

        empty = self.work / "empty.ckpt"
        empty.write_bytes(b"")

        def empty_ckpt():
            proc, seconds = self.cli("test", "-c", str(self.config), f"--ckpt_path={empty}",
                                     f"--trainer.default_root_dir={self.work / 'run_empty'}")
            lines = self.error_lines(proc)
            return f"exit {proc.returncode}: {lines[0] if lines else proc.stderr[-200:]}", (
                proc.returncode == 2 and len(lines) == 1 and "0 bytes" in lines[0])

        self.record("9  test --ckpt_path <0-byte file>", "one line saying it is empty, exit 2", empty_ckpt)

    def trust_boundary(self) -> None:
        """T1–T7: the trust-boundary review (docs/design.md §14): no input deletes data, runs code or passes a
        diverged run off as a result."""

        import numpy as np

        fixtures = runpy.run_path(str(REPO / "tests" / "fixtures.py"))  # the tests' dataset writers
        marker = self.work / "code_ran"

        class Payload:  # pickles into a call that creates the marker file
            def __reduce__(self):
                return (open, (str(marker), "w"))

        def tree(root: Path) -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

        def t1():
            root = self.work / "tv_root"
            raw = fixtures["write_idx_torchvision_layout"](root, n_train=20, n_test=10, seed=0)
            train = raw / "train-images-idx3-ubyte"
            train.write_bytes(train.read_bytes()[:-100])
            (root / "notes.txt").write_text("notes")
            (root / "cifar-10-batches-py").mkdir()
            (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
            before = tree(root)
            proc, _ = self.fit(self.work / "run_t1", f"--data.init_args.root={root}", "--trainer.max_steps=1")
            lines = self.error_lines(proc)
            kept = root.is_dir() and tree(root) == before
            return (f"exit {proc.returncode}, {len(lines)} line naming the file: "
                    f"{bool(lines) and str(train) in lines[0]}; every file of the root kept: {kept}"), (
                proc.returncode == 2 and len(lines) == 1 and str(train) in lines[0] and kept)

        self.record("T1 truncated idx file in torchvision's layout", "one line naming it; the data root untouched", t1)

        good, _ = self.fit(self.work / "run_good")
        good_ckpt = next((self.work / "run_good").rglob("last.ckpt"), None)

        def t2a():
            evil = self.work / "evil.ckpt"
            torch.save({"state_dict": {}, "x": Payload()}, evil)
            proc, _ = self.cli("test", "-c", str(self.config), f"--ckpt_path={evil}",
                               f"--trainer.default_root_dir={self.work / 'run_t2a'}")
            lines = self.error_lines(proc)
            names = bool(lines) and "JOINTDIFF_TRUST_PICKLE" in lines[0]
            return f"exit {proc.returncode}, the line names the opt-in: {names}, payload ran: {marker.exists()}", (
                proc.returncode == 2 and len(lines) == 1 and names and not marker.exists())

        self.record("T2a pickle payload in --ckpt_path", "refused in one line before it runs", t2a)

        samples = self.work / "samples.npz"
        np.savez(samples, arr_0=np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8))

        def score(*args: str, env: dict | None = None):
            return self.cli("score", *args, "--data", "FashionMNISTDataModule", "--progress", "false", env=env)

        def t2b():
            named = self.work / "strings.ckpt"
            torch.save({"jointdiff_class": "subprocess.Popen", "state_dict": {},
                        "hyper_parameters": {"args": ["touch", str(marker)]}}, named)
            proc, _ = score(str(samples), "--features", f"[classifier:{named}]")
            lines = self.error_lines(proc)
            return f"exit {proc.returncode}: {self.said(proc)}; ran: {marker.exists()}", (
                proc.returncode == 2 and len(lines) == 1 and not marker.exists())

        self.record("T2b checkpoint naming subprocess.Popen via score --features", "refused, nothing built", t2b)

        def t2c():
            weights = self.work / "pt_inception-2015-12-05-6726825d.pth"
            torch.save({"w": torch.zeros(1), "x": Payload()}, weights)
            proc, _ = score(str(samples), "--features", "[inception]", "--inception_weights", str(weights),
                            "--allow_download", "false")
            lines = self.error_lines(proc)
            return f"exit {proc.returncode}, names the opt-in: {bool(lines) and 'JOINTDIFF_TRUST_PICKLE' in lines[0]}" \
                   f"; ran: {marker.exists()}", (proc.returncode == 2 and len(lines) == 1 and not marker.exists())

        self.record("T2c pickle payload as --inception_weights", "refused before torch-fidelity reads it", t2c)

        def t3():
            run = self.work / "runs_t3" / "diverged"
            proc, _ = self.fit(run, "--model.init_args.lr=1e30")
            lines = self.error_lines(proc)
            attempt = json.loads((run / "run.json").read_text())["attempts"][-1]
            ckpts = list(run.rglob("*.ckpt"))
            finite = all(all(bool(torch.isfinite(v).all()) for v in torch.load(c, weights_only=True)["state_dict"]
                             .values() if v.is_floating_point()) for c in ckpts)
            rep, _ = self.cli("report", "--roots", f"[{self.work / 'runs_t3'}]", "--output", str(self.work / "rep3"),
                              "--quiet", "true")
            text = (self.work / "rep3" / "report.md").read_text() if rep.returncode == 0 else ""
            refused = True
            if good_ckpt is not None:  # a checkpoint of non-finite weights: `sample` refuses it
                ckpt = torch.load(good_ckpt, weights_only=True)
                name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
                ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
                torch.save(ckpt, self.work / "nan.ckpt")
                sam, _ = self.cli("sample", "--checkpoint", str(self.work / "nan.ckpt"), "--num", "2",
                                  "--output", str(self.work / "nan_samples"))
                refused = sam.returncode == 2 and "non-finite weights" in " ".join(self.error_lines(sam))
            ok = (proc.returncode != 0 and len(lines) == 1 and "training diverged" in lines[0]
                  and attempt["status"] == "failed" and finite and "## Failed runs" in text and refused)
            return (f"exit {proc.returncode}, run.json {attempt['status']}, {len(ckpts)} checkpoints all finite: "
                    f"{finite}, report lists it failed: {'## Failed runs' in text}, sample refuses NaN weights: "
                    f"{refused}"), ok

        self.record("T3 fit --model.init_args.lr=1e30", "non-zero exit, failed, no NaN checkpoint, report: failed", t3)

        def t4():
            x = np.random.default_rng(0).uniform(0, 1, (16, 28, 28, 1)).astype(np.float32)
            x[:8] = np.nan
            half = self.work / "half_nan.npz"
            np.savez(half, arr_0=x)
            proc, _ = score(str(half), "--features", f"[classifier:{good_ckpt}]")
            lines = self.error_lines(proc)
            return f"exit {proc.returncode}: {self.said(proc)}", (
                proc.returncode == 2 and len(lines) == 1 and "NaN" in lines[0])

        self.record("T4 score a half-NaN sample file", "refused in one line", t4)

        def t5():
            writer = ("import sys, time\nfrom pathlib import Path\nfrom jointdiff.files import atomic_open\n"
                      "path, go, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]\n"
                      "with atomic_open(path, 'w') as f:\n    f.write(tag)\n    f.flush()\n"
                      "    Path(str(go) + '.' + tag).touch()\n    while not go.exists():\n        time.sleep(0.01)\n")
            path, go = self.work / "t5" / "feat.pt", self.work / "t5" / "go"
            path.parent.mkdir()
            py = str(Path(sys.executable))
            slow = subprocess.Popen([py, "-c", writer, str(path), str(go), "a"], env=self.env)
            while not Path(f"{go}.a").exists():
                time.sleep(0.01)
            (self.work / "t5" / "go_b").touch()
            fast = subprocess.run([py, "-c", writer, str(path), str(self.work / "t5" / "go_b"), "b"], env=self.env)
            go.touch()
            slow.wait(timeout=60)
            # and the real-feature cache: two `jointdiff score` processes sharing one $JOINTDIFF_CACHE
            shared = {"JOINTDIFF_CACHE": str(self.work / "t5" / "cache")}
            procs = [subprocess.Popen([str(JOINTDIFF), "score", str(samples), "--data", "FashionMNISTDataModule",
                                       "--features", f"[classifier:{good_ckpt}]", "--progress", "false",
                                       "--output", str(self.work / "t5" / f"score{i}.json")],
                                      env={**self.env, **shared}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                     for i in range(2)]
            codes = [p.wait(timeout=300) for p in procs]
            same = codes == [0, 0] and (json.loads((self.work / "t5" / "score0.json").read_text())["results"]
                                        == json.loads((self.work / "t5" / "score1.json").read_text())["results"])
            return (f"two writers of one file: exits {slow.returncode}, {fast.returncode}; two `score` runs on one "
                    f"cache: exits {codes}, same results: {same}"), (slow.returncode == fast.returncode == 0 and same)

        self.record("T5 two writers of one file, two scorers on one cache", "both succeed", t5)

        def t6():
            run = self.work / "run_good"
            last = next(run.rglob("last.ckpt"))
            before = last.read_bytes()
            (run / "hpc_ckpt_1.ckpt").write_bytes(before[:5000])
            proc, _ = self.fit(run)
            lines = self.error_lines(proc)
            kept = last.read_bytes() == before
            return f"exit {proc.returncode}: {self.said(proc)}; last.ckpt kept: {kept}", (
                proc.returncode == 2 and len(lines) == 1 and "--restart" in lines[0] and kept)

        self.record("T6 requeue whose only HPC checkpoint is truncated", "refuses to restart from step 0", t6)

        def t7():
            sweep = self.work / "sweep.yaml"
            base = {"method": "grid", "command": [str(Path(sys.executable)), "-c", "import time; time.sleep(20)",
                                                  "${args}"]}
            sweep.write_text(yaml.safe_dump({**base, "name": "t7", "parameters": {"x": {"values": ["1\nrm -rf ~"]}}}))
            newline, _ = self.cli("sweep", "slurm", str(sweep), "--out", str(self.work / "t7a"))
            sweep.write_text(yaml.safe_dump({**base, "name": "../../escaped", "parameters": {"x": {"values": [1]}}}))
            escaped, _ = self.cli("sweep", "run", str(sweep))
            sweep.write_text(yaml.safe_dump({**base, "name": "t7", "parameters": {"x": {"values": [1]}}}))
            first = subprocess.Popen([str(JOINTDIFF), "sweep", "run", str(sweep), "--out", str(self.work / "t7b")],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not (self.work / "t7b" / "sweep.json").exists():
                time.sleep(0.1)
            second, _ = self.cli("sweep", "run", str(sweep), "--out", str(self.work / "t7b"))
            first.terminate()
            first.wait()
            (self.work / "t7c").mkdir()
            (self.work / "t7c" / "sweep.json").write_text("{ broken")
            rep, _ = self.cli("report", "--roots", f"[{self.work / 't7c'}]", "--output", str(self.work / "rep7"),
                              "--quiet", "true")
            listed = rep.returncode == 0 and "sweep.json" in (self.work / "rep7" / "report.md").read_text()
            codes = [newline.returncode, escaped.returncode, second.returncode]
            lines = [len(self.error_lines(p)) for p in (newline, escaped, second)]
            return (f"newline value / ../../ name / second runner: exits {codes}, error lines {lines}; report with a "
                    f"broken sweep.json: exit {rep.returncode}, lists it: {listed}"), (
                codes == [2, 2, 2] and lines == [1, 1, 1] and listed and not (self.work.parent / "escaped").exists())

        self.record("T7 sweeps: newline value, ../ name, second runner, broken JSON", "each refused / listed", t7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="scratch folder, kept afterwards (default: a new temporary one, "
                        "deleted at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary scratch folder")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="jointdiff-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    checker = Checker(work)
    try:
        checker.data_cache()
        checker.checkpoint_fit()
        checker.atomic_saves()
        checker.exact_resume()
        checker.signals()
        checker.bad_inputs()
        checker.trust_boundary()
    finally:
        if not args.keep and args.work is None:  # only the scratch folder it made itself, never a --work folder
            shutil.rmtree(work, ignore_errors=True)
    counted = [r for r in checker.rows if not r[0].startswith("5b")]
    failed = [r for r in counted if not r[3]]
    print(f"\n{len(counted) - len(failed)}/{len(counted)} scenarios PASS in {time.perf_counter() - start:.0f} s"
          + (f"; FAIL: {', '.join(r[0] for r in failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
