"""Joint conditional sampling ("Algorithm 1", docs/design.md §5.1) and visual counterfactuals (docs/design.md §6).

At every reverse step ``i = T−1 … 0`` the encoder outputs of the current noisy image, the middle output ``m`` and
every skip ``e_k`` (all the decoder consumes), are moved by one gradient step of the summed target-class loss
computed through the pooled-feature head, and then decoded::

    (m, e_1…e_K) = Enc(x_i, i)                          # live graph, model in eval mode
    ℓ = Σ_b CE(g(z(m, e), i)_b, y_b)                      # Σ BCE-with-logits for multi-label targets
    m ← m + d·α_i·∂ℓ/∂m ;  e_k ← e_k + d·α_i·∂ℓ/∂e_k     # total derivatives, all updated at once
    ε̂ = Dec(m, e, i) ;  x_{i−1} = μ(x_i, ε̂) + [i>0]·σ_i·ξ

``d = +1`` (gradient *ascent* on the target-class CE) is the reference's direction (D11). Per step the cost is one
encoder pass, one backward pass through head and encoder (``torch.autograd.grad`` w.r.t. ``m`` and the skips, so
no parameter gradients are formed) and one decoder pass without a graph. The loop is the engine's
(:mod:`jointdiff.diffusion.engine`) with :class:`ClassSteering` as its feature-steering hook. The reference runs it
over all T ancestral steps only (D22); here it also runs η-DDIM on a respaced grid (``timesteps``), with the rule
for α per step stated in :class:`ClassSteering` (a departure: not in the reference or the paper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from jointdiff.diffusion.engine import Noise, Step, full_grid, initial_noise, reverse_process
from jointdiff.diffusion.gaussian import GaussianDiffusion
from jointdiff.nn.joint import JointNetwork
from jointdiff.tasks import check_targets, classification_loss

Alpha = float | Sequence[float] | torch.Tensor
StepCallback = Callable[[int, torch.Tensor], None]  # (step index i, head logits (B, n) at that step)


def alpha_schedule(alpha: Alpha, num_steps: int) -> list[float]:
    """Step size per step index ``0…T−1``: a constant, or one value per step (``alpha[i]`` is used at step ``i``)."""
    if isinstance(alpha, (int, float)):
        values = [float(alpha)] * num_steps
    else:
        values = [float(a) for a in torch.as_tensor(alpha, dtype=torch.float64).flatten().tolist()]
        if len(values) != num_steps:
            raise ValueError(f"a per-step alpha needs one value per diffusion step ({num_steps}), got {len(values)}")
    bad = [a for a in values if not a >= 0 or a == float("inf")]
    if bad:
        raise ValueError(f"alpha must be finite and >= 0, got {bad[0]} (flip the update with direction=-1 instead)")
    return values


def num_outputs(network: JointNetwork) -> int:
    if network.head is None:
        raise ValueError("joint conditional sampling needs a model with a classifier head "
                         "(a JointDiffusion trained with classifier_weight > 0, ideally with noisy_classifier)")
    return network.head.layers[-1].out_features


def _check_network(network: JointNetwork) -> None:
    training = [name or "<root>" for name, m in network.named_modules() if m.training]
    if training:
        raise ValueError(f"the network must be in eval mode for sampling (BatchNorm running statistics, no dropout); "
                         f"call .eval() first (in training mode: {', '.join(training[:3])})")


def steer_features(
    network: JointNetwork,
    middle: torch.Tensor,
    skips: list[torch.Tensor],
    t: torch.Tensor,
    targets: torch.Tensor,
    step_size: float,
    task: str = "multiclass",
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """One backward pass from the head's target loss to encoder outputs that carry a live graph:
    ``(m + s·∂ℓ/∂m, [e_k + s·∂ℓ/∂e_k], logits)``, all detached, ``s = d·α``. The gradients are total derivatives:
    ``∂ℓ/∂e_k`` includes the paths through the later encoder blocks and ``m``, not only ``GAP(e_k)``."""
    with torch.enable_grad():
        logits = network.classify_features(middle, skips, t)
        grads = torch.autograd.grad(classification_loss(logits, targets, task, reduction="sum"), [middle, *skips])
    middle = (middle + step_size * grads[0]).detach()
    skips = [(e + step_size * g).detach() for e, g in zip(skips, grads[1:], strict=True)]
    return middle, skips, logits.detach()


RespacedAlpha = Literal["same", "stride"]


class ClassSteering:
    """Algorithm 1 as the engine's feature-steering hook: at each step, move the encoder outputs one gradient step
    of size ``d·α_step`` on the head's target-class loss; the head's logits are left on the step (``step.logits``).

    On the full grid ``α_step = α_i``. On a respaced grid (a step from the level of ``τ_k`` to ``τ_{k−1}``):

    - ``same`` (default): ``α_step = α_{τ_k}``. The edit changes ε̂, i.e. the score the sampler integrates; a
      coarser integrator of the same modified score targets the same distribution, so the edit per network
      evaluation stays what it is on the full grid.
    - ``stride``: ``α_step = Σ_{i=τ_{k−1}+1}^{τ_k} α_i`` (α times the stride for a constant α): as many pushes as the
      full chain makes over the interval, applied at once. A control for the rule above.
    """

    def __init__(self, network: JointNetwork, targets: torch.Tensor, alphas: list[float], direction: int = 1,
                 task: str = "multiclass", respaced_alpha: RespacedAlpha = "same"):
        if respaced_alpha not in ("same", "stride"):
            raise ValueError(f"respaced_alpha must be 'same' or 'stride', got {respaced_alpha!r}")
        self.network, self.targets, self.alphas = network, targets, alphas
        self.direction, self.task, self.respaced_alpha = direction, task, respaced_alpha

    def alpha_at(self, step: Step) -> float:
        if self.respaced_alpha == "stride":
            return sum(self.alphas[step.prev + 1 : step.index + 1])
        return self.alphas[step.index]

    def __call__(self, features, step: Step):
        middle, skips = features
        middle, skips, step.logits = steer_features(self.network, middle, skips, step.t, self.targets,
                                                    self.direction * self.alpha_at(step), self.task)
        return middle, skips


def joint_conditional_denoise(
    network: JointNetwork,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    start_step: int,
    targets: torch.Tensor,
    alpha: Alpha,
    *,
    direction: int = 1,
    task: str = "multiclass",
    generator: torch.Generator | Noise | None = None,
    clip_denoised: bool = False,
    progress: bool = False,
    on_step: StepCallback | None = None,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    eta: float = 0.0,
    respaced_alpha: RespacedAlpha = "same",
) -> torch.Tensor:
    """Conditional reverse process from ``x`` at the noise level of step ``start_step`` down to a clean sample.

    Default: every step ``start_step…0`` with the ancestral update; the step noise ξ is drawn from ``generator``
    once per step, in the order :func:`ddpm_sample` draws it, so α=0 reproduces unconditional sampling bit for bit.
    ``timesteps`` (ascending, ending at ``start_step``) runs η-DDIM on that grid instead, with α per step by
    ``respaced_alpha`` (:class:`ClassSteering`). ``start_step = −1`` returns ``x`` unchanged.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 (reference: ascent on the target CE) or -1, got {direction}")
    if not -1 <= start_step < diffusion.num_steps:
        raise ValueError(f"start_step must be in -1..{diffusion.num_steps - 1}, got {start_step}")
    _check_network(network)
    alphas = alpha_schedule(alpha, diffusion.num_steps)
    targets = check_targets(targets.to(x.device), num_outputs(network), task, batch=x.shape[0])
    if start_step < 0:
        return x
    if timesteps is not None and int(torch.as_tensor(timesteps).flatten()[-1]) != start_step:
        raise ValueError(f"timesteps must end at start_step ({start_step})")
    steer = ClassSteering(network, targets, alphas, direction, task, respaced_alpha)
    trace = None if on_step is None else (lambda step: on_step(step.index, step.logits))
    return reverse_process(
        network, diffusion, x, full_grid(diffusion, start_step) if timesteps is None else timesteps,
        update="ddpm" if timesteps is None else "ddim", eta=eta, steer=steer, on_step=trace, noise=generator,
        clip_denoised=clip_denoised, progress=progress, desc="conditional sampling",
    )


