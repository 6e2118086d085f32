"""``JointDiffusion``: one UNet trained for denoising and, through its pooled encoder features, classification.

Objective per batch (docs/design.md §4.1): ``L = L_diff + λ·L_cls``, both reduced by means. ``λ = 0`` removes the head
and gives the vanilla DDPM of the paper's tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from jointdiff.data.semisupervised import UNLABELLED, labelled_mask, split_train_batch
from jointdiff.diffusion.conditional import joint_conditional_sample
from jointdiff.diffusion.ddim import RESPACED_ETA, ddim_sample, respaced_timesteps
from jointdiff.diffusion.engine import initial_noise
from jointdiff.diffusion.gaussian import GaussianDiffusion, eps_loss
from jointdiff.diffusion.samplers import ddpm_sample
from jointdiff.diffusion.schedules import BetaSchedule
from jointdiff.models.args import check_optimizer_args
from jointdiff.models.base import HeadEvaluation, build_unet, check_datamodule_matches
from jointdiff.models.checkpoints import (
    RecordsClass,
    check_checkpoint_fits,
    check_finite_state,
    load_state_dict_checked,
    read_checkpoint,
    upgrade_checkpoint,
)
from jointdiff.models.ema import EMA
from jointdiff.models.labelled_buffer import LabelledBuffer
from jointdiff.nn.augment import AugmentationMode, ClassifierAugmentation
from jointdiff.nn.heads import pooled_features
from jointdiff.nn.joint import JointNetwork
from jointdiff.tasks import Task, classification_loss

NoisyClassifier = Literal["off", "replace", "add"]
ClassifierRegime = Literal["none", "statistics", "labelled", "stream", "buffer"]
HeadStatistics = Literal["frozen", "target"]


def check_classifier_args(hp) -> None:
    """Reject classifier settings that contradict each other (before anything is built)."""
    if hp.classifier_weight < 0:
        raise ValueError(f"classifier_weight must be >= 0, got {hp.classifier_weight}")
    if hp.skip_classifier_loss and hp.classifier_weight == 0:
        raise ValueError("skip_classifier_loss keeps a head to evaluate: it needs classifier_weight > 0")
    if hp.noisy_classifier not in ("off", "replace", "add"):
        raise ValueError(f"noisy_classifier must be off|replace|add, got {hp.noisy_classifier!r}")
    steps = hp.noisy_timesteps
    if steps is not None:
        bad = [i for i in steps if not 0 <= i < hp.diffusion_steps]
        if not steps or bad:
            raise ValueError(f"noisy_timesteps must be a non-empty subset of 0..{hp.diffusion_steps - 1}, got "
                             f"{bad or []}")
    if hp.share_encoder_pass and hp.classifier_weight > 0 and (
        hp.noisy_classifier == "off" or steps is not None or hp.classifier_augmentation != "off"
    ):
        raise ValueError(
            "share_encoder_pass needs the classifier to see the diffusion's own x_i: set "
            "noisy_classifier=replace|add, noisy_timesteps=null and classifier_augmentation=off (got "
            f"{hp.noisy_classifier!r}, {steps}, {hp.classifier_augmentation!r}), or share_encoder_pass=false"
        )


class JointDiffusion(RecordsClass, HeadEvaluation):
    """Joint diffusion model (Deja et al. 2023).

    Data-shape arguments (``image_size``, ``channels``, ``num_classes``, ``task``) are linked from the DataModule by
    the CLI, so configs never state them twice.

    Args:
        model_channels, channel_mult, num_res_blocks, attention_downsample, num_heads, dropout, norm_groups:
            the UNet (:class:`jointdiff.nn.unet.UNet`).
        head_dropout: dropout of the classifier head (0.7 in the reference).
        diffusion_steps: T. beta_schedule: ``reference_linear`` (the authors' code, the paper's; default),
            ``ho_linear`` (Ho et al. 2020) or ``cosine`` (:mod:`jointdiff.diffusion.schedules`).
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
        skip_classifier_loss: drop ``L_cls`` while keeping (and evaluating) the head, whose parameters are frozen
            and never run in training, so its BatchNorm statistics stay as loaded: domain-adaptation stage 2
            (docs/design.md §8, the reference's ``skip_classifier_loss``).
        head_statistics: with ``skip_classifier_loss``, what the frozen head's BatchNorm statistics follow in
            training. ``frozen``: nothing (the head never runs; route a of the reference, ``skip_classifier_loss``).
            ``target``: the training images — the head runs in train mode on every (augmented) batch at step 0 with
            no loss and no gradient, as the reference's ``labelled_data_share=0`` makes it (route b). AdaBN after
            training is :func:`jointdiff.models.head_statistics.reestimate_head_statistics`.
        init_from: a jointdiff checkpoint whose ``network`` and ``ema`` weights initialise this model when it is
            set up (once), e.g. stage 1 of a domain-adaptation run. The architecture must match exactly.
            A ``--ckpt_path`` resume still overrides it.
        compile: ``torch.compile`` the UNet encoder and decoder (raw and EMA) when the model is set up. Changes how,
            not what, is computed (tested against eager); costs compile time at the first steps.
        channels_last: keep the networks' weights (hence activations) in channels-last memory format.
        share_encoder_pass: compute the noisy classifier term from the diffusion pass's own encoder outputs instead
            of a second encoder pass over the same ``x_i`` (the reference runs two). Needs
            ``noisy_classifier=replace|add``, ``noisy_timesteps=None`` and ``classifier_augmentation=off``, where the
            two passes take the same input (ignored at λ = 0: nothing to share). Only the dropout masks differ (one
            shared draw instead of two independent ones); with dropout 0 the loss and gradients are the plain
            path's (``tests/test_shared_encoder_pass.py``). Saves one encoder forward and backward per step.

    Semi-supervised batches (labels −1, docs/design.md §7), ``semi_supervised_mode=buffer`` of the DataModule (the
    reference): the diffusion loss uses every image; the labelled ones go through
    a buffer of capacity ``B`` (the batch size) so that ``L_cls`` is always computed on at least ``B`` labelled clean
    images (augmented, step 0; the noisy-classifier setting does not apply to them, as in the reference). On steps
    where the buffer is not yet full the head still runs on the batch with a zero loss, as the reference does, so
    its BatchNorm statistics follow the data and every parameter takes part in the graph (DDP).
    With ``semi_supervised_mode=stream`` every step also brings a full batch of the labelled stream: the diffusion
    loss uses the batch of all images, ``L_cls`` the labelled batch, as on fully labelled data (D4 applies, with its
    own steps and noise; no buffer).
    """

    sampler_name = "ddpm_ancestral"  # what :meth:`sample` runs, for the evaluation's provenance record

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
        beta_schedule: BetaSchedule = "reference_linear",
        classifier_weight: float = 0.001,
        noisy_classifier: NoisyClassifier = "off",
        noisy_timesteps: Sequence[int] | None = None,
        classifier_augmentation: AugmentationMode = "reference",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        ema_decay: float = 0.9999,
        eval_weights: Literal["ema", "raw"] = "ema",
        skip_classifier_loss: bool = False,
        head_statistics: HeadStatistics = "frozen",
        init_from: str | None = None,
        compile: bool = False,
        channels_last: bool = False,
        share_encoder_pass: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_optimizer_args(lr, weight_decay)
        check_classifier_args(self.hparams)
        if head_statistics not in ("frozen", "target"):
            raise ValueError(f"head_statistics must be frozen or target, got {head_statistics!r}")
        if head_statistics == "target" and not skip_classifier_loss:
            raise ValueError("head_statistics=target applies to a frozen head: set skip_classifier_loss=true")
        if noisy_timesteps is not None:
            self.register_buffer("noisy_steps", torch.tensor(list(noisy_timesteps)), persistent=False)
        self.has_head = classifier_weight > 0
        self.network = JointNetwork(build_unet(self.hparams), num_classes if self.has_head else None, head_dropout)
        self.ema = EMA(self.network, ema_decay)
        self.diffusion = GaussianDiffusion(diffusion_steps, beta_schedule)
        self.augment = ClassifierAugmentation(classifier_augmentation, image_size, channels)
        if skip_classifier_loss:
            self.network.head.requires_grad_(False)
        self.labelled_buffer = LabelledBuffer()
        self.classifier_batches = 0  # classifier terms computed so far (semi-supervised runs compute few)
        self._may_have_unlabelled = True  # narrowed in setup() from the DataModule's training labels
        self._initialised_from: str | None = None
        if self.has_head:
            self.init_head_evaluation(task, num_classes)

    # ---------------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Load ``init_from``; reject a DataModule whose images or labels do not fit this model, before any step."""
        self._load_initial_weights()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        hp = self.hparams
        check_datamodule_matches(self, labelled_stream=True)
        targets = getattr(getattr(dm, "train_set", None), "targets", None)
        if isinstance(targets, torch.Tensor):  # fully labelled data: no per-step check (it would sync the device)
            self._may_have_unlabelled = bool((targets == UNLABELLED).any())
            buffered = getattr(dm, "semi_supervised_mode", "buffer") == "buffer"
            if self._may_have_unlabelled and buffered and self.has_head and hp.noisy_classifier != "off":
                rank_zero_warn("semi-supervised data: the buffered classifier term uses clean images at step 0, "
                               f"noisy_classifier={hp.noisy_classifier!r} applies only to fully labelled batches")

    def _load_initial_weights(self) -> None:
        """``init_from``: copy the ``network`` and ``ema`` weights of a checkpoint, once per model instance."""
        path = self.hparams.init_from
        if not path or self._initialised_from == path:
            return
        if not Path(path).is_file():
            raise FileNotFoundError(f"init_from checkpoint not found: {path}")
        ckpt = read_checkpoint(path)
        if "state_dict" not in ckpt:
            raise ValueError(f"init_from={path} is not a Lightning checkpoint (no 'state_dict')")
        upgrade_checkpoint(ckpt)
        check_checkpoint_fits(self, ckpt, f"init_from={path}")
        check_finite_state(ckpt["state_dict"], f"init_from={path}")
        load_state_dict_checked(self.network, ckpt["state_dict"], path, prefix="network.")
        # the EMA with its update count: its warm-up continues where stage 1 left it (docs/fidelity.md, item 4)
        load_state_dict_checked(self.ema, ckpt["state_dict"], path, prefix="ema.")
        self._initialised_from = path
        rank_zero_info(f"JointDiffusion: network and EMA weights initialised from {path}")

    def classification_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, y, self.hparams.task)

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

    def classifier_regime(self, stream) -> ClassifierRegime:
        """Which ``L_cls`` this run trains, fixed by its configuration and data: ``none`` (no head, or
        ``skip_classifier_loss``), ``statistics`` (``skip_classifier_loss`` with ``head_statistics=target``: no
        loss, the head's BatchNorm statistics follow the batches), ``stream`` (a full labelled batch beside every
        batch, ``semi_supervised_mode: stream``), ``buffer`` (training labels may be −1: the labelled buffer of §7)
        or ``labelled`` (every image labelled: the term of decision D4 on the batch itself)."""
        if not self.has_head:
            return "none"
        if self.hparams.skip_classifier_loss:
            return "statistics" if self.hparams.head_statistics == "target" else "none"
        if stream is not None:
            return "stream"
        return "buffer" if self._may_have_unlabelled else "labelled"

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """``L = L_diff + λ·L_cls`` (docs/design.md §4.1), with the ``L_cls`` of :meth:`classifier_regime`."""
        # x0: (B, c, H, W) in [-1, 1]; y: (B,) class ids or (B, n) 0/1 attributes, −1 = unlabelled;
        # stream: the labelled stream's full batch (semi_supervised_mode=stream), else None
        (x0, y), stream = split_train_batch(batch)
        t = self.diffusion.sample_timesteps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        x_t = self.diffusion.q_sample(x0, t, noise)
        regime = self.classifier_regime(stream)
        labelled = labelled_mask(y) if regime == "buffer" else None
        if labelled is not None and bool(labelled.all()):
            regime = "labelled"  # a fully labelled batch of a partly labelled run takes the fully labelled term
        if regime == "labelled" and self.hparams.share_encoder_pass:
            eps, z_t = self.network.denoise_with_features(x_t, t)  # z_t: pooled encoder features of x_t
        else:
            eps, z_t = self.network(x_t, t), None
        loss_diff = eps_loss(eps, noise)
        match regime:
            case "none":
                loss_cls, counted = None, False
            case "statistics":
                loss_cls, counted = self.follow_head_statistics(x0), False
            case "labelled":
                loss_cls, counted = self.labelled_classifier_loss(x0, x_t, t, noise, y, z_t), True
            case "stream":
                loss_cls, counted = self.stream_classifier_loss(*stream), True
            case "buffer":
                loss_cls, counted = self.buffered_classifier_loss(x0, y, labelled)
        loss = loss_diff if loss_cls is None else loss_diff + self.hparams.classifier_weight * loss_cls
        self.log("train/diffusion_loss", loss_diff, prog_bar=True)
        if loss_cls is not None:
            self.classifier_batches += counted
            if counted:
                self.log("train/classifier_loss", loss_cls, prog_bar=True)
            self.log("train/classifier_batches", float(self.classifier_batches))
        self.log("train/loss", loss)
        return loss

    @torch.no_grad()
    def follow_head_statistics(self, x0: torch.Tensor) -> None:
        """Route b of domain adaptation's stage 2: the frozen head, in train mode, sees the (augmented) batch at
        step 0 (its BatchNorm running statistics update), and nothing is trained by it."""
        t0 = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        self.network.classify(self.augment(x0), t0)

    def stream_classifier_loss(self, x_l: torch.Tensor, y_l: torch.Tensor) -> torch.Tensor:
        """``L_cls`` of the labelled stream's batch: the fully labelled term under D4, with its own steps and noise."""
        t_l = self.diffusion.sample_timesteps(x_l.shape[0], x_l.device)
        noise_l = torch.randn_like(x_l)
        return self.labelled_classifier_loss(x_l, self.diffusion.q_sample(x_l, t_l, noise_l), t_l, noise_l, y_l)

    def labelled_classifier_loss(self, x0, x_t, t, noise, y, z_t: torch.Tensor | None = None) -> torch.Tensor:
        """``L_cls`` of a fully labelled batch under decision D4. ``z_t``: the pooled features of ``(x_t, t)`` from
        the diffusion pass (``share_encoder_pass``), which stand in for a second encoder pass over ``x_t``."""
        if z_t is None:
            x_c, t_c, y_c = self.classifier_batch(x0, x_t, t, noise, y)
            logits = self.network.classify(self.augment(x_c), t_c)
        elif self.hparams.noisy_classifier == "replace":
            logits, y_c = self.network.classify_pooled(z_t, t), y
        else:  # add: the clean half needs its own encoder pass; one head call over both halves, as the plain path
            zeros = torch.zeros_like(t)
            middle, skips = self.network.unet.encode(x0, zeros)
            z = torch.cat([pooled_features(middle, skips), z_t])
            logits, y_c = self.network.classify_pooled(z, torch.cat([zeros, t])), torch.cat([y, y])
        if self.hparams.noisy_classifier == "add":  # CE(x0) + CE(x_i): sum of the two halves' means
            return 2 * self.classification_loss(logits, y_c)
        return self.classification_loss(logits, y_c)

    def buffered_classifier_loss(self, x0, y, labelled) -> tuple[torch.Tensor, bool]:
        """Spec §7 on a partly labelled batch: ``(L_cls, True)`` once the buffer and this batch's labelled images
        reach ``B``; else ``(0·L, False)`` from a pass of the head over the whole batch (as the reference)."""
        released = self.labelled_buffer.push(x0[labelled], y[labelled], capacity=x0.shape[0])
        x_c = x0 if released is None else released[0]
        t0 = torch.zeros(x_c.shape[0], dtype=torch.long, device=x_c.device)
        logits = self.network.classify(self.augment(x_c), t0)
        if released is None:
            return 0.0 * logits.sum(), False
        return self.classification_loss(logits, released[1]), True

    # checkpoints: the training state outside the weights, so that a resumed run continues exactly -------------
    TRAIN_STATE_KEY = "jointdiff_train_state"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[self.TRAIN_STATE_KEY] = {
            "classifier_batches": self.classifier_batches,
            "labelled_buffer": self.labelled_buffer.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(self.TRAIN_STATE_KEY)
        if state is not None:  # (absent from checkpoints written before 2026-12-02: counter 0, empty buffer)
            self.classifier_batches = int(state["classifier_batches"])
            self.labelled_buffer.load_state_dict(state["labelled_buffer"], self.device)

    # evaluation ------------------------------------------------------------------------------------------------
    def evaluate_batch(self, batch, batch_idx: int, split: str) -> None:
        """The head's accuracy by HeadEvaluation's protocol (no classifier loss), and the diffusion loss."""
        x0, y = batch
        if self.has_head:
            t0 = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
            self.score_head(split, lambda net: net.classify(x0, t0), y, log_loss=False)
        # Diffusion loss of the eval weights at steps and noise seeded by the batch index (eval loaders do not
        # shuffle), so the number is comparable across epochs.
        g = torch.Generator(device=x0.device).manual_seed(batch_idx)
        t = torch.randint(0, self.diffusion.num_steps, (x0.shape[0],), device=x0.device, generator=g)
        noise = torch.randn(x0.shape, device=x0.device, generator=g)
        loss = eps_loss(self.eval_network(self.diffusion.q_sample(x0, t, noise), t), noise)
        self.log(f"{split}/diffusion_loss", loss, on_epoch=True, on_step=False, batch_size=x0.shape[0],
                 sync_dist=True)  # the mean over every rank's examples (Lightning sums values and counts)

    # sampling ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, num: int, generator: torch.Generator | None = None, use_ema: bool = True, progress: bool = False,
        clip_denoised: bool = False, steps: int | None = None, eta: float = RESPACED_ETA,
    ) -> torch.Tensor:
        """Unconditional samples, (num, c, H, W) floats: all T ancestral steps, or η-DDIM on ``steps`` respaced
        steps. ``clip_denoised=False`` is the reference's sampler (x̂0 not clamped; an under-trained model's samples
        can leave [-1, 1] far behind)."""
        net = self.ema.module if use_ema else self.network
        was_training = net.training
        net.eval()
        hp = self.hparams
        shape = (num, hp.channels, hp.image_size, hp.image_size)
        if steps is None or steps == self.diffusion.num_steps:
            x = ddpm_sample(net, self.diffusion, shape, device=self.device, generator=generator, progress=progress,
                            clip_denoised=clip_denoised)
        else:
            x_T = initial_noise(shape, generator, self.device)
            x = ddim_sample(net, self.diffusion, x_T, respaced_timesteps(self.diffusion.num_steps, steps), eta=eta,
                            generator=generator, progress=progress, clip_denoised=clip_denoised)
        net.train(was_training)
        return x

    @torch.no_grad()
    def conditional_sample(
        self, targets: torch.Tensor, alpha: float, direction: int = 1, generator: torch.Generator | None = None,
        use_ema: bool = True, progress: bool = False, clip_denoised: bool = False, steps: int | None = None,
        eta: float = RESPACED_ETA,
    ) -> torch.Tensor:
        """Samples of ``targets`` ((B,) class ids or (B, n) attribute rows) with the joint sampler (Algorithm 1),
        (B, c, H, W) floats: all T steps, or η-DDIM on ``steps`` respaced steps (α per step as on the full grid)."""
        if not self.has_head:
            raise ValueError("conditional sampling needs a head: this model was trained with classifier_weight=0")
        net = self.ema.module if use_ema else self.network
        was_training = net.training
        net.eval()
        hp = self.hparams
        shape = (len(targets), hp.channels, hp.image_size, hp.image_size)
        x = joint_conditional_sample(
            net, self.diffusion, shape, targets, alpha, direction=direction, task=hp.task, device=self.device,
            generator=generator, clip_denoised=clip_denoised, progress=progress,
            timesteps=None if steps in (None, self.diffusion.num_steps)
            else respaced_timesteps(self.diffusion.num_steps, steps), eta=eta,
        )
        net.train(was_training)
        return x

    def configure_model(self) -> None:
        """Speed options, applied once after the model is on its device; they leave the numbers unchanged
        (``tests/test_speed_equivalence.py``)."""
        if getattr(self, "_speed_options_applied", False):
            return
        nets = (self.network, self.ema.module)
        if self.hparams.channels_last:
            for net in nets:
                net.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            for unet in (net.unet for net in nets):
                # instance attributes: the module's state_dict keys stay as they are (checkpoints unaffected)
                unet.encode = torch.compile(unet.encode)
                unet.decode = torch.compile(unet.decode)
        self._speed_options_applied = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.network.parameters())
        # fused AdamW: one kernel for all parameters on CUDA; on CPU torch's default (foreach) is used
        fused = True if params and params[0].is_cuda else None
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused)
        return self.ema.follow(optimizer, self.network)
