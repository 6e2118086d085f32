"""Loading this project's checkpoints back into models, with clear errors for the wrong file or architecture."""

from __future__ import annotations

import importlib
import pickle
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

from jointdiff.diffusion.schedules import canonical_schedule
from jointdiff.trust import UntrustedFileError, load_torch_file

CLASS_KEY = "jointdiff_class"


RNG_KEY = "rng_states"


class RecordsClass:
    """Mixin for LightningModules: every checkpoint records the module's class path (so :func:`load_model` can
    rebuild it without being told what it is) and the RNG states of torch, CUDA, NumPy and Python (Lightning does
    not save them), which are restored on resume so that a run resumed at an epoch boundary draws the same noise,
    timesteps, dropout masks and data order as the uninterrupted run."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        # NumPy's state holds an ndarray, which Lightning's ``weights_only=True`` resume refuses: store a tensor.
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
        checkpoint[RNG_KEY] = states

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        upgrade_checkpoint(checkpoint)
        check_checkpoint_fits(self, checkpoint, "the checkpoint")
        # the step the loaded weights were trained to (``test --ckpt_path`` reports it; the trainer's is 0 there)
        self.loaded_global_step = int(checkpoint.get("global_step", 0))
        if RNG_KEY in checkpoint:
            states = dict(checkpoint[RNG_KEY])
            kind, keys, pos, has_gauss, gauss = states["numpy"]
            states["numpy"] = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
            _set_rng_states(states)


def upgrade_checkpoint(checkpoint: dict) -> dict:
    """Bring a checkpoint written by an earlier version up to date, in place: every EMA without its update count
    (``<prefix>ema._extra_state``, added 2026-12-02) gets the checkpoint's global step, which is the number of
    updates that version made."""
    state = checkpoint.get("state_dict", {})
    prefixes = {k.split("ema.module.", 1)[0] for k in state if "ema.module." in k}
    for prefix in prefixes:
        state.setdefault(f"{prefix}ema._extra_state", torch.tensor(int(checkpoint.get("global_step", 0))))
    return checkpoint


def check_schedule(model, hparams: dict, source: str) -> None:
    """Raise unless ``hparams`` (of a checkpoint) name the noise schedule (T, β) that ``model`` was built with: the
    schedule tables are not stored in checkpoints, so weights trained on one schedule would silently be evaluated
    or sampled on another."""
    diffusion = getattr(model, "diffusion", None)
    if diffusion is None or "beta_schedule" not in hparams:
        return
    theirs = (int(hparams.get("diffusion_steps", diffusion.num_steps)), canonical_schedule(hparams["beta_schedule"]))
    mine = (diffusion.num_steps, diffusion.schedule)
    if theirs != mine:
        raise ValueError(
            f"{source} was trained with T={theirs[0]} and the {theirs[1]} β schedule but this model is built with "
            f"T={mine[0]} and {mine[1]}: set --model.init_args.diffusion_steps {theirs[0]} and "
            f"--model.init_args.beta_schedule {theirs[1]}"
        )


# Hyper-parameters that fix what a checkpoint's weights mean: the data they were trained on and the architecture.
# A checkpoint is refused by a model that differs in any of them (when both record it). Learning rate, dropout,
# augmentation, EMA decay and the like may change between runs and are not compared.
IDENTITY_KEYS = (
    "image_size", "channels", "num_classes", "task",
    "model_channels", "channel_mult", "num_res_blocks", "attention_downsample", "num_heads", "norm_groups",
    "classifier_weight_is_zero",
)


def _comparable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(v) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _identity(hparams) -> dict:
    out = {k: _comparable(hparams[k]) for k in IDENTITY_KEYS if k in hparams}
    if "classifier_weight" in hparams:  # λ = 0 builds no classifier head: a different set of weights
        out["classifier_weight_is_zero"] = float(hparams["classifier_weight"]) == 0.0
    return out


def check_same_class(checkpoint: dict, class_path: str, source: str) -> None:
    """Raise one line unless ``checkpoint`` was written by the class ``class_path`` names (compared by class name:
    the import path may be a short alias such as ``jointdiff.models.JointDiffusion``)."""
    theirs, mine = checkpoint.get(CLASS_KEY, "").rsplit(".", 1)[-1], class_path.rsplit(".", 1)[-1]
    if theirs and mine and theirs != mine:
        raise ValueError(f"{source} holds a {theirs} but this run builds a {mine}: use the config the checkpoint "
                         "was trained with")


def check_checkpoint_fits(model, checkpoint: dict, source: str) -> None:
    """Raise one line unless ``checkpoint`` was written by ``model``'s class with the same data shape, architecture
    and noise schedule: a checkpoint whose weights load into another image size or class count would otherwise be
    evaluated without complaint (convolutions do not care about the image size)."""
    check_same_class(checkpoint, f"{type(model).__module__}.{type(model).__qualname__}", source)
    hparams = checkpoint.get("hyper_parameters", {}) or {}
    ckpt_id, model_id = _identity(hparams), _identity(getattr(model, "hparams", {}))
    diffs = [k for k in ckpt_id.keys() & model_id.keys() if ckpt_id[k] != model_id[k]]
    if diffs:
        order = {k: i for i, k in enumerate(IDENTITY_KEYS)}
        diffs.sort(key=order.get)
        mine_hp = model.hparams
        both = "; ".join(f"{k}: checkpoint {hparams.get(k, ckpt_id[k])!r}, this run {mine_hp.get(k, model_id[k])!r}"
                         for k in diffs)
        raise ValueError(f"{source} does not fit this model ({both}): use the data and model settings the checkpoint "
                         "was trained with")
    check_schedule(model, hparams, source)


def read_checkpoint(path: str | Path, map_location="cpu", mmap: bool = False) -> dict:
    """The checkpoint dict in ``path``, or one line saying why it cannot be one (missing, empty, truncated, not a
    PyTorch file, not a dict, or needing code to unpickle: :mod:`jointdiff.trust`). ``mmap=True`` maps the tensors
    instead of reading them (a cheap look inside)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"{path} is empty (0 bytes), probably from a run killed while saving: pass "
                                     "another checkpoint")
    try:
        checkpoint = load_torch_file(path, "checkpoint", map_location=map_location, mmap=mmap)
    except UntrustedFileError:
        raise
    except (OSError, MemoryError) as err:
        if _is_complete_zip(path):  # an I/O error, or no memory: says nothing about the file, retrying may help
            raise
        raise CorruptCheckpointError(f"{path} is truncated or not a PyTorch checkpoint (not a complete zip archive): "
                                     "pass another checkpoint") from err
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, pickle.UnpicklingError):
            first = "its bytes are not a pickle torch can read"
        raise CorruptCheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {first}): "
                                     "pass a checkpoint written by `jointdiff fit`") from err
    if not isinstance(checkpoint, dict):
        raise CorruptCheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint: pass a file "
                                     "written by `jointdiff fit`")
    return checkpoint


