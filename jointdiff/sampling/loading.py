"""Loading what the samplers run: the diffusion model, the network to sample with, and the classifiers that
steer (guidance) or judge (hit rates) its samples."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from jointdiff.models.checkpoints import load_model

Weights = Literal["ema", "raw", "model"]


def load_diffusion_model(checkpoint: str, device: str = "cpu"):
    """A :class:`~jointdiff.models.joint.JointDiffusion` (joint model or, with λ=0, vanilla DDPM) in eval mode."""
    from jointdiff.models.joint import JointDiffusion

    return load_model(checkpoint, expected=JointDiffusion, map_location=device).to(device)


def load_on_processes(checkpoint: str, device: str = "cpu", devices: int = 1, num_nodes: int = 1):
    """``(fabric, model)``: launch the processes a command shares its work over (None for one process,
    :func:`jointdiff.sampling.distributed.launch`) and load the model on this process's device."""
    from jointdiff.sampling.distributed import launch

    fabric = launch(device, devices, num_nodes)
    return fabric, load_diffusion_model(checkpoint, str(fabric.device) if fabric is not None else device)


def pick_network(model, weights: Weights = "model"):
    """The network to sample with: ``ema``, ``raw`` or ``model`` (the checkpoint's own ``eval_weights``)."""
    if weights == "model":
        net = model.eval_network
    elif weights == "ema":
        net = model.ema.module
    elif weights == "raw":
        net = model.network
    else:
        raise ValueError(f"weights must be ema, raw or model, got {weights!r}")
    return net.eval()


def noisy_logits_fn(checkpoint: str, device: str = "cpu") -> tuple[Callable, int, str, object]:
    """``(logits_fn(x_t, t), num_classes, task, module)`` of a noise-aware classifier checkpoint for guidance: a
    :class:`~jointdiff.models.noise_aware.NoiseAwareClassifier` (its ``network``), or any project model with a
    classifier head that was trained on noisy inputs (its ``eval_network.classify``)."""
    module = load_model(checkpoint, map_location=device).to(device)
    hp = module.hparams
    if type(module).__name__ == "NoiseAwareClassifier":
        fn = module.network.eval()
    elif hasattr(module, "eval_network") and getattr(module.eval_network, "head", None) is not None:
        fn = module.eval_network.eval().classify
        if hp.get("noisy_classifier", "off") == "off":
            print(f"warning: {checkpoint} was trained on clean images only (noisy_classifier=off); its gradients on "
                  "noisy x_t are out of distribution for guidance")
    else:
        raise ValueError(f"{checkpoint} holds a {type(module).__name__}, not a classifier usable for guidance "
                         "(train a NoiseAwareClassifier)")
    return fn, int(hp["num_classes"]), hp.get("task", "multiclass"), module


def judge_logits_fn(checkpoint: str, device: str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """An independent classifier's logits on clean images (step 0), e.g. a StandaloneClassifier checkpoint."""
    from jointdiff.models.extractors import load_classifier_features

    features = load_classifier_features(checkpoint).to(device)
    return lambda x: features.logits(x)


