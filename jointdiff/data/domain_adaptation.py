"""Domain-adaptation pairs (docs/design.md §8): MNIST→USPS and USPS→MNIST at 28 px gray, SVHN→MNIST with MNIST at
32 px ×3.

:func:`domain_adaptation_pair` returns the two DataModules (source, target) with matching shapes.
:class:`DomainAdaptationDataModule` is what a config trains on, one ``stage`` at a time:

- ``stage: source`` (stage 1, joint training): train = the labelled source training part;
- ``stage: target`` (stage 2, diffusion only): train = the target training part with every label hidden (−1),
  so no target label can reach a loss even if ``skip_classifier_loss`` were forgotten;
- ``stage: source_unlabelled`` (the source control of stage 2): train = the source training part, labels hidden,
  so that a drop caused by stage 2's regime shows apart from one caused by the domain;
- ``stage: simultaneous`` (one stage instead of two: the reference's SVHN→MNIST loader ``DA_SVHN_MNIST``, and the
  paper's "future work"): train = the labelled source training part followed by the target training part with
  every label hidden, trained jointly through the semi-supervised path (docs/design.md §7). ``semi_supervised_mode``
  says how the labelled source reaches the classifier: ``buffer`` (the reference's: one shuffled stream, the
  labelled images of each batch collected into full classifier batches) or ``stream`` (a full labelled source
  batch beside every batch of both domains).

In every stage ``val`` is the held-out part of the *target* training split (monitoring the adaptation curve,
decision D15; never used to select a checkpoint), or with ``val_domain: source`` of the source's (stage 1's
plateau rule watches the source, whose labels it trains on), and ``test`` is the target's official test split, the
number reported (``test_domain: source``: the source's, for the source accuracy). The run itself (stage 1, stage 2,
accuracy before/after) is :mod:`jointdiff.workflow.domain_adaptation` (``jointdiff adapt``).
"""

from __future__ import annotations

from typing import Literal

import torch

from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits
from jointdiff.data.mnist import MNISTDataModule
from jointdiff.data.semisupervised import UNLABELLED
from jointdiff.data.svhn import SVHNDataModule
from jointdiff.data.usps import USPSDataModule

Domain = Literal["mnist", "usps", "svhn"]
STAGES = ("source", "target", "source_unlabelled", "simultaneous")
PAIRS = (("mnist", "usps"), ("usps", "mnist"), ("svhn", "mnist"))


def _domain(name: str, rgb32: bool, root: str | None, **common) -> ImageDataModule:
    if name == "mnist":
        if rgb32:  # the reference's MNIST32: gray repeated to 3 channels, resized to 32
            return MNISTDataModule(image_size=32, channels=3, upscale="resize", root=root, **common)
        return MNISTDataModule(image_size=28, root=root, **common)
    if name == "usps":
        return USPSDataModule(image_size=28, root=root, **common)
    if name == "svhn":
        return SVHNDataModule(root=root, **common)
    raise ValueError(f"unknown domain {name!r}")


def domain_adaptation_pair(
    source: str,
    target: str,
    source_root: str | None = None,
    target_root: str | None = None,
    **common,
) -> tuple[ImageDataModule, ImageDataModule]:
    """(source, target) DataModules of one of the paper's pairs, at the shapes of docs/design.md §8. ``common`` goes to
    both (batch_size, val_fraction, split_seed, download, …)."""
    if (source, target) not in PAIRS:
        choices = ", ".join(f"{s}→{t}" for s, t in PAIRS)
        raise ValueError(f"unsupported pair {source}→{target}; choose one of {choices}")
    rgb32 = "svhn" in (source, target)
    return _domain(source, rgb32, source_root, **common), _domain(target, rgb32, target_root, **common)


class DomainAdaptationDataModule(ImageDataModule):
    """One stage of a domain-adaptation run on ``source``→``target`` (see the module docstring).

    ``source_root`` / ``target_root`` follow the usual resolution (explicit, else ``$JOINTDIFF_DATA_ROOT/<name>``,
    else download). ``val_fraction`` / ``split_seed`` set the held-out part of each training split; ``val_domain``
    and ``test_domain`` say whose held-out part and test split are evaluated.
    """

    name = "domain adaptation"

    def __init__(
        self,
        source: Domain = "usps",
        target: Domain = "mnist",
        stage: Literal["source", "target", "source_unlabelled", "simultaneous"] = "source",
        source_root: str | None = None,
        target_root: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = True,
        test_domain: Literal["target", "source"] = "target",
        semi_supervised_mode: Literal["buffer", "stream"] = "buffer",
        val_domain: Literal["target", "source"] = "target",
    ):
        super().__init__(None, batch_size, eval_batch_size, num_workers, val_fraction, split_seed, download)
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if semi_supervised_mode not in ("buffer", "stream"):
            raise ValueError(f"semi_supervised_mode must be buffer|stream, got {semi_supervised_mode!r}")
        if semi_supervised_mode == "stream" and stage != "simultaneous":
            raise ValueError("semi_supervised_mode=stream needs stage=simultaneous (the only stage with labelled "
                             "and unlabelled images together)")
        # set here, not through the base class, whose stream mode draws a labelled subset of one dataset
        self.semi_supervised_mode = semi_supervised_mode
        for name, value in (("test_domain", test_domain), ("val_domain", val_domain)):
            if value not in ("target", "source"):
                raise ValueError(f"{name} must be 'target' or 'source', got {value!r}")
        self.source, self.target, self.stage, self.test_domain = source, target, stage, test_domain
        self.val_domain = val_domain
        self.source_module, self.target_module = domain_adaptation_pair(
            source, target, source_root, target_root, batch_size=batch_size, val_fraction=val_fraction,
            split_seed=split_seed, download=download,
        )
        self.name = f"{source}→{target} ({stage}, test on {test_domain})"
        self.image_size = self.target_module.image_size
        self.channels = self.target_module.channels
        self.num_classes = self.target_module.num_classes

    def load_splits(self) -> Splits:
        tgt, src = self.target_module, self.source_module
        tgt.setup()
        if self.stage != "target" or "source" in (self.test_domain, self.val_domain):
            src.setup()
        if self.stage == "source":
            train = src.train_set
        elif self.stage == "simultaneous":  # labelled source first, then the target with its labels hidden
            source, target = src.train_set, tgt.train_set
            hidden = target.targets.new_full(target.targets.shape, UNLABELLED)
            train = ImageTensorDataset(torch.cat([source.images, target.images]),
                                       torch.cat([source.targets, hidden]))
            self.labelled_indices = torch.arange(len(source))  # the labelled stream of semi_supervised_mode=stream
        else:
            images = (tgt if self.stage == "target" else src).train_set
            train = ImageTensorDataset(images.images, images.targets.new_full(images.targets.shape, UNLABELLED))
        val = (src if self.val_domain == "source" else tgt).val_set
        return Splits(train, val, (src if self.test_domain == "source" else tgt).test_set)