def _is_complete_zip(path: Path) -> bool:
    """Whether ``path`` ends in a zip central directory (what ``torch.save`` writes last); I/O errors propagate."""
    with open(path, "rb") as f:
        return zipfile.is_zipfile(f)


class CorruptCheckpointError(ValueError):
    """The file's content is not a checkpoint (empty, truncated, not a zip, not a dict): unlike an I/O error, retrying
    cannot help."""


def check_model_class(class_path: str, source: str, expected: type | tuple[type, ...] | None = None) -> type:
    """The LightningModule class ``class_path`` names, imported only if it lives in ``jointdiff`` (or is exactly one of
    ``expected``) and built only if it is a LightningModule: a class named in a file is data, not an instruction to
    import or call anything (:mod:`jointdiff.trust`)."""
    expected_all = () if expected is None else expected if isinstance(expected, tuple) else (expected,)
    module_name, _, cls_name = str(class_path).rpartition(".")
    asked = {f"{c.__module__}.{c.__qualname__}": c for c in expected_all}
    if class_path in asked:
        return asked[class_path]
    if not module_name or not (module_name == "jointdiff" or module_name.startswith("jointdiff.")):
        raise UntrustedFileError(f"{source} names the class {class_path!r}, which is not a model of jointdiff: only "
                                 "jointdiff's own LightningModules are built from a checkpoint")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{source} names the class {class_path!r}, which this version of jointdiff does not have "
                         f"({err}): use the jointdiff version that wrote it") from None
    if not (isinstance(cls, type) and issubclass(cls, L.LightningModule)):
        raise UntrustedFileError(f"{source} names {class_path!r}, which is not a LightningModule: only jointdiff's "
                                 "own models are built from a checkpoint")
    if expected_all and not issubclass(cls, expected_all):
        names = ", ".join(c.__name__ for c in expected_all)
        raise ValueError(f"{source} holds a {cls.__name__}; expected one of: {names}")
    return cls


def _read(path: str | Path, map_location) -> dict:
    return upgrade_checkpoint(read_checkpoint(path, map_location))


def load_model(
    path: str | Path,
    expected: type | tuple[type, ...] | None = None,
    map_location: str | torch.device = "cpu",
) -> L.LightningModule:
    """Rebuild the LightningModule saved in ``path`` (hyper-parameters and weights), in eval mode.

    ``expected`` restricts the acceptable classes (e.g. a probe needs a model with a UNet encoder).
    """
    ckpt = _read(path, map_location)
    if CLASS_KEY not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} was not written by jointdiff (no '{CLASS_KEY}' entry); train it with `jointdiff fit`")
    cls = check_model_class(ckpt[CLASS_KEY], str(path), expected)
    check_finite_state(ckpt["state_dict"], str(path))
    # LightningCLI adds private entries (``_class_path``, ``_instantiator``) beside the init arguments.
    hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    model = cls(**hparams)
    load_state_dict_checked(model, ckpt["state_dict"], str(path))
    return model.eval()


class NonFiniteLossError(ValueError):
    """Training produced a non-finite loss or non-finite weights."""


def check_finite_state(state: dict, source: str) -> None:
    """Raise one line if a state dict holds NaN or infinite values (the weights of a diverged run). One host sync
    when every tensor is finite."""
    floats = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()}
    if not floats:
        return
    finite = torch.stack([torch.isfinite(v).all().to(next(iter(floats.values())).device) for v in floats.values()])
    if bool(finite.all()):
        return
    bad = [k for k, ok in zip(floats, finite.tolist(), strict=True) if not ok]
    raise NonFiniteLossError(f"{source} holds non-finite weights ({len(bad)} of {len(floats)} tensors, first "
                             f"{bad[0]}), the result of a diverged run: retrain it (e.g. with a smaller learning rate)")


def load_state_dict_checked(module: torch.nn.Module, state_dict: dict, source: str, prefix: str = "") -> None:
    """``module.load_state_dict`` with one readable error listing missing, unexpected and mis-shaped tensors."""
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own.keys() & state_dict.keys() if own[k].shape != state_dict[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{source} does not fit this architecture:"]
        if shapes:
            parts.append("  shape mismatch: " + "; ".join(shapes[:5]) + (" …" if len(shapes) > 5 else ""))
        if missing:
            parts.append(f"  missing from checkpoint ({len(missing)}): " + ", ".join(missing[:5]))
        if unexpected:
            parts.append(f"  not in model ({len(unexpected)}): " + ", ".join(unexpected[:5]))
        raise ValueError("\n".join(parts))
    module.load_state_dict(state_dict)