def joint_conditional_sample(
    network: JointNetwork,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    targets: torch.Tensor,
    alpha: Alpha,
    *,
    direction: int = 1,
    task: str = "multiclass",
    device: torch.device | str = "cpu",
    generator: torch.Generator | Noise | None = None,
    clip_denoised: bool = False,
    progress: bool = False,
    on_step: StepCallback | None = None,
    timesteps: Sequence[int] | torch.Tensor | None = None,
    eta: float = 0.0,
    respaced_alpha: RespacedAlpha = "same",
) -> torch.Tensor:
    """Samples of the target classes (multiclass: (B,) ids; multilabel: (B, n) 0/1 vectors) from
    ``x_{T−1} ~ N(0, I)`` drawn from ``generator``: all T ancestral steps, or η-DDIM on ``timesteps`` (ascending,
    ending at T−1, e.g. :func:`~jointdiff.diffusion.ddim.respaced_timesteps`). Returns unclipped floats."""
    x = initial_noise(shape, generator, device)
    return joint_conditional_denoise(
        network, diffusion, x, diffusion.num_steps - 1, targets, alpha, direction=direction, task=task,
        generator=generator, clip_denoised=clip_denoised, progress=progress, on_step=on_step, timesteps=timesteps,
        eta=eta, respaced_alpha=respaced_alpha,
    )


