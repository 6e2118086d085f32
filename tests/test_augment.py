"""The reference's MixUp gating (docs/fidelity.md, item 2): Kornia 0.6.x's ``RandomMixUpV2(p=0.5)`` mixes half of
the batches and, inside a mixed batch, half of the samples. Measured on one-hot images, from which each output's λ
and partner can be read off exactly, and compared with Kornia's own batch gate."""

from __future__ import annotations

import kornia.augmentation as K
import torch

from jointdiff.nn.augment import ClassifierAugmentation, label_preserving_mixup

B, BATCHES = 16, 2000


def one_hot_batch() -> torch.Tensor:
    """(B, 1, 1, B): sample i is e_i, so an output (1−λ)e_i + λe_j shows λ = 1 − out_i[i] whenever j ≠ i."""
    return torch.eye(B).reshape(B, 1, 1, B)


def mixing_weights(mix) -> torch.Tensor:
    """(BATCHES, B) λ of every sample of every batch (0 for a sample left as it was or paired with itself)."""
    x = one_hot_batch()
    rows = []
    for _ in range(BATCHES):
        out = mix(x.clone()).reshape(B, B)
        assert torch.allclose(out.sum(1), torch.ones(B))  # a convex combination of two images, labels untouched
        rows.append(1 - out.diagonal())
    return torch.stack(rows)


def rates(lam: torch.Tensor) -> dict[str, float]:
    changed = lam > 1e-6
    batches = changed.any(1)
    return {
        "batches mixed": batches.float().mean().item(),
        "samples mixed in a mixed batch": changed[batches].float().mean().item(),
        "samples mostly another image": (lam > 0.5).float().mean().item(),
    }


def test_reference_mixup_gates_the_batch_then_each_sample_like_kornia_0_6():
    torch.manual_seed(0)
    got = rates(mixing_weights(label_preserving_mixup))
    own = (B - 1) / B  # a sample paired with itself (π(i) = i) is unchanged
    # Kornia 0.6.x: Bernoulli(0.5) per batch, then λ ~ U(0,1)·Bernoulli(0.5) per sample
    assert abs(got["batches mixed"] - 0.5) < 0.04
    assert abs(got["samples mixed in a mixed batch"] - 0.5 * own) < 0.03
    assert abs(got["samples mostly another image"] - 0.125 * own) < 0.015


def test_batch_gate_alone_matches_current_kornia():
    torch.manual_seed(1)
    kornia_mix = K.RandomMixUpV2(p=0.5, data_keys=["input"])  # current Kornia: the batch gate only
    theirs = rates(mixing_weights(lambda x: kornia_mix(x)))
    torch.manual_seed(2)
    ours = rates(mixing_weights(lambda x: label_preserving_mixup(x, p_batch=0.5, p_sample=1.0)))
    for key in theirs:
        assert abs(ours[key] - theirs[key]) < 0.05, (key, ours, theirs)


def test_reference_pipeline_leaves_eval_inputs_alone_and_mixes_in_training():
    aug = ClassifierAugmentation("reference", image_size=8, channels=1)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    assert torch.equal(aug.eval()(x), x)
    torch.manual_seed(3)
    assert not torch.equal(aug.train()(x), x)
