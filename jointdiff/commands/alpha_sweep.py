"""``jointdiff alpha-sweep``: conditional sampling over a list of α, scored per α (the paper's Fig. 4, D10).

    jointdiff alpha-sweep --checkpoint joint.ckpt --alphas "[0,50,100,150,200,250,500,1000]" \\
        --num_per_class 100 --judge classifier.ckpt --features classifier:classifier.ckpt \\
        --data FashionMNISTDataModule --output runs/alpha_sweep

For every α the same seed is used, so all α start from the same noise (α=0 is unconditional sampling of the
same chains). Per α: the class hit rate of an independent classifier (``--judge``; the model's own head is
reported too, clearly named, since it is not independent), and, with ``--features`` and ``--data``, FID and
PRD precision/recall (``jointdiff.metrics``) of all samples against the real ``--split`` images. Writes
``alpha_sweep.csv``, ``alpha_sweep.md``, ``alpha_sweep.json``, ``alpha_sweep.png`` (P/R, FID and hit rate vs α)
and, per α, ``grids/alpha_<α>.png`` (10 samples per class) and ``grids/alpha_<α>.npz`` (all samples, uint8).
"""

from __future__ import annotations

from jointdiff.sampling.alpha_sweep import alpha_sweep


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    import jointdiff.data  # noqa: F401  (registers the DataModules for --data <ClassName>)

    CLI(alpha_sweep, args=argv, as_positional=False)