def noise_steps(noise_fraction: float, num_steps: int) -> int:
    """Reverse steps of a counterfactual: ``n = round(f·T)``; the image is noised to step ``n−1`` and denoised in
    n steps (D18 says ``i* = round(0.2·T)``; we start one index lower so that f=1 is the full chain from
    ``x_{T−1}`` and f=0 is no noise at all)."""
    if not 0.0 <= noise_fraction <= 1.0:
        raise ValueError(f"noise fraction must be in [0, 1], got {noise_fraction}")
    return round(noise_fraction * num_steps)


def counterfactual(
    network: JointNetwork,
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    targets: torch.Tensor,
    alpha: Alpha,
    noise_fraction: float = 0.2,
    *,
    direction: int = 1,
    task: str = "multiclass",
    generator: torch.Generator | Noise | None = None,
    progress: bool = False,
    on_step: StepCallback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Visual counterfactual of real images (docs/design.md §6): diffuse ``x0`` forward ``n = round(f·T)`` steps with
    ``q(x_{n−1} | x0)``, then run the conditional sampler toward ``targets`` from there.

    Returns ``(noised, counterfactual)``, both (B, c, H, W); f=0 returns copies of ``x0``. The forward noise is
    drawn first from ``generator``, then the step noise.
    """
    n = noise_steps(noise_fraction, diffusion.num_steps)
    alpha_schedule(alpha, diffusion.num_steps)  # reject bad arguments even when there is nothing to denoise
    check_targets(targets, num_outputs(network), task, batch=x0.shape[0])
    if n == 0:
        return x0.clone(), x0.clone()
    t = torch.full((x0.shape[0],), n - 1, device=x0.device, dtype=torch.long)
    noised = diffusion.q_sample(x0, t, initial_noise(x0.shape, generator, x0.device))
    cf = joint_conditional_denoise(
        network, diffusion, noised, n - 1, targets, alpha, direction=direction, task=task, generator=generator,
        progress=progress, on_step=on_step,
    )
    return noised, cf
