"""``StandaloneClassifier``: the joint model's encoder and pooled head trained with cross-entropy only.

The "Classifier" row of the paper's Tables 1, 5 and 6 (docs/design.md §9). The reference trains it as the joint model
with ``L_diff·0 + 0.001·CE``; we follow decision D13 instead: CE weight 1.0 (Adam is nearly scale invariant, so the two
differ only through AdamW's ε) and the UNet decoder is not built, since it would receive zero gradient anyway.
The classifier sees the clean, augmented image at step index 0, exactly the joint model's classifier pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from jointdiff.data.semisupervised import labelled_mask, split_train_batch
from jointdiff.models.args import check_optimizer_args
from jointdiff.models.base import HeadEvaluation, build_unet, check_datamodule_matches
from jointdiff.models.checkpoints import RecordsClass
from jointdiff.models.ema import EMA
from jointdiff.nn.augment import AugmentationMode, ClassifierAugmentation
from jointdiff.nn.joint import JointNetwork
from jointdiff.tasks import Task, classification_loss


class StandaloneClassifier(RecordsClass, HeadEvaluation):
    """The joint model's UNet encoder + :class:`~jointdiff.nn.heads.PooledFeatureHead`, trained with CE only.

    ``network`` is a :class:`~jointdiff.nn.joint.JointNetwork` whose UNet has no decoder: ``network.classify(x, t)``,
    ``network.unet.encode`` and ``network.head`` work as on the joint model's network, so feature extractors and
    evaluation code can treat both alike. Examples labelled −1 are ignored (semi-supervised data); a batch with
    fewer than two labelled examples makes no update (the head's BatchNorm needs two) but still counts as a step.

    Args:
        image_size, channels, num_classes, task: linked from the DataModule by the CLI.
        model_channels, channel_mult, num_res_blocks, attention_downsample, num_heads, dropout, norm_groups:
            the UNet encoder, as in :class:`~jointdiff.models.joint.JointDiffusion`.
        head_dropout: dropout of the head (0.7 in the reference).
        classifier_augmentation: decision D5, as the joint model (``reference`` for Table 1, ``off`` for Table 5).
        lr, weight_decay: AdamW, constant LR.
        ema_decay, eval_weights: as the joint model, so both are evaluated under one protocol (D6); ``acc_ema``
            and ``acc_raw`` are always logged.
    """

    def __init__(
        self,
        image_size: int = 28,
        channels: int = 1,
        num_classes: int = 10,
        task: Task = "multiclass",
        model_channels: int = 64,
        channel_mult: Sequence[float] | None = None,
        num_res_blocks: int = 3,
        attention_downsample: Sequence[int] | None = None,
        num_heads: int = 4,
        dropout: float = 0.3,
        norm_groups: int = 32,
        head_dropout: float = 0.7,
        classifier_augmentation: AugmentationMode = "reference",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        ema_decay: float = 0.9999,
        eval_weights: Literal["ema", "raw"] = "ema",
    ):
        super().__init__()
        self.save_hyperparameters()
        check_optimizer_args(lr, weight_decay)
        if task not in ("multiclass", "multilabel"):
            raise ValueError(f"task must be multiclass|multilabel, got {task!r}")
        if eval_weights not in ("ema", "raw"):
            raise ValueError(f"eval_weights must be ema|raw, got {eval_weights!r}")
        self.network = JointNetwork(build_unet(self.hparams, decoder=False), num_classes, head_dropout)
        self.ema = EMA(self.network, ema_decay)
        self.augment = ClassifierAugmentation(classifier_augmentation, image_size, channels)
        self.init_head_evaluation(task, num_classes)

    def setup(self, stage: str) -> None:
        check_datamodule_matches(self, labelled_stream=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        # x0: (B, c, H, W) in [-1, 1]; y: (B,) class ids or (B, n) 0/1 attributes, −1 = unlabelled. With a labelled
        # stream (semi_supervised_mode=stream) the classifier trains on its full labelled batches only.
        (x0, y), stream = split_train_batch(batch)
        if stream is not None:
            x0, y = stream
        keep = labelled_mask(y)
        n_labelled = int(keep.sum())
        self.log("train/labelled_fraction", n_labelled / len(y))
        if n_labelled < 2:
            return None  # Lightning skips backward and the update for this batch
        x0, y = x0[keep], y[keep]
        t0 = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        loss = classification_loss(self.network.classify(self.augment(x0), t0), y, self.hparams.task)
        self.log("train/classifier_loss", loss, prog_bar=True, batch_size=n_labelled)
        return loss

    # evaluation (HeadEvaluation's protocol) ----------------------------------------------------------------------
    def evaluate_batch(self, batch, batch_idx: int, split: str) -> None:
        x0, y = batch
        keep = labelled_mask(y)
        x0, y = x0[keep], y[keep]
        if len(y) == 0:
            return
        t0 = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        self.score_head(split, lambda net: net.classify(x0, t0), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return self.ema.follow(optimizer, self.network)
