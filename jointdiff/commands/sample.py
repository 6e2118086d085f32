"""``jointdiff sample``: draw samples from a trained checkpoint with any of the project's samplers.

    jointdiff sample --checkpoint runs/.../last.ckpt --sampler joint --alpha 200 --num 64 --classes [0,3]
    jointdiff sample --checkpoint ddpm.ckpt --sampler guidance --classifier noisy_clf.ckpt --scale 2
    jointdiff sample --checkpoint ddpm.ckpt --sampler ddim --steps 50 --num 256

Samplers: ``ddpm`` (ancestral, all T steps, unconditional), ``ddim`` (``--steps`` respaced steps, ``--eta``),
``joint`` (the joint model's conditional sampler, docs/design.md §5.1, needs a head: α, direction) and ``guidance``
(Dhariwal & Nichol with an external noise-aware classifier, docs/design.md §5.3: scale s). Writes into ``--output``:
``class_<k>.png`` grids (one per requested class or attribute vector; ``samples.png`` when unconditional),
``samples.npz`` (``arr_0`` uint8 (N, H, W, c) as guided-diffusion's scripts write, ``arr_1`` the requested
targets) and ``sample.json`` (arguments, paths, class hit rates).
"""

from __future__ import annotations

from jointdiff.sampling.generate import sample


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    CLI(sample, args=argv, as_positional=False)

