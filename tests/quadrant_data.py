"""Shared by the baseline tests: a 4-class dataset that a tiny model learns in a few steps, and a quiet Trainer."""

import lightning as L
import torch

from jointdiff.data.base import ImageDataModule, ImageTensorDataset, Splits


class QuadrantData(ImageDataModule):
    """8×8 grey images on a noisy background; class k brightens quadrant k. ``sizes``: (train, val, test)."""

    name = "tiny"
    image_size, channels, num_classes, task = 8, 1, 4, "multiclass"
    sizes = (64, 32, 32)

    def load_splits(self) -> Splits:
        g = torch.Generator().manual_seed(0)

        def make(n):
            y = torch.randint(0, 4, (n,), generator=g)
            x = torch.randint(0, 60, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
            for k in range(4):
                r, c = divmod(k, 2)
                x[y == k, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 190
            return ImageTensorDataset(x, y)

        return Splits(*map(make, self.sizes))


def quiet_trainer(tmp_path, **kw) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, **kw)
