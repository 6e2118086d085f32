"""``jointdiff score SAMPLES``: FID, k-NN and PRD precision/recall of any sample file against a dataset split, and
the class hit rate of an independent classifier when the file holds targets.

    jointdiff score runs/samples/samples.npz --data FashionMNISTDataModule --features "[inception]"
    jointdiff score other_impl.npz --data FashionMNISTDataModule --features "[classifier:clf.ckpt]" \\
        --judge clf.ckpt --layout NCHW --value_range 0,1

Writes ``<samples>.score.json`` (or ``--output``): the results under ``score/gen_<extractor>/<metric>_<convention>``
and the provenance record the training-time evaluation writes (extractors and their fingerprints, real-set size and
cache source, metric settings).
"""

from __future__ import annotations

from jointdiff.sampling.scoring import score_samples


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    import jointdiff.data  # noqa: F401  (registers the DataModules for --data <ClassName>)

    if argv and not argv[0].startswith("-"):  # the sample file comes first: `jointdiff score SAMPLES …`
        argv = ["--samples", argv[0], *argv[1:]]
    CLI(score_samples, args=argv, as_positional=False, prog="jointdiff score")
