"""PDAE (Zhang, Zhao & Lin 2022): representation learning by filling a frozen pre-trained DPM's posterior-mean gap.

A semantic encoder ``z = E(x0)`` and a gradient estimator ``G(x_t, z, t)`` are trained so that the shifted noise
prediction ``ε̂ = ε_θ(x_t, t) − c_t·G`` of the frozen DPM ``ε_θ`` explains ``x0`` better (docs/design.md §13.2)::

    L = E_{x0, t, ε} [ λ_t · mean_pixels( (ε − ε_θ(x_t, t) + c_t·G(x_t, E(x0), t))² ) ]
    λ_t = SNR_t^γ / (1 + SNR_t),   c_t = √α_t·(1 − ᾱ_{t−1}) / √(1 − ᾱ_t)

The pre-trained DPM is any ``JointDiffusion`` checkpoint of this project (a DDPM, or a joint model whose head is
ignored); its schedule (T, β) is PDAE's. Inference (reconstruction, interpolation, manipulation, linear probe of
``z``) is in :mod:`jointdiff.models.pdae_inference`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import lightning as L
import torch

from jointdiff.diffusion.ddim import ddim_invert, ddim_sample, respaced_timesteps
from jointdiff.diffusion.gaussian import GaussianDiffusion, extract
from jointdiff.models.args import check_optimizer_args
from jointdiff.models.base import build_unet, check_datamodule_matches
from jointdiff.models.checkpoints import RecordsClass
from jointdiff.models.ema import EMA
from jointdiff.models.pretrained import load_pretrained_dpm
from jointdiff.nn.pdae import GradientEstimator, PDAENetwork, SemanticEncoder
from jointdiff.tasks import Task

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DDIMShift = Literal["sqrt_one_minus_alpha_bar", "c_t"]


# pure schedule functions (float64 in, float64 out) -------------------------------------------------------------
def pdae_loss_weight(alphas_cumprod: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """``λ_t = (1/(1+SNR_t))^(1−γ)·(SNR_t/(1+SNR_t))^γ = (1−ᾱ_t)^(1−γ)·ᾱ_t^γ`` (docs/design.md §13.2), raw."""
    return (1.0 - alphas_cumprod) ** (1.0 - gamma) * alphas_cumprod**gamma


def shift_coefficient(betas: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``c_t = √α_t·(1−ᾱ_{t−1})/√(1−ᾱ_t)`` with ``ᾱ_{−1} = 1`` (so ``c_0 = 0``): a mean shift ``Σ_t·G`` with
    ``Σ_t = β̃_t`` is the noise shift ``−c_t·G``."""
    prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return (1.0 - betas).sqrt() * (1.0 - prev) / (1.0 - alphas_cumprod).sqrt()


