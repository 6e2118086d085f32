"""What the classifier-bearing models share: the UNet built from their flat hyper-parameters, the check that a
DataModule fits them, and one evaluation protocol for a head with an EMA copy (decisions D6, D7).

The models keep flat ``__init__`` signatures, because LightningCLI turns each argument into a command-line flag
and a YAML key; the typed structure lives here, built once from those arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch
import torchmetrics
from torch import nn

from jointdiff.metrics.accuracy import accuracy_metric
from jointdiff.nn.joint import JointNetwork
from jointdiff.nn.unet import UNet
from jointdiff.tasks import classification_loss

# the UNet's architecture arguments, named as in the models' signatures (image_size and channels come from the data)
UNET_ARGS = ("model_channels", "channel_mult", "num_res_blocks", "attention_downsample", "num_heads", "dropout",
             "norm_groups")
DATA_KEYS = ("image_size", "channels", "num_classes", "task")


def build_unet(hp: Mapping, decoder: bool = True) -> UNet:
    """The UNet of a model's hyper-parameters, by keyword (a change of ``UNet``'s argument order cannot shift
    them)."""
    return UNet(image_size=hp["image_size"], in_channels=hp["channels"], decoder=decoder,
                **{k: hp[k] for k in UNET_ARGS})


def check_datamodule_matches(module: L.LightningModule, keys: Sequence[str] = DATA_KEYS,
                             labelled_stream: bool = False) -> None:
    """Reject a DataModule whose images or labels do not fit ``module``'s hyper-parameters, or whose batches carry a
    labelled stream (``semi_supervised_mode=stream``) that the module cannot train on, before any step."""
    trainer = module._trainer
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    if dm is None:
        return
    if not labelled_stream and getattr(dm, "semi_supervised_mode", "buffer") == "stream":
        raise ValueError(f"{type(module).__name__} does not train on a labelled stream: "
                         "set data.semi_supervised_mode=buffer")
    for key in keys:
        if hasattr(dm, key) and getattr(dm, key) != module.hparams[key]:
            raise ValueError(
                f"model.{key}={module.hparams[key]!r} does not match data.{key}={getattr(dm, key)!r}; "
                "the CLI links these automatically — don't set them by hand"
            )


class HeadEvaluation(L.LightningModule):
    """Validation and test of a model with a classifier head, a ``network`` and its ``ema`` copy (D6, D7).

    Each batch scores both weights: ``{split}/acc_ema`` and ``{split}/acc_raw``, and the loss of the weights chosen
    by ``eval_weights`` (``{split}/loss``). At the end of an epoch ``{split}/acc`` is the accuracy of those weights;
    validation also logs the best so far as ``val/acc_best`` (never used to pick the reported number). A subclass
    calls :meth:`init_head_evaluation` in ``__init__`` and implements :meth:`evaluate_batch`.
    """

    network: JointNetwork
    ema: nn.Module

    def init_head_evaluation(self, task: str, num_classes: int) -> None:
        self.metrics = nn.ModuleDict({f"{split}_{w}": accuracy_metric(task, num_classes)
                                      for split in ("val", "test") for w in ("ema", "raw")})
        self.best_val_acc = torchmetrics.MaxMetric()

    @property
    def has_head_evaluation(self) -> bool:
        return hasattr(self, "metrics")

    @property
    def eval_network(self) -> JointNetwork:
        return self.ema.module if self.hparams.eval_weights == "ema" else self.network

    def score_head(self, split: str, logits_of: Callable[[JointNetwork], torch.Tensor], y: torch.Tensor,
                   log_loss: bool = True) -> None:
        """Update both weights' accuracy with ``logits_of(net)`` against ``y``; log the chosen weights' loss."""
        for w, net in (("ema", self.ema.module), ("raw", self.network)):
            logits = logits_of(net)
            metric = self.metrics[f"{split}_{w}"]
            metric.update(logits, y)
            self.log(f"{split}/acc_{w}", metric, on_epoch=True, on_step=False)
            if log_loss and w == self.hparams.eval_weights:
                loss = classification_loss(logits, y, self.hparams.task)
                self.log(f"{split}/loss", loss, on_epoch=True, on_step=False, batch_size=len(y), sync_dist=True)

    def evaluate_batch(self, batch, batch_idx: int, split: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate_batch(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluate_batch(batch, batch_idx, "test")

    def _log_selected_accuracy(self, split: str) -> torch.Tensor | None:
        if not self.has_head_evaluation:
            return None
        acc = self.metrics[f"{split}_{self.hparams.eval_weights}"].compute()
        self.log(f"{split}/acc", acc, prog_bar=True)
        return acc

    def on_validation_epoch_end(self) -> None:
        acc = self._log_selected_accuracy("val")
        if acc is not None and not self.trainer.sanity_checking:
            self.best_val_acc.update(acc)
            self.log("val/acc_best", self.best_val_acc.compute())  # D7: best is a separately named metric

    def on_test_epoch_end(self) -> None:
        self._log_selected_accuracy("test")
