"""``jointdiff counterfactual``: visual counterfactual explanations with a joint model (docs/design.md §6, D18).

    jointdiff counterfactual --checkpoint runs/malaria/.../last.ckpt \\
        --data MalariaDataModule --data.image_size 32 --split test --indices [0,1,2,3] --alpha 200
    jointdiff counterfactual --checkpoint model.ckpt --files [a.png,b.png] --target 1

Each image is noised to ``n = round(noise_fraction·T)`` steps (default 20%), then denoised with the joint
conditional sampler toward the target class (default: the other class of a binary task) or, for a multi-label
model, toward the image's own attribute vector with ``--flip_attribute`` flipped. Writes into ``--output``
``counterfactual.png`` (rows: original, noised, counterfactual, |counterfactual − original| summed over channels;
column titles give the classifier's probability of the request before → after) and ``counterfactual.json`` (per
image: source, true label, request, probabilities before and after from the model's own head at step 0 and,
with ``--judge``, from an independent classifier).
"""

from __future__ import annotations

from jointdiff.sampling.counterfactual import run_counterfactual


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    import jointdiff.data  # noqa: F401  (registers the DataModules for --data <ClassName>)

    CLI(run_counterfactual, args=argv, as_positional=False)

