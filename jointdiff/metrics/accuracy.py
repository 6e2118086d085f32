"""Classification accuracy (multi-class, multi-label per attribute and mean) and the class hit rate of samples.

Accuracy is torchmetrics' (synced across processes). With several processes the evaluation loaders must not
repeat examples (``DistributedSampler`` pads ranks to equal length by duplicating some): ``ImageDataModule``
serves val/test with Lightning's ``UnrepeatedDistributedSampler``, so the reported accuracy is the one-process value.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MultilabelAccuracy

from jointdiff.metrics.extractors import ClassifierFeatures, Convention, check_convention
from jointdiff.tasks import check_task, hits


def accuracy_metric(task: str, num_classes: int) -> Metric:
    """The accuracy every model reports: top-1 (multiclass) or the mean per-attribute accuracy, logit > 0 ⇒ 1
    (multilabel, docs/design.md §10)."""
    if check_task(task) == "multilabel":
        return MultilabelAccuracy(num_labels=num_classes, average="macro")
    return MulticlassAccuracy(num_classes=num_classes, average="micro")


def accuracy_metrics(task: str, num_classes: int) -> MetricCollection:
    """``acc`` (:func:`accuracy_metric`); multilabel adds ``acc_per_attribute`` ((num_classes,) tensor)."""
    metrics = {"acc": accuracy_metric(task, num_classes)}
    if task == "multilabel":
        metrics["acc_per_attribute"] = MultilabelAccuracy(num_labels=num_classes, average="none")
    return MetricCollection(metrics)


class ClassHitRate(Metric):
    """Share of generated samples that an independent classifier assigns to the class they were generated for.

    ``update(images, requested)`` runs ``classifier`` (a :class:`ClassifierFeatures`, ideally a stand-alone
    classifier, not the evaluated model's own head) on the images. ``compute()`` returns ``{"hit_rate": overall,
    "per_class": (n,) hit rate per requested class (multi-class) or per attribute (multi-label)}``; classes never
    requested give NaN.
    """

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, classifier: ClassifierFeatures, convention: Convention = "standard", **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.convention = check_convention(convention)
        self.task = classifier.task
        n = classifier.num_classes
        self.add_state("hit_count", torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("request_count", torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, requested: torch.Tensor) -> None:
        logits = self.classifier.logits(images, self.convention)
        hit = hits(logits, requested, self.task)
        n = self.hit_count.shape[0]
        if self.task == "multiclass":
            if int(requested.min()) < 0 or int(requested.max()) >= n:
                raise ValueError(f"requested classes must be in 0..{n - 1}")
            self.hit_count += torch.bincount(requested[hit], minlength=n)
            self.request_count += torch.bincount(requested, minlength=n)
        else:
            self.hit_count += hit.sum(dim=0)
            self.request_count += hit.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        total = int(self.request_count.sum())
        if total == 0:
            raise RuntimeError("ClassHitRate: no samples were given")
        per_class = self.hit_count.double() / self.request_count.double()  # NaN where never requested
        return {"hit_rate": self.hit_count.sum().double() / total, "per_class": per_class}
