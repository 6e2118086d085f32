"""The plateau rule (jointdiff/callbacks/plateau.py): windowed means against a hand computation, and the callback
stopping a real fit at the first flat validation and resuming with its curve."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from jointdiff.callbacks import StopOnPlateau
from jointdiff.callbacks.plateau import is_flat


def test_is_flat_compares_the_last_fifth_with_the_fifth_before_it():
    curve = [0.50, 0.70, 0.80, 0.84, 0.85, 0.86, 0.855, 0.86, 0.862, 0.858]  # 10 values: windows of 2
    # by hand: last two (0.862, 0.858) mean 0.860; the two before (0.855, 0.86) mean 0.8575; |Δ| = 0.0025
    assert is_flat(curve, 0.003) and not is_flat(curve, 0.002)
    assert not is_flat(curve[:1], 10.0)  # one value: no window to compare with
    assert is_flat(curve[:2], 0.2) and not is_flat(curve[:2], 0.19)  # |0.70 − 0.50| = 0.2
    loss = [1.0, 0.5, 0.2, 0.105, 0.1]  # windows of 1: 0.1 against 0.105, a 4.76 % change of the earlier mean
    assert is_flat(loss, 0.048, relative=True) and not is_flat(loss, 0.047, relative=True)
    assert not is_flat(loss, 0.0049) and is_flat(loss, 0.0051)  # absolute: 0.005


class ScriptedCurve(L.LightningModule):
    """A model whose validation logs a given curve, one value per validation."""

    def __init__(self, curve: list[float]):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.curve, self.validations = curve, 0

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/metric", self.curve[min(self.validations, len(self.curve) - 1)])

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 1)), batch_size=1)


def fit(callback, curve, max_steps, tmp_path, ckpt_path=None):
    trainer = L.Trainer(max_steps=max_steps, val_check_interval=2, check_val_every_n_epoch=None, callbacks=[callback],
                        limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0)
    trainer.fit(ScriptedCurve(curve), loader(), loader(), ckpt_path=ckpt_path)
    return trainer


def test_the_callback_stops_at_the_first_flat_validation_after_min_steps(tmp_path):
    curve = [1.0, 0.6, 0.59, 0.4, 0.39, 0.385, 0.38, 0.38, 0.38, 0.38]
    rule = StopOnPlateau(absolute={"val/metric": 0.011}, min_steps=8)
    trainer = fit(rule, curve, 40, tmp_path)
    # independent reading: validations at steps 2, 4, …; the first flat prefix at step >= 8
    expected = next(2 * (n + 1) for n in range(len(curve)) if 2 * (n + 1) >= 8 and is_flat(curve[:n + 1], 0.011))
    assert rule.stopped_at_step == trainer.global_step == expected
    assert rule.steps == list(range(2, expected + 1, 2))
    assert rule.history["val/metric"] == pytest.approx(curve[:expected // 2])  # logged as float32


def test_the_curve_survives_a_resume_and_a_missing_metric_is_an_error(tmp_path):
    curve = [1.0, 0.5, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05]
    first = fit(StopOnPlateau(absolute={"val/metric": 1e-9}), curve, 6, tmp_path)  # never flat in 6 steps
    ckpt = tmp_path / "six.ckpt"
    first.save_checkpoint(ckpt)
    resumed = StopOnPlateau(absolute={"val/metric": 1e-9})
    fit(resumed, curve[3:], 40, tmp_path, ckpt_path=str(ckpt))  # the model's counter restarts: feed the rest
    assert resumed.steps[:3] == [2, 4, 6] and resumed.history["val/metric"][:3] == pytest.approx(curve[:3])
    assert resumed.stopped_at_step is not None
    with pytest.raises(KeyError, match="no metric val/other"):
        fit(StopOnPlateau(relative={"val/other": 0.1}), curve, 4, tmp_path)
    with pytest.raises(ValueError, match="at least one metric"):
        StopOnPlateau()
