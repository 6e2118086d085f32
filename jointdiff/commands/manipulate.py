"""``jointdiff manipulate``: linear probe of PDAE's latent z, and attribute/class manipulation along its weights.

    jointdiff manipulate --checkpoint runs/.../last.ckpt --data FashionMNISTDataModule --target 7

1. Linear probe (docs/design.md §13.4, "ours, Diff-AE-style"): z of the train, val and test splits from the EMA encoder
   (no augmentation), standardised with the train statistics; ``Linear(d_z, K)`` trained with CE (BCE for
   multi-label) by Adam 1e-3 at batch 256, the epoch chosen on val; test accuracy (and mean AUROC for
   multi-label) over ``--probe_seeds`` seeds, mean ± std.
2. Manipulation (docs/design.md §13.3): for ``--num_images`` images, x_T is inverted with the unedited z and decoded
   with ``z' = z + s·√d_z·d`` in standardised z space, ``d`` the first seed's probe direction for ``--target``
   (an attribute's weight row; for classes ``w_k − mean_j w_j``). Multi-class images are drawn from the other
   classes. The edit's effect is measured by re-encoding the decoded images and asking the same probe whether
   they now show the target (the "hit rate" per scale).

Writes ``probe.json``, ``manipulation.json`` and ``manipulation.png`` (rows: images; columns: scales).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from jointdiff.commands.reconstruct import load_pdae_and_data, pdae_parser, settings_from, split_dataset, summary
from jointdiff.data.base import collate_batch, split_indices
from jointdiff.files import atomic_write_json
from jointdiff.images import save_grid
from jointdiff.models.pdae_inference import (
    cache_latents,
    edit_direction,
    fit_linear_probe,
    manipulate,
    probe_scores,
)


def main(argv: list[str]) -> dict:
    parser = pdae_parser("manipulate", __doc__.split("\n\n")[0])
    parser.add_argument("--target", type=int, required=True, help="class index (multi-class) or attribute index")
    parser.add_argument("--scales", type=list[float], default=[-0.3, -0.1, 0.0, 0.1, 0.3], help="edit strengths s")
    parser.add_argument("--num_images", type=int, default=8, help="images to manipulate (rows of the figure)")
    parser.add_argument("--probe_epochs", type=int, default=30, help="epochs of the linear probe")
    parser.add_argument("--probe_seeds", type=int, default=3, help="seeds of the linear probe (mean ± std)")
    cfg, model, dm, out = load_pdae_and_data(parser, argv)
    settings = settings_from(cfg)
    task, k = dm.task, dm.num_classes
    if not 0 <= cfg.target < k:
        raise ValueError(f"--target must be in 0..{k - 1} ({'attribute' if task == 'multilabel' else 'class'} index)")

    # 1. the linear probe of z
    def latents(ds):
        return cache_latents(model, DataLoader(ds, batch_size=cfg.batch_size, collate_fn=collate_batch), cfg.progress)

    z_train, y_train = latents(dm.train_set)
    if dm.val_set is not None and len(dm.val_set):
        z_val, y_val = latents(dm.val_set)
    else:  # no validation split: hold out 10% of the training latents to choose the epoch
        keep, held = split_indices(len(z_train), 0.1, cfg.seed)
        (z_train, y_train), (z_val, y_val) = (z_train[keep], y_train[keep]), (z_train[held], y_train[held])
    z_test, y_test = latents(dm.test_set)
    probes, runs = [], []
    for seed in range(cfg.probe_seeds):
        probe = fit_linear_probe(z_train, y_train, z_val, y_val, k, task, epochs=cfg.probe_epochs, seed=seed)
        with torch.no_grad():
            runs.append({"seed": seed, "best_epoch": probe.best_epoch, "val": probe.val_score,
                         **probe_scores(probe.logits(z_test), y_test, task)})
        probes.append(probe)
    probe_result = {
        "checkpoint": str(cfg.checkpoint), "task": task, "z_dim": z_train.shape[1],
        "train_images": len(z_train), "val_images": len(z_val), "test_images": len(z_test),
        "protocol": "standardised z, Linear(d_z, K), Adam 1e-3, batch 256, epoch chosen on val",
        "epochs": cfg.probe_epochs, "runs": runs,
    }
    for key in runs[0]:
        if key not in ("seed", "best_epoch", "val"):
            probe_result[f"test_{key}"] = summary(torch.tensor([r[key] for r in runs]))
    atomic_write_json(probe_result, out / "probe.json")

    # 2. manipulation along the first probe's direction
    ds = split_dataset(dm, cfg.split)
    targets = ds.targets if hasattr(ds, "targets") else torch.stack([ds[i][1] for i in range(len(ds))])
    eligible = torch.arange(len(ds))
    if task == "multiclass":
        eligible = eligible[targets != cfg.target]  # show images moving *toward* the target class
    if len(eligible) < cfg.num_images:
        raise ValueError(f"only {len(eligible)} eligible images in the {cfg.split} split")
    pick = eligible[torch.randperm(len(eligible), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.num_images]]
    x = torch.stack([ds[int(i)][0] for i in pick.sort().values])
    probe = probes[0]
    direction = edit_direction(probe, cfg.target, task)
    frames = torch.cat([
        manipulate(model, x[i : i + cfg.batch_size].to(cfg.device), probe, direction, cfg.scales, settings).cpu()
        for i in range(0, len(x), cfg.batch_size)
    ])  # (N, S, c, H, W)
    save_grid(frames.flatten(0, 1), out / "manipulation.png", nrow=len(cfg.scales))
    hit_rates = {}
    with torch.no_grad():
        for j, s in enumerate(cfg.scales):
            z_edit = model.encode(frames[:, j].to(cfg.device)).cpu()
            logits = probe.logits(z_edit)
            hit = (logits[:, cfg.target] > 0) if task == "multilabel" else (logits.argmax(1) == cfg.target)
            hit_rates[str(s)] = float(hit.float().mean())
    result = {
        "checkpoint": str(cfg.checkpoint), "split": cfg.split, "target": cfg.target, "scales": cfg.scales,
        "indices": pick.sort().values.tolist(), "settings": vars(settings),
        "direction": "attribute weight row" if task == "multilabel" else "w_k - mean_j w_j",
        "target_hit_rate_of_reencoded_images": hit_rates,
    }
    atomic_write_json(result, out / "manipulation.json")
    key = "test_auroc" if task == "multilabel" else "test_acc"
    print(
        f"linear probe of z: {key} {probe_result[key]['mean']:.4f} ± {probe_result[key]['std']:.4f} "
        f"({cfg.probe_seeds} seeds)\nmanipulation toward {cfg.target}: hit rate by scale {hit_rates}\n"
        f"  written: {out / 'probe.json'}, {out / 'manipulation.json'}, {out / 'manipulation.png'}",
        flush=True,
    )
    return {"probe": probe_result, "manipulation": result}
