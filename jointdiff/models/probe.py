"""``FrozenDDPMProbe``: the joint model's head trained on the frozen encoder features of a pre-trained DDPM.

The "Ours (pre-trained DDGM)" row of the paper's Tables 1 and 5 (docs/design.md §9, decision D14). The paper's text is
all there is (the reference has no code for it): a DDPM trained without labels, then an MLP on the pooled
representation ``z``. We load a ``JointDiffusion`` checkpoint (a DDPM is one with ``classifier_weight=0``; a joint
model's own head is ignored), freeze its UNet encoder and keep it in eval mode for the whole run, and train a fresh
:class:`~jointdiff.nn.heads.PooledFeatureHead` with CE, AdamW.

``timestep`` picks the diffusion step the features are read at: 0 (default, the paper's Table 1 setting) feeds the
clean image with step index 0, exactly the joint model's classifier pass; ``i > 0`` feeds
``x_i ~ q(x_i | x0)`` (fresh noise while training, noise seeded by batch index in evaluation) with step index ``i``.
Probing one checkpoint at several ``i`` is the paper's "features of increasing granularity" study (its Fig. 2b;
``experiments/evidence/probe_granularity.py``).
"""

from __future__ import annotations

from typing import Literal

import torch

from jointdiff.data.semisupervised import labelled_mask, split_train_batch
from jointdiff.diffusion.gaussian import GaussianDiffusion
from jointdiff.models.args import check_optimizer_args
from jointdiff.models.base import HeadEvaluation, check_datamodule_matches
from jointdiff.models.checkpoints import RecordsClass
from jointdiff.models.ema import EMA
from jointdiff.models.pretrained import frozen_encoder, load_pretrained_dpm
from jointdiff.nn.augment import AugmentationMode, ClassifierAugmentation
from jointdiff.nn.joint import JointNetwork
from jointdiff.tasks import Task, classification_loss


class FrozenDDPMProbe(RecordsClass, HeadEvaluation):
    """A pooled-feature head trained on a frozen, eval-mode DDPM encoder.

    ``network`` is a :class:`~jointdiff.nn.joint.JointNetwork` (decoder-less UNet + head), as the stand-alone
    classifier's, so ``network.unet.encode`` and ``network.head`` serve feature extractors alike. The frozen
    encoder's weights are part of this module's checkpoints (a reloaded probe is exactly the trained one); the DPM
    checkpoint is read again on reload only for its architecture.

    Args:
        image_size, channels, num_classes, task: linked from the DataModule by the CLI.
        checkpoint: path of the pre-trained ``JointDiffusion`` (DDPM or joint) checkpoint.
        timestep: diffusion step of the probed features (0 = clean image, the paper's Table 1 setting).
        encoder_weights: which of the checkpoint's weights to freeze: its EMA copy or its raw weights.
        head_dropout: dropout of the head (0.7, as the joint model's).
        classifier_augmentation: D14 leaves it open; ``off`` by default (the paper probes "clean images").
        lr, weight_decay: AdamW over the head only (D14: lr 1e-4).
        ema_decay, eval_weights: EMA of the head, evaluated like the other models (D6).
    """

    def __init__(
        self,
        image_size: int = 28,
        channels: int = 1,
        num_classes: int = 10,
        task: Task = "multiclass",
        checkpoint: str = "",
        timestep: int = 0,
        encoder_weights: Literal["ema", "raw"] = "ema",
        head_dropout: float = 0.7,
        classifier_augmentation: AugmentationMode = "off",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        ema_decay: float = 0.9999,
        eval_weights: Literal["ema", "raw"] = "ema",
    ):
        super().__init__()
        self.save_hyperparameters()
        check_optimizer_args(lr, weight_decay)
        if not checkpoint:
            raise ValueError(
                "FrozenDDPMProbe needs --model.init_args.checkpoint: a DDPM/joint checkpoint of this dataset"
            )
        if encoder_weights not in ("ema", "raw") or eval_weights not in ("ema", "raw"):
            raise ValueError("encoder_weights and eval_weights must be ema|raw")
        dpm = load_pretrained_dpm(checkpoint, image_size, channels)
        steps = dpm.hparams.diffusion_steps
        if not 0 <= timestep < steps:
            raise ValueError(f"timestep must be in 0..{steps - 1} (the DPM's diffusion steps), got {timestep}")
        self.diffusion = GaussianDiffusion(steps, dpm.hparams.beta_schedule)
        self.network = JointNetwork(frozen_encoder(dpm, encoder_weights), num_classes, head_dropout)
        self.ema = EMA(self.network, ema_decay)
        self.augment = ClassifierAugmentation(classifier_augmentation, image_size, channels)
        self.init_head_evaluation(task, num_classes)

    # the frozen encoder ---------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> FrozenDDPMProbe:
        """Lightning puts the module in train mode every epoch; the frozen encoder stays in eval mode (dropout off)."""
        super().train(mode)
        self.network.unet.eval()
        return self

    def on_train_epoch_start(self) -> None:
        self.network.unet.eval()  # re-asserted each epoch, whatever a callback may have done

    def probe_inputs(self, x0: torch.Tensor, noise_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder input and step indices at ``timestep``: ``(x0, 0)`` or ``(x_i, i)``, x_i noised with fresh noise
        (``noise_seed=None``) or with noise drawn from a generator seeded by ``noise_seed``."""
        i = self.hparams.timestep
        t = torch.full((x0.shape[0],), i, dtype=torch.long, device=x0.device)
        if i == 0:
            return x0, t
        if noise_seed is None:
            noise = torch.randn_like(x0)
        else:
            g = torch.Generator(device=x0.device).manual_seed(noise_seed)
            noise = torch.randn(x0.shape, device=x0.device, generator=g)
        return self.diffusion.q_sample(x0, t, noise), t

    @torch.no_grad()
    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Pooled features ``z`` (B, F) of the frozen encoder; no graph is built."""
        return self.network.representation(x, t)

    # training -------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        check_datamodule_matches(self, labelled_stream=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        (x0, y), stream = split_train_batch(batch)
        if stream is not None:  # semi_supervised_mode=stream: the probe trains on the full labelled batches only
            x0, y = stream
        keep = labelled_mask(y)
        if int(keep.sum()) < 2:
            return None  # no update: the head's BatchNorm needs two examples
        x, t = self.probe_inputs(self.augment(x0[keep]))
        loss = classification_loss(self.network.head(self.features(x, t), t), y[keep], self.hparams.task)
        self.log("train/classifier_loss", loss, prog_bar=True, batch_size=len(t))
        return loss

    # evaluation (HeadEvaluation's protocol) ---------------------------------------------------------------------
    def evaluate_batch(self, batch, batch_idx: int, split: str) -> None:
        x0, y = batch
        keep = labelled_mask(y)
        if not keep.any():
            return
        x, t = self.probe_inputs(x0[keep], noise_seed=batch_idx)  # eval loaders do not shuffle: fixed noise
        z = self.features(x, t)  # the encoder is frozen: the EMA copy holds the same encoder weights
        self.score_head(split, lambda net: net.head(z, t), y[keep])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        head = self.network.head.parameters()
        optimizer = torch.optim.AdamW(head, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return self.ema.follow(optimizer, self.network)
