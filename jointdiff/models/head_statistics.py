"""The classifier head's BatchNorm statistics after domain adaptation's stage 2 (docs/design.md §8).

Stage 2 trains the encoder with the diffusion loss alone while the head is frozen; the head's BatchNorm layers then
normalise the adapted encoder's features with statistics of the *source* (``head_statistics: frozen``, the
reference's ``skip_classifier_loss``). The reference's other route (``labelled_data_share=0``) runs the head in
train mode on every target batch with a zero loss, so the statistics follow the target (``head_statistics:
target``, in :class:`~jointdiff.models.JointDiffusion`'s training step). This module holds the third, our departure:
AdaBN (Li et al. 2016) — after training, re-estimate the statistics on unlabelled target images with no gradient,
the head's weights untouched. It applies to any checkpoint, so it costs one pass over the images.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from jointdiff.nn.joint import JointNetwork


def head_batchnorms(network: JointNetwork) -> list[nn.BatchNorm1d]:
    return [m for m in network.head.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_head_statistics(network: JointNetwork, batches: Iterable[torch.Tensor]) -> int:
    """AdaBN: replace the running mean and variance of every BatchNorm layer of ``network``'s head by their
    cumulative average over ``batches`` (clean images in [-1, 1], (B, c, H, W); the head's input as at test time:
    step 0, no augmentation, dropout off). Each layer's statistics are then the mean over batches of the batch
    means and of the (unbiased) batch variances, BatchNorm's ``momentum=None`` rule. Returns the images used."""
    if network.head is None:
        raise ValueError("the network has no classifier head (classifier_weight=0)")
    norms = head_batchnorms(network)
    was_training = network.training
    network.eval()  # encoder, dropout and everything else as at test time ...
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()  # ... except the statistics being estimated
    seen = 0
    try:
        for x in batches:
            x = x.to(next(network.parameters()).device)
            network.classify(x, torch.zeros(len(x), dtype=torch.long, device=x.device))
            seen += len(x)
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        network.train(was_training)
    if seen == 0:
        raise ValueError("no images to re-estimate the head's BatchNorm statistics from")
    return seen
