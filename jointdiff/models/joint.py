"""``JointDiffusion``: one UNet trained for denoising and, through its pooled encoder features, classification.

Objective per batch (spec §4.1): ``L = L_diff + λ·L_cls``, both reduced by means. ``λ = 0`` removes the head and
gives the vanilla DDPM of the paper's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from jointdiff.diffusion.gaussian import GaussianDiffusion, eps_loss
from jointdiff.diffusion.samplers import ddpm_sample
from jointdiff.models.checkpoints import RecordsClass
from jointdiff.models.ema import EMA
from jointdiff.nn.augment import AugmentationMode, ClassifierAugmentation
from jointdiff.nn.joint import JointNetwork
from jointdiff.nn.unet import UNet

Task = Literal["multiclass", "multilabel"]
NoisyClassifier = Literal["off", "replace", "add"]


class JointDiffusion(RecordsClass, L.LightningModule):
    """Joint diffusion model (Deja et al. 2023).

    Data-shape arguments (``image_size``, ``channels``, ``num_classes``, ``task``) are linked from the DataModule by
    the CLI, so configs never state them twice.

    Args:
        model_channels, channel_mult, num_res_blocks, attention_downsample, num_heads, dropout, norm_groups:
            the UNet (:class:`jointdiff.nn.unet.UNet`).
        head_dropout: dropout of the classifier head (0.7 in the reference).
        diffusion_steps: T. beta_schedule: ``linear`` (the reference's) or ``cosine``.
        classifier_weight: λ; 0 builds no head (vanilla DDPM).
        noisy_classifier: decision D4. ``off``: the head sees the clean image at step 0. ``replace`` (the
            reference's noisy classifier): it sees the noised ``x_i`` at its step instead. ``add`` (the paper's
            eq. 9–10): ``CE(x0, 0) + CE(x_i, i)``.
        noisy_timesteps: steps the noisy classifier draws ``i`` from, uniformly. ``None`` uses the diffusion
            loss's own ``i`` and ``x_i`` for every example (exactly the reference).
        classifier_augmentation: decision D5 (see :mod:`jointdiff.nn.augment`).
        lr, weight_decay: AdamW, constant LR as in the reference.
        ema_decay: decay of the weight EMA (with warm-up, :class:`jointdiff.models.ema.EMA`).
        eval_weights: weights used for ``{split}/acc`` and sampling. Both ``acc_ema`` and ``acc_raw`` are
            always logged (D6: the reference evaluates raw weights; we default to EMA and keep raw visible).
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
        diffusion_steps: int = 1000,
        beta_schedule: Literal["linear", "cosine"] = "linear",
        classifier_weight: float = 0.001,
        noisy_classifier: NoisyClassifier = "off",
        noisy_timesteps: Sequence[int] | None = None,
        classifier_augmentation: AugmentationMode = "reference",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        ema_decay: float = 0.9999,
        eval_weights: Literal["ema", "raw"] = "ema",
    ):
        super().__init__()
        self.save_hyperparameters()
        if classifier_weight < 0:
            raise ValueError(f"classifier_weight must be >= 0, got {classifier_weight}")
        if noisy_classifier not in ("off", "replace", "add"):
            raise ValueError(f"noisy_classifier must be off|replace|add, got {noisy_classifier!r}")
        if noisy_timesteps is not None:
            bad = [i for i in noisy_timesteps if not 0 <= i < diffusion_steps]
            if not noisy_timesteps or bad:
                raise ValueError(f"noisy_timesteps must be a non-empty subset of 0..{diffusion_steps - 1}, got {bad or []}")
            self.register_buffer("noisy_steps", torch.tensor(list(noisy_timesteps)), persistent=False)
        self.has_head = classifier_weight > 0
        unet = UNet(
            image_size, channels, model_channels, channel_mult, num_res_blocks, attention_downsample,
            num_heads, dropout, norm_groups,
        )
        self.network = JointNetwork(unet, num_classes if self.has_head else None, head_dropout)
        self.ema = EMA(self.network, ema_decay)
        self.diffusion = GaussianDiffusion(diffusion_steps, beta_schedule)
        self.augment = ClassifierAugmentation(classifier_augmentation, image_size, channels)
        if self.has_head:
            self.metrics = nn.ModuleDict(
                {f"{split}_{w}": self._accuracy() for split in ("val", "test") for w in ("ema", "raw")}
            )
            self.best_val_acc = torchmetrics.MaxMetric()

    def _accuracy(self) -> torchmetrics.Metric:
        n = self.hparams.num_classes
        if self.hparams.task == "multilabel":  # mean per-attribute accuracy, logit > 0 ⇒ 1 (spec §4.3)
            return torchmetrics.classification.MultilabelAccuracy(num_labels=n, average="macro")
        return torchmetrics.classification.MulticlassAccuracy(num_classes=n, average="micro")

    # ---------------------------------------------------------------------------------------------------------
    @property
    def eval_network(self) -> JointNetwork:
        return self.ema.module if self.hparams.eval_weights == "ema" else self.network

    def setup(self, stage: str) -> None:
        """Reject a DataModule whose images or labels do not fit this model, before any step runs."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        hp = self.hparams
        for key in ("image_size", "channels", "num_classes", "task"):
            if hasattr(dm, key) and getattr(dm, key) != hp[key]:
                raise ValueError(
                    f"model.{key}={hp[key]!r} does not match data.{key}={getattr(dm, key)!r}; "
                    "the CLI links these automatically — don't set them by hand"
                )

    def classification_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hparams.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, y.float())
        return F.cross_entropy(logits, y)

    def _noisy_inputs(self, x0, x_t, t, noise) -> tuple[torch.Tensor, torch.Tensor]:
        if getattr(self, "noisy_steps", None) is None:
            return x_t, t  # the reference: the very x_i and i of the diffusion loss
        idx = torch.randint(0, len(self.noisy_steps), t.shape, device=t.device)
        t_cls = self.noisy_steps[idx]
        return self.diffusion.q_sample(x0, t_cls, noise), t_cls

    def classifier_batch(self, x0, x_t, t, noise, y) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs, step indices and targets of the classifier term under decision D4."""
        zeros = torch.zeros_like(t)
        mode = self.hparams.noisy_classifier
        if mode == "off":
            return x0, zeros, y
        x_n, t_n = self._noisy_inputs(x0, x_t, t, noise)
        if mode == "replace":
            return x_n, t_n, y
        return torch.cat([x0, x_n]), torch.cat([zeros, t_n]), torch.cat([y, y])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0, y = batch  # x0: (B, c, H, W) in [-1, 1]; y: (B,) class ids or (B, n) 0/1 attributes
        t = self.diffusion.sample_timesteps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        x_t = self.diffusion.q_sample(x0, t, noise)
        loss_diff = eps_loss(self.network(x_t, t), noise)
        loss = loss_diff
        self.log("train/diffusion_loss", loss_diff, prog_bar=True)
        if self.has_head:
            x_c, t_c, y_c = self.classifier_batch(x0, x_t, t, noise, y)
            logits = self.network.classify(self.augment(x_c), t_c)
            if self.hparams.noisy_classifier == "add":  # CE(x0) + CE(x_i): sum of the two halves' means
                loss_cls = 2 * self.classification_loss(logits, y_c)
            else:
                loss_cls = self.classification_loss(logits, y_c)
            loss = loss + self.hparams.classifier_weight * loss_cls
            self.log("train/classifier_loss", loss_cls, prog_bar=True)
        self.log("train/loss", loss)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update(self.network, self.global_step)

    # evaluation ------------------------------------------------------------------------------------------------
    def _evaluate(self, batch, batch_idx: int, split: str) -> None:
        x0, y = batch
        if self.has_head:
            t0 = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
            for w, net in (("ema", self.ema.module), ("raw", self.network)):
                metric = self.metrics[f"{split}_{w}"]
                metric.update(net.classify(x0, t0), y)
                self.log(f"{split}/acc_{w}", metric, on_epoch=True, on_step=False)
        # Diffusion loss of the eval weights at steps and noise seeded by the batch index (eval loaders do not
        # shuffle), so the number is comparable across epochs.
        g = torch.Generator(device=x0.device).manual_seed(batch_idx)
        t = torch.randint(0, self.diffusion.num_steps, (x0.shape[0],), device=x0.device, generator=g)
        noise = torch.randn(x0.shape, device=x0.device, generator=g)
        loss = eps_loss(self.eval_network(self.diffusion.q_sample(x0, t, noise), t), noise)
        self.log(f"{split}/diffusion_loss", loss, on_epoch=True, on_step=False, batch_size=x0.shape[0])

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _log_selected_accuracy(self, split: str) -> torch.Tensor | None:
        if not self.has_head:
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

    # sampling ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, num: int, generator: torch.Generator | None = None, use_ema: bool = True, progress: bool = False
    ) -> torch.Tensor:
        """Unconditional ancestral samples, (num, c, H, W) unclipped floats in about [-1, 1]."""
        net = self.ema.module if use_ema else self.network
        was_training = net.training
        net.eval()
        hp = self.hparams
        shape = (num, hp.channels, hp.image_size, hp.image_size)
        x = ddpm_sample(net, self.diffusion, shape, device=self.device, generator=generator, progress=progress)
        net.train(was_training)
        return x

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.network.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
