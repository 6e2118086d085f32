"""``share_encoder_pass``: the noisy classifier term from the diffusion pass's own encoder outputs equals the plain
path's second encoder pass over the same ``x_i`` (loss and every gradient, float64), for both D4 modes."""

import copy

import pytest
import torch
from conftest import TINY_MODEL, randomised

from jointdiff.models import JointDiffusion


def pair(mode: str) -> tuple[JointDiffusion, JointDiffusion]:
    args = dict(TINY_MODEL, classifier_augmentation="off", classifier_weight=0.7, noisy_classifier=mode,
                dropout=0.0, head_dropout=0.0)
    plain = JointDiffusion(**args)
    randomised(plain.network)
    plain = plain.double()
    shared = JointDiffusion(**args, share_encoder_pass=True).double()
    shared.network.load_state_dict(plain.network.state_dict())
    for m in (plain, shared):
        m.log = lambda *a, **k: None
    return plain, shared


def batch(n: int = 6):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 1, 28, 28, generator=g, dtype=torch.float64) * 2 - 1  # the model defaults: 28 px, 10 classes
    return x, torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_shared_pass_equals_two_passes(mode):
    plain, shared = pair(mode)
    losses = []
    for model in (plain, shared):
        torch.manual_seed(11)  # the same t and noise for both
        loss = model.training_step(batch(), 0)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-12, atol=1e-12)
    grads = 0
    for (name, a), b in zip(plain.network.named_parameters(), shared.network.parameters(), strict=True):
        if a.grad is None:
            assert b.grad is None, name
            continue
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12, msg=name)
        grads += 1
    assert grads > 10 and plain.network.head.layers[-1].weight.grad.abs().sum() > 0


def test_shared_pass_runs_one_encoder_pass_fewer():
    calls = {}
    for share in (False, True):
        plain, shared = pair("replace")
        model = shared if share else plain
        original = model.network.unet.encode
        count = [0]

        def counting(*a, _orig=original, _count=count):
            _count[0] += 1
            return _orig(*a)

        model.network.unet.encode = counting
        model.training_step(batch(), 0)
        calls[share] = count[0]
    assert calls == {False: 2, True: 1}


def test_shared_pass_with_dropout_trains():
    args = dict(TINY_MODEL, classifier_augmentation="off", noisy_classifier="replace", share_encoder_pass=True)
    model = JointDiffusion(**args)
    model.log = lambda *a, **k: None
    x, y = batch()
    loss = model.training_step((x.float(), y), 0)
    loss.backward()
    assert torch.isfinite(loss) and model.network.head.layers[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [
    dict(noisy_classifier="off"),
    dict(noisy_classifier="replace", noisy_timesteps=[0, 1]),
    dict(noisy_classifier="replace", classifier_augmentation="fixed"),
])
def test_shared_pass_rejects_settings_where_inputs_differ(bad):
    args = dict(TINY_MODEL, classifier_augmentation="off", share_encoder_pass=True)
    args.update(bad)
    with pytest.raises(ValueError, match="share_encoder_pass needs"):
        JointDiffusion(**args)


def test_shared_pass_is_ignored_without_a_head():
    model = JointDiffusion(**TINY_MODEL, classifier_weight=0.0, share_encoder_pass=True)  # vanilla DDPM of a config
    assert model.network.head is None


def test_plain_and_shared_models_share_checkpoint_keys():
    plain, shared = pair("add")
    assert plain.state_dict().keys() == shared.state_dict().keys()
    copy.deepcopy(shared).load_state_dict(plain.state_dict())
