"""Semi-supervised labels (seeded subsets, class balance, −1 for the rest) and the labelled-example buffer of the
joint model (docs/design.md §7): the classifier term is released exactly when B labelled examples have accumulated,
it is the plain cross-entropy of those examples, and the steps in between contribute zero gradient."""

from __future__ import annotations

import fixtures as fx  # tests/ is on sys.path (rootdir conftest, no package)
import lightning as L
import pytest
import torch
import torch.nn.functional as F

from jointdiff.data import MNISTDataModule
from jointdiff.data.semisupervised import UNLABELLED, hide_labels, labelled_mask, select_labelled
from jointdiff.models import JointDiffusion
from jointdiff.models.labelled_buffer import LabelledBuffer

TINY = dict(model_channels=16, norm_groups=8, num_res_blocks=1, attention_downsample=[], diffusion_steps=10,
            classifier_augmentation="off")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JOINTDIFF_CACHE", str(tmp_path / "cache"))


pytestmark = pytest.mark.usefixtures("one_thread")


def _targets(n=1000, k=10, seed=0):
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


# label selection -----------------------------------------------------------------------------------------------
def test_uniform_fraction_is_seeded_and_sized():
    y = _targets()
    a = select_labelled(y, 10, 0.05, None, seed=3)
    assert len(a) == 50 and len(set(a.tolist())) == 50 and torch.equal(a, a.sort().values)
    assert torch.equal(a, select_labelled(y, 10, 0.05, None, seed=3))
    assert not torch.equal(a, select_labelled(y, 10, 0.05, None, seed=4))
    assert len(select_labelled(y, 10, 0.0123, None, seed=0)) == 12  # ⌊f·N⌋ as the reference
    assert torch.equal(select_labelled(y, 10, 1.0, None, seed=0), torch.arange(1000))


def test_class_balanced_fraction_and_count_per_class():
    y = torch.cat([torch.zeros(700), torch.ones(200), torch.full((100,), 2)]).long()  # unbalanced classes
    idx = select_labelled(y, 3, 0.09, None, seed=0, class_balanced=True)
    assert torch.bincount(y[idx], minlength=3).tolist() == [30, 30, 30]  # ⌊0.09·1000/3⌋ each
    idx = select_labelled(y, 3, None, 7, seed=1)
    assert torch.bincount(y[idx], minlength=3).tolist() == [7, 7, 7]
    uniform = select_labelled(y, 3, 0.09, None, seed=0)
    assert torch.bincount(y[uniform], minlength=3)[0] > 30  # the uniform draw follows the class frequencies


def test_multilabel_rows_are_hidden_whole():
    y = torch.randint(0, 2, (100, 40))
    idx = select_labelled(y, 40, 0.1, None, seed=0)
    hidden = hide_labels(y, idx)
    mask = labelled_mask(hidden)
    assert mask.sum() == 10 and torch.equal(mask.nonzero().squeeze(1), idx)
    assert bool((hidden[~mask] == UNLABELLED).all()) and torch.equal(hidden[mask], y[idx])
    with pytest.raises(ValueError, match="multiclass"):
        select_labelled(y, 40, None, 2, seed=0)


def test_datamodule_hides_labels_of_the_training_part_only(tmp_path):
    fx.write_idx(tmp_path, n_train=100, n_test=20)
    full = MNISTDataModule(root=str(tmp_path), val_fraction=0.2)
    full.setup()
    semi = MNISTDataModule(root=str(tmp_path), val_fraction=0.2, labelled_per_class=2, labelled_seed=5)
    semi.setup()
    y, true = semi.train_set.targets, full.train_set.targets
    kept = (y != UNLABELLED).nonzero().squeeze(1)
    assert len(y) == 80 and torch.equal(kept, semi.labelled_indices)
    assert torch.bincount(y[kept], minlength=10).tolist() == [2] * 10 and torch.equal(y[kept], true[kept])
    assert torch.equal(semi.val_set.targets, full.val_set.targets)
    assert torch.equal(semi.test_set.targets, full.test_set.targets)


