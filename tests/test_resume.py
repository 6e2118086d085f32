"""Exact resume: N steps, a checkpoint in the middle of an epoch, resume, M more steps ≡ N+M
uninterrupted steps, bit for bit: weights, EMA (with its update count), optimizer state, the semi-supervised
buffer and counter, and the data order. Also the EMA under gradient accumulation and skipped AMP steps (item 7)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import TINY_MODEL
from lightning.pytorch.plugins.precision import MixedPrecision

from jointdiff.data import FashionMNISTDataModule
from jointdiff.data.base import ImageTensorDataset
from jointdiff.data.semisupervised import hide_labels
from jointdiff.models import JointDiffusion, StandaloneClassifier


class BatchLog(L.Callback):
    """Records a fingerprint of every training batch (its images' sum and its labels)."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((float(batch[0].double().sum()), batch[1].tolist()))


def _datamodule(fmnist, n: int = 56, labelled_every: int = 3) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(root=fmnist.root, batch_size=8)
    images, targets = fmnist.train_set.images[:n], fmnist.train_set.targets[:n]
    keep = torch.arange(0, n, labelled_every)  # a third labelled: the buffer holds examples across steps
    dm.train_set = ImageTensorDataset(images, hide_labels(targets, keep))
    dm.val_set, dm.test_set = fmnist.val_set, fmnist.test_set
    return dm


def _trainer(root, max_steps, callbacks=(), **kw):
    return L.Trainer(max_steps=max_steps, limit_val_batches=0, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=root, callbacks=list(callbacks), **kw)


def _model():
    L.seed_everything(0)
    return JointDiffusion(**TINY_MODEL, ema_decay=0.9)


def test_mid_epoch_resume_equals_the_uninterrupted_run_bit_for_bit(fmnist, tmp_path, one_thread):
    dm = _datamodule(fmnist)  # 7 batches per epoch: step 4 is mid-epoch, 11 crosses into the second epoch
    straight_log = BatchLog()
    straight = _model()
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=4, save_top_k=-1)
    straight_trainer = _trainer(tmp_path / "a", 11, [straight_log, save])
    straight_trainer.fit(straight, datamodule=dm)
    ckpt_path = tmp_path / "a" / "epoch=0-step=4.ckpt"
    assert ckpt_path.is_file()
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["state_dict"]["ema._extra_state"].item() == 4  # the EMA of step 4, not of step 3

    resumed_log = BatchLog()
    resumed = _model()
    L.seed_everything(123)  # everything must come from the checkpoint
    resumed_trainer = _trainer(tmp_path / "b", 11, [resumed_log])
    resumed_trainer.fit(resumed, datamodule=dm, ckpt_path=ckpt_path)

    assert resumed_log.batches == straight_log.batches[4:]  # same data order after the resume point
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    opt_a, opt_b = straight_trainer.optimizers[0].state_dict(), resumed_trainer.optimizers[0].state_dict()
    for (ka, sa), (kb, sb) in zip(opt_a["state"].items(), opt_b["state"].items(), strict=True):
        assert ka == kb and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert straight.ema.num_updates == resumed.ema.num_updates == 11
    assert straight.classifier_batches == resumed.classifier_batches > 0
    buf_a, buf_b = straight.labelled_buffer.state_dict(), resumed.labelled_buffer.state_dict()
    assert torch.equal(buf_a["images"], buf_b["images"]) and torch.equal(buf_a["targets"], buf_b["targets"])


def test_the_validation_cadence_does_not_change_the_trained_model(fmnist, tmp_path, one_thread):
    """Validating every 2 steps, every 5 steps or never trains the same weights and sees the same batches (an
    evaluation loader that drew its worker seed from torch's global generator shifted everything after it)."""
    runs = []
    for name, every in (("never", None), ("2", 2), ("5", 5)):
        dm = _datamodule(fmnist)
        log = BatchLog()
        model = _model()
        val = {"limit_val_batches": 0} if every is None else {"limit_val_batches": 2, "val_check_interval": every,
                                                              "check_val_every_n_epoch": None}
        trainer = L.Trainer(max_steps=11, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, default_root_dir=tmp_path / name, callbacks=[log], **val)
        trainer.fit(model, datamodule=dm)
        runs.append((log.batches, model.state_dict()))
    (batches, weights), *others = runs
    for other_batches, other_weights in others:
        assert other_batches == batches
        for (key, a), b in zip(weights.items(), other_weights.values(), strict=True):
            assert torch.equal(a, b), key


def test_buffer_and_counter_are_in_the_checkpoint(fmnist, tmp_path, one_thread):
    dm = _datamodule(fmnist)
    model = _model()
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(tmp_path, 2, [save]).fit(model, datamodule=dm)
    assert model.labelled_buffer.size > 0  # 2 batches of 8 with a third labelled: not yet a full batch of 8
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["jointdiff_train_state"]
    assert state["classifier_batches"] == model.classifier_batches
    assert torch.equal(state["labelled_buffer"]["targets"], torch.cat(model.labelled_buffer.targets))


class OptimizerSteps(L.Callback):
    def on_train_end(self, trainer, pl_module):
        self.steps = [int(s["step"]) for s in trainer.optimizers[0].state.values()]


def test_ema_updates_once_per_optimizer_step_under_gradient_accumulation(fmnist, tmp_path, one_thread):
    dm = _datamodule(fmnist, labelled_every=1)
    L.seed_everything(0)
    model = StandaloneClassifier(**{k: v for k, v in TINY_MODEL.items() if k != "diffusion_steps"})
    counter = OptimizerSteps()
    _trainer(tmp_path, 3, [counter], accumulate_grad_batches=2, enable_checkpointing=False).fit(model, datamodule=dm)
    assert set(counter.steps) == {3}  # 6 micro-batches, 3 optimizer steps
    assert model.ema.num_updates == 3


class InfOnSecondStep(JointDiffusion):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("inf") if batch_idx == 1 else loss


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ema_does_not_update_after_a_step_the_grad_scaler_skipped(fmnist, tmp_path, one_thread):
    dm = _datamodule(fmnist, labelled_every=1)
    L.seed_everything(0)
    model = InfOnSecondStep(**TINY_MODEL, ema_decay=0.9)
    counter = OptimizerSteps()
    # fp16 AMP with a GradScaler, as on a GPU (Lightning alone would switch a CPU run to bf16, which has no scaler)
    amp = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    _trainer(tmp_path, 4, [counter], plugins=[amp], enable_checkpointing=False).fit(model, datamodule=dm)
    taken = max(counter.steps)
    assert taken == 3  # four batches, the second one's inf gradients skipped by the scaler
    assert model.ema.num_updates == taken
