"""``NoiseAwareClassifier``: the external classifier ``p(y | x_i, i)`` of Dhariwal & Nichol's classifier guidance.

The guidance baseline of the paper's Table 2 ("DDGM + classifier guidance", docs/design.md §5.3, decision D12): ADM's
half-UNet with attention pooling (:class:`~jointdiff.nn.encoder_unet.EncoderUNet`), trained with CE (BCE for
multi-label data) on ``x_i ~ q(x_i | x0)`` at ``i ~ U{0…T−1}`` (guided-diffusion's ``noised=True``), AdamW 3e-4,
no augmentation and, as ``classifier_train.py``, no EMA. Its diffusion schedule must be the guided DDPM's:
:meth:`NoiseAwareClassifier.check_matches` refuses any other. The guidance sampler
(:func:`jointdiff.diffusion.guidance.classifier_guided_sample`) takes ``model.network`` as its ``logits_fn``.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torchmetrics
from torch import nn

from jointdiff.data.semisupervised import labelled_mask
from jointdiff.diffusion.gaussian import GaussianDiffusion
from jointdiff.diffusion.schedules import BetaSchedule
from jointdiff.metrics.accuracy import accuracy_metric
from jointdiff.models.args import check_optimizer_args
from jointdiff.models.base import check_datamodule_matches
from jointdiff.models.checkpoints import RecordsClass
from jointdiff.nn.encoder_unet import EncoderUNet
from jointdiff.tasks import Task, classification_loss, hits

NUM_QUARTERS = 4


def correct(logits: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """(B,) per-example accuracy: top-1 hit, or the fraction of attributes right (logit > 0 ⇒ 1)."""
    hit = hits(logits, y, task).float()
    return hit.mean(dim=1) if hit.ndim == 2 else hit


class NoiseAwareClassifier(RecordsClass, L.LightningModule):
    """ADM noise-aware classifier for classifier guidance.

    Logged in validation/test: ``acc`` (clean images at step 0, comparable with the other classifiers),
    ``acc_noised`` and ``loss_noised`` (at uniform random steps with noise seeded by batch index: the training
    distribution), and ``acc_noised_q1…q4`` (the same split by quarter of the step range, q1 = least noise).

    Args:
        image_size, channels, num_classes, task: linked from the DataModule by the CLI.
        model_channels, channel_mult, num_res_blocks, attention_downsample, head_channels, dropout, norm_groups:
            the :class:`~jointdiff.nn.encoder_unet.EncoderUNet` (ADM: 128, table, 2, "32,16,8", 64, 0, 32).
        diffusion_steps, beta_schedule: the schedule of the DDPM this classifier will guide.
        lr, weight_decay: AdamW (D12: 3e-4, 0).
    """

    def __init__(
        self,
        image_size: int = 28,
        channels: int = 1,
        num_classes: int = 10,
        task: Task = "multiclass",
        model_channels: int = 128,
        channel_mult: Sequence[float] | None = None,
        num_res_blocks: int = 2,
        attention_downsample: Sequence[int] | None = None,
        head_channels: int = 64,
        dropout: float = 0.0,
        norm_groups: int = 32,
        diffusion_steps: int = 1000,
        beta_schedule: BetaSchedule = "reference_linear",
        lr: float = 3e-4,
        weight_decay: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_optimizer_args(lr, weight_decay)
        if task not in ("multiclass", "multilabel"):
            raise ValueError(f"task must be multiclass|multilabel, got {task!r}")
        self.network = EncoderUNet(
            image_size, channels, num_classes, model_channels, channel_mult, num_res_blocks, attention_downsample,
            head_channels, dropout, norm_groups,
        )
        self.diffusion = GaussianDiffusion(diffusion_steps, beta_schedule)
        self.metrics = nn.ModuleDict(
            {f"{split}_{kind}": accuracy_metric(task, num_classes)
             for split in ("val", "test") for kind in ("clean", "noised")}
        )
        self.quarters = nn.ModuleDict(
            {f"{split}_q{q + 1}": torchmetrics.MeanMetric() for split in ("val", "test") for q in range(NUM_QUARTERS)}
        )

    def check_matches(self, diffusion: GaussianDiffusion) -> None:
        """Raise unless this classifier was trained on ``diffusion``'s schedule (the guided DDPM's)."""
        mine = (self.diffusion.num_steps, self.diffusion.schedule)
        theirs = (diffusion.num_steps, diffusion.schedule)
        if mine != theirs:
            raise ValueError(
                f"the noise-aware classifier was trained for T={mine[0]} ({mine[1]} schedule) but the DDPM uses "
                f"T={theirs[0]} ({theirs[1]}): train the classifier with the DDPM's diffusion_steps/beta_schedule"
            )

    def setup(self, stage: str) -> None:
        check_datamodule_matches(self)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        x0, y = batch
        keep = labelled_mask(y)
        if not keep.any():
            return None
        x0, y = x0[keep], y[keep]
        t = self.diffusion.sample_timesteps(x0.shape[0], x0.device)
        x_t = self.diffusion.q_sample(x0, t, torch.randn_like(x0))
        loss = classification_loss(self.network(x_t, t), y, self.hparams.task)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    # evaluation ------------------------------------------------------------------------------------------------
    def _evaluate(self, batch, batch_idx: int, split: str) -> None:
        x0, y = batch
        keep = labelled_mask(y)
        if not keep.any():
            return
        x0, y = x0[keep], y[keep]
        task, T = self.hparams.task, self.diffusion.num_steps
        zeros = torch.zeros(len(y), dtype=torch.long, device=x0.device)
        clean = self.metrics[f"{split}_clean"]
        clean.update(self.network(x0, zeros), y)
        self.log(f"{split}/acc", clean, on_epoch=True, on_step=False)
        g = torch.Generator(device=x0.device).manual_seed(batch_idx)  # eval loaders do not shuffle: fixed draws
        t = torch.randint(0, T, (len(y),), device=x0.device, generator=g)
        noise = torch.randn(x0.shape, device=x0.device, generator=g)
        logits = self.network(self.diffusion.q_sample(x0, t, noise), t)
        noised = self.metrics[f"{split}_noised"]
        noised.update(logits, y)
        self.log(f"{split}/acc_noised", noised, on_epoch=True, on_step=False)
        loss = classification_loss(logits, y, task)
        self.log(f"{split}/loss_noised", loss, on_epoch=True, on_step=False, batch_size=len(y), sync_dist=True)
        right, quarter = correct(logits, y, task), (t * NUM_QUARTERS) // T
        for q in range(NUM_QUARTERS):
            sel = quarter == q
            if sel.any():
                metric = self.quarters[f"{split}_q{q + 1}"]
                metric.update(right[sel])
                self.log(f"{split}/acc_noised_q{q + 1}", metric, on_epoch=True, on_step=False)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.network.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