def clip_eps_fn(eps_fn: EpsFn, diffusion: GaussianDiffusion) -> EpsFn:
    """Wrap ``eps_fn`` so that the implied ``x̂0`` is clamped to [-1, 1] and ``ε̃`` re-derived from it:
    ``ε̃ = (x_t − √ᾱ_t·clamp(x̂0))/√(1−ᾱ_t)``. A DDIM step (or inversion step) taken with ``ε̃`` is the reference's
    clamped step; used for PDAE's inversion, whose sampler has no clamping option (docs/design.md §13.3, D30)."""

    def clipped(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_fn(x, t)
        ab = extract(diffusion.alphas_cumprod, t, x.ndim)
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    return clipped


class PDAE(RecordsClass, L.LightningModule):
    """Pre-trained DPM AutoEncoding on a frozen ``JointDiffusion`` checkpoint of this project.

    The DPM's UNet (``base``) stays frozen and in eval mode for the whole run (re-asserted whenever Lightning
    switches modes and at every epoch start); its weights are part of this module's checkpoints, and the DPM file
    is read again on reload only for its architecture. ``network`` (encoder + gradient estimator) is trained with
    Adam; ``ema.module`` is its EMA copy, used for validation, test and all inference.

    Args:
        image_size, channels, num_classes, task: linked from the DataModule by the CLI (the DPM must have been
            trained on the same image shape; labels are not used for training).
        pretrained: path of the pre-trained ``JointDiffusion`` checkpoint (a DDPM of this dataset).
        base_weights: which of its weights to freeze: its EMA copy (as the reference loads ``ema_denoise_fn``) or raw.
        z_dim: latent size (512 in the paper).
        encoder_channels, encoder_heads, encoder_norm_groups: the semantic encoder
            (:class:`~jointdiff.nn.pdae.SemanticEncoder`; docs/design.md §13.1: 64, 128, 128, 128; 4 heads; 32 groups).
        gamma: λ_t's γ (0.1).
        hflip: random horizontal flips of the encoder's and the loss's x0 (D32: off for digits and
            Fashion-MNIST, on for CIFAR/CelebA).
        lr: Adam, no weight decay (docs/design.md §13.2: 1e-4).
        ema_decay: EMA of the trainable parts (0.9999 full runs, 0.999 short runs, D31). Our departure:
            the EMA warms up like the rest of the project (``min(decay, (1+k)/(10+k))``), the reference does not.
    """

    def __init__(
        self,
        image_size: int = 28,
        channels: int = 1,
        num_classes: int = 10,
        task: Task = "multiclass",
        pretrained: str = "",
        base_weights: Literal["ema", "raw"] = "ema",
        z_dim: int = 512,
        encoder_channels: Sequence[int] = (64, 128, 128, 128),
        encoder_heads: int = 4,
        encoder_norm_groups: int = 32,
        gamma: float = 0.1,
        hflip: bool = False,
        lr: float = 1e-4,
        ema_decay: float = 0.9999,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_optimizer_args(lr)
        if not pretrained:
            raise ValueError(
                "PDAE needs --model.init_args.pretrained: a DDPM checkpoint of this dataset (from jointdiff fit)"
            )
        if base_weights not in ("ema", "raw"):
            raise ValueError(f"base_weights must be ema|raw, got {base_weights!r}")
        dpm = load_pretrained_dpm(pretrained, image_size, channels)
        hp = dpm.hparams
        self.base = build_unet(hp)
        self.base.load_state_dict((dpm.ema.module if base_weights == "ema" else dpm.network).unet.state_dict())
        self.base.requires_grad_(False).eval()
        self.diffusion = GaussianDiffusion(hp.diffusion_steps, hp.beta_schedule)
        tables = self.diffusion.tables64
        self.register_buffer("loss_weight", pdae_loss_weight(tables["alphas_cumprod"], gamma).float(), persistent=False)
        self.register_buffer(
            "shift_coef", shift_coefficient(tables["betas"], tables["alphas_cumprod"]).float(), persistent=False
        )
        encoder = SemanticEncoder(image_size, channels, z_dim, encoder_channels, encoder_heads, encoder_norm_groups)
        self.network = PDAENetwork(encoder, GradientEstimator(self.base, z_dim))
        self.ema = EMA(self.network, ema_decay)

    # the frozen DPM ---------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> PDAE:
        """Lightning switches the module to train mode every epoch; the frozen DPM stays in eval mode (dropout off)."""
        super().train(mode)
        self.base.eval()
        return self

    def on_train_epoch_start(self) -> None:
        self.base.eval()  # re-asserted every epoch

    @torch.no_grad()
    def base_pass(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """One frozen pass: ``(ε_θ(x_t, t), skips, e_t)``; the skips and time embedding also feed ``G``."""
        middle, skips = self.base.encode(x_t, t)
        return self.base.decode(middle, skips, t), skips, self.base.embed(t)

    # training ---------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        check_datamodule_matches(self)

    def pdae_loss(
        self, net: PDAENetwork, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, L_base)``: the weighted loss of the shifted prediction and, for reference, of the bare DPM (G = 0)."""
        x_t = self.diffusion.q_sample(x0, t, noise)
        eps_theta, skips, emb = self.base_pass(x_t, t)
        g = net.estimator(skips, emb, net.encoder(x0))
        w = extract(self.loss_weight, t, x0.ndim)
        c = extract(self.shift_coef, t, x0.ndim)
        loss = (w * (noise - eps_theta + c * g) ** 2).mean()
        base = (w * (noise - eps_theta) ** 2).mean()
        return loss, base

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0 = batch[0]  # labels are not used
        if self.hparams.hflip:
            flip = torch.rand(x0.shape[0], device=x0.device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = self.diffusion.sample_timesteps(x0.shape[0], x0.device)
        loss, base = self.pdae_loss(self.network, x0, t, torch.randn_like(x0))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/loss_base", base)
        return loss

    def _evaluate(self, batch, batch_idx: int, split: str) -> None:
        x0 = batch[0]
        g = torch.Generator(device=x0.device).manual_seed(batch_idx)  # eval loaders do not shuffle: fixed draws
        t = torch.randint(0, self.diffusion.num_steps, (x0.shape[0],), device=x0.device, generator=g)
        noise = torch.randn(x0.shape, device=x0.device, generator=g)
        loss, base = self.pdae_loss(self.ema.module, x0, t, noise)
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=x0.shape[0], sync_dist=True)
        # the frozen DPM alone: the gap to close
        self.log(f"{split}/loss_base", base, batch_size=x0.shape[0], sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.ema.follow(torch.optim.Adam(self.network.parameters(), lr=self.hparams.lr), self.network)

    # inference (EMA weights) -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        """``z = E(x0)`` with the EMA encoder, (B, z_dim)."""
        return self.ema.module.encoder(x0)

    def base_eps_fn(self) -> EpsFn:
        """The bare pre-trained DPM ``ε_θ(x_t, t)`` (the baseline: DDIM without a latent)."""
        return self.base

    def eps_fn(self, z: torch.Tensor, shift: DDIMShift = "sqrt_one_minus_alpha_bar") -> EpsFn:
        """``ε̂(x_t, t) = ε_θ(x_t, t) − k_t·G(x_t, z, t)`` for DDIM, with the EMA networks.

        ``k_t = √(1−ᾱ_t)`` (the reference's DDIM and inversion, D28) or ``c_t`` (the training
        coefficient; D28's other choice). ``z``: (B, z_dim), one per image of the batch.
        """
        if shift not in ("sqrt_one_minus_alpha_bar", "c_t"):
            raise ValueError(f"shift must be sqrt_one_minus_alpha_bar|c_t, got {shift!r}")
        table = self.diffusion.sqrt_one_minus_alphas_cumprod if shift == "sqrt_one_minus_alpha_bar" else self.shift_coef
        estimator = self.ema.module.estimator

        @torch.no_grad()
        def shifted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            eps_theta, skips, emb = self.base_pass(x, t)
            return eps_theta - extract(table, t, x.ndim) * estimator(skips, emb, z)

        return shifted

    def ddim_timesteps(self, steps: int) -> torch.Tensor:
        return respaced_timesteps(self.diffusion.num_steps, steps)

    def invert(
        self, eps_fn: EpsFn, x0: torch.Tensor, steps: int, clip: bool = True, progress: bool = False
    ) -> torch.Tensor:
        """Deterministic DDIM inversion of ``x0`` to its stochastic code ``x_T`` in ``steps`` steps."""
        fn = clip_eps_fn(eps_fn, self.diffusion) if clip else eps_fn
        return ddim_invert(fn, self.diffusion, x0, self.ddim_timesteps(steps), progress=progress)

    def decode(
        self, eps_fn: EpsFn, x_T: torch.Tensor, steps: int, clip: bool = True, progress: bool = False
    ) -> torch.Tensor:
        """Deterministic (η = 0) DDIM from ``x_T`` in ``steps`` steps, x̂0 clamped to [-1, 1] when ``clip``."""
        return ddim_sample(eps_fn, self.diffusion, x_T, self.ddim_timesteps(steps), eta=0.0, progress=progress,
                           clip_denoised=clip)