# buffer ------------------------------------------------------------------------------------------------------------
def test_buffer_releases_exactly_when_b_labelled_have_accumulated():
    buf, B = LabelledBuffer(), 8
    xs = [torch.full((n, 1, 2, 2), float(i)) for i, n in enumerate([3, 0, 2, 2, 1, 5, 4])]
    out = [buf.push(x, torch.full((len(x),), i), B) for i, x in enumerate(xs)]
    assert [o is not None for o in out] == [False, False, False, False, True, False, True]
    x, y = out[4]  # 3 + 0 + 2 + 2 + 1 = 8 = B: all of them, in arrival order
    assert len(x) == 8 and y.tolist() == [0, 0, 0, 2, 2, 3, 3, 4] and bool((x[:, 0, 0, 0] == y.float()).all())
    assert len(out[6][0]) == 9 and buf.size == 0  # 5 + 4 ≥ 8: released with more than B


def _model(**kw) -> JointDiffusion:
    torch.manual_seed(0)
    return JointDiffusion(**TINY, **kw)


def test_released_term_is_the_cross_entropy_of_the_buffered_examples():
    model = _model().eval()  # eval: no dropout, BatchNorm on running statistics → deterministic logits
    x = torch.randn(4, 1, 28, 28)
    y = torch.tensor([3, UNLABELLED, UNLABELLED, 7])
    loss, released = model.buffered_classifier_loss(x, y, labelled_mask(y))
    assert not released and loss.item() == 0.0
    x2, y2 = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, UNLABELLED, UNLABELLED])
    loss, released = model.buffered_classifier_loss(x2, y2, labelled_mask(y2))
    assert released
    xs = torch.cat([x[[0, 3]], x2[[0, 1]]])
    logits = model.network.classify(xs, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([3, 7, 1, 2])))


def test_held_steps_give_zero_gradient_but_keep_batchnorm_statistics_moving():
    model = _model().train()
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([2] + [UNLABELLED] * 5)
    bn = model.network.head.layers[1]
    before = bn.running_mean.clone()
    loss, released = model.buffered_classifier_loss(x, y, labelled_mask(y))
    loss.backward()
    assert not released
    grads = [p.grad for p in model.network.parameters() if p.grad is not None]
    assert grads and all(bool((g == 0).all()) for g in grads)  # every head parameter took part, with zero gradient
    assert all(p.grad is not None for p in model.network.head.parameters())
    assert not torch.equal(bn.running_mean, before)  # as the reference: the head ran on the batch


class _LabelledCounts(L.Callback):
    def __init__(self):
        self.counts = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counts.append(int(labelled_mask(batch[1]).sum()))


def test_training_releases_the_classifier_term_as_the_buffer_rule_predicts(tmp_path):
    fx.write_idx(tmp_path, n_train=100, n_test=20)
    dm = MNISTDataModule(root=str(tmp_path), val_fraction=0.0, batch_size=8, labelled_per_class=2)
    counts = _LabelledCounts()
    model = _model()
    trainer = L.Trainer(max_steps=24, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[counts], limit_val_batches=0)
    trainer.fit(model, dm)
    # independent simulation of docs/design.md §7 on the batches the model saw
    held, releases = 0, 0
    for n in counts.counts:
        if n == 8:
            releases += 1  # a fully labelled batch takes the normal path (does not happen at 20 %)
        elif held + n >= 8:
            releases, held = releases + 1, 0
        else:
            held += n
    assert len(counts.counts) == 24 and sum(counts.counts) > 16
    assert model.classifier_batches == releases >= 2 and model.labelled_buffer.size == held
    assert model._may_have_unlabelled


def test_fully_labelled_data_takes_the_normal_path_without_a_per_step_check(tmp_path):
    fx.write_idx(tmp_path, n_train=40, n_test=20)
    model = _model()
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, MNISTDataModule(root=str(tmp_path), val_fraction=0.0, batch_size=8))
    assert not model._may_have_unlabelled and model.classifier_batches == 3 and model.labelled_buffer.size == 0


def test_multilabel_celeba_keeps_a_fraction_of_attribute_rows(tmp_path):
    from jointdiff.data import CelebADataModule

    written = fx.write_celeba(tmp_path, partitions=(6, 3, 3))
    dm = CelebADataModule(root=str(tmp_path), labelled_fraction=0.5, labelled_seed=2)
    dm.setup()
    y = dm.train_set.targets
    mask = labelled_mask(y)
    assert int(mask.sum()) == 3 and bool((y[~mask] == UNLABELLED).all())
    assert torch.equal(y[mask], torch.from_numpy((written["attributes"][:6][mask.numpy()] + 1) // 2))
