"""``semi_supervised_mode=stream``: a second, labelled stream beside the stream of all images, so that every step
has a full labelled classifier batch. The reference's buffer mode stays the default and keeps
its own tests (``test_semisupervised.py``)."""

from __future__ import annotations

import fixtures as fx  # tests/ is on sys.path (rootdir conftest, no package)
import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL

from jointdiff.data import FashionMNISTDataModule, MNISTDataModule
from jointdiff.data.base import ImageTensorDataset
from jointdiff.data.semisupervised import UNLABELLED, hide_labels
from jointdiff.models import JointDiffusion, NoiseAwareClassifier, StandaloneClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


class StreamLog(L.Callback):
    """Every training batch as the model received it."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        (x, y), (x_l, y_l) = batch["images"], batch["labelled"]
        self.batches.append((x.clone(), y.clone(), x_l.clone(), y_l.clone()))


def _stream_datamodule(fmnist, n: int = 56, labelled_every: int = 3) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(root=fmnist.root, batch_size=8, labelled_fraction=0.5,
                                semi_supervised_mode="stream")
    images, targets = fmnist.train_set.images[:n], fmnist.train_set.targets[:n]
    keep = torch.arange(0, n, labelled_every)  # 19 labelled: 2 labelled batches per cycle (drop_last)
    dm.train_set = ImageTensorDataset(images, hide_labels(targets, keep))
    dm.labelled_indices = keep
    dm.val_set, dm.test_set = fmnist.val_set, fmnist.test_set
    return dm, images, targets, keep


def _trainer(root, max_steps, callbacks=()):
    return L.Trainer(max_steps=max_steps, limit_val_batches=0, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=root, callbacks=list(callbacks))


def _joint(**kw) -> JointDiffusion:
    L.seed_everything(0)
    return JointDiffusion(**TINY_MODEL, ema_decay=0.9, classifier_augmentation="off", **kw)


def test_every_step_gets_a_full_labelled_batch_from_the_labelled_subset(fmnist, tmp_path):
    dm, images, targets, keep = _stream_datamodule(fmnist)
    log = StreamLog()
    model = _joint()
    _trainer(tmp_path, 9, [log]).fit(model, datamodule=dm)
    assert len(log.batches) == 9
    labelled_images = images[keep].float().div(127.5).sub(1)
    seen = set()
    for x, y, x_l, y_l in log.batches:
        assert x.shape[0] == x_l.shape[0] == 8 and bool((y_l != UNLABELLED).all())
        for image, label in zip(x_l, y_l, strict=True):
            match = (labelled_images == image).flatten(1).all(1).nonzero().squeeze(1)
            assert len(match) == 1 and targets[keep[match]].item() == label.item()  # a labelled example, its label
            seen.add(int(match))
        assert bool((y == UNLABELLED).any())  # the images stream is the semi-supervised training set
    assert len(seen) >= 16  # the labelled stream cycles through the subset (2 batches of 8 per cycle)
    # a classifier term at every step, none through the buffer
    assert model.classifier_batches == 9 and model.labelled_buffer.size == 0


def test_stream_step_is_diffusion_loss_on_all_images_plus_lambda_ce_on_the_labelled_batch(fmnist):
    model = _joint(classifier_weight=0.5, dropout=0.0, head_dropout=0.0)
    model.log = lambda *a, **k: None
    x, y = fmnist.train_set[list(range(8))]
    y = y.clone()
    y[::2] = UNLABELLED
    x_l, y_l = fmnist.train_set[list(range(100, 108))]
    torch.manual_seed(1)
    loss = model.training_step({"images": (x, y), "labelled": (x_l, y_l)}, 0)
    # independent recomputation with the same draws: images' t and noise, then the labelled batch's (unused: D4 off)
    torch.manual_seed(1)
    t = torch.randint(0, TINY_MODEL["diffusion_steps"], (8,))
    noise = torch.randn_like(x)
    ab = model.diffusion.tables64["alphas_cumprod"][t].float().view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x + (1 - ab).sqrt() * noise
    diffusion = F.mse_loss(model.network(x_t, t), noise)
    ce = F.cross_entropy(model.network.classify(x_l, torch.zeros(8, dtype=torch.long)), y_l)
    torch.testing.assert_close(loss, diffusion + 0.5 * ce, rtol=1e-5, atol=1e-6)


def test_classifier_baseline_trains_on_the_full_labelled_batches_only(fmnist):
    torch.manual_seed(0)
    clf = StandaloneClassifier(**{k: v for k, v in TINY_MODEL.items() if k != "diffusion_steps"},
                               classifier_augmentation="off", dropout=0.0, head_dropout=0.0)
    clf.log = lambda *a, **k: None
    x, y = fmnist.train_set[list(range(8))]
    x_l, y_l = fmnist.train_set[list(range(100, 108))]
    loss = clf.training_step({"images": (x, torch.full_like(y, UNLABELLED)), "labelled": (x_l, y_l)}, 0)
    expected = F.cross_entropy(clf.network.classify(x_l, torch.zeros(8, dtype=torch.long)), y_l)
    torch.testing.assert_close(loss, expected)


def test_stream_resume_continues_both_streams_exactly(fmnist, tmp_path):
    dm, *_ = _stream_datamodule(fmnist)
    straight_log, resumed_log = StreamLog(), StreamLog()
    save = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "a", every_n_train_steps=3, save_top_k=-1)
    straight = _joint()
    _trainer(tmp_path / "a", 9, [straight_log, save]).fit(straight, datamodule=dm)
    resumed = _joint()
    L.seed_everything(123)
    ckpt = tmp_path / "a" / "epoch=0-step=3.ckpt"
    _trainer(tmp_path / "b", 9, [resumed_log]).fit(resumed, datamodule=dm, ckpt_path=ckpt)
    assert len(resumed_log.batches) == 6
    for a, b in zip(straight_log.batches[3:], resumed_log.batches, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_stream_mode_needs_labels_and_enough_of_them(tmp_path):
    with pytest.raises(ValueError, match="needs labelled_fraction or labelled_per_class"):
        MNISTDataModule(root=str(tmp_path), semi_supervised_mode="stream")
    with pytest.raises(ValueError, match="buffer|stream"):
        MNISTDataModule(root=str(tmp_path), labelled_per_class=1, semi_supervised_mode="both")
    fx.write_idx(tmp_path, n_train=100, n_test=20)
    dm = MNISTDataModule(root=str(tmp_path), val_fraction=0.0, batch_size=16, labelled_per_class=1,
                         semi_supervised_mode="stream")
    dm.setup()
    with pytest.raises(ValueError, match="10 labelled training images cannot fill one labelled batch of 16"):
        dm.train_dataloader()


def test_models_without_a_stream_rule_reject_it_before_training(tmp_path):
    fx.write_idx(tmp_path, n_train=100, n_test=20)
    dm = MNISTDataModule(root=str(tmp_path), val_fraction=0.0, batch_size=8, labelled_per_class=2,
                         semi_supervised_mode="stream")
    model = NoiseAwareClassifier(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, head_channels=8,
                                 norm_groups=8, diffusion_steps=20)
    with pytest.raises(ValueError, match="NoiseAwareClassifier does not train on a labelled stream"):
        _trainer(tmp_path, 1).fit(model, datamodule=dm)
