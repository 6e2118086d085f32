"""The joint model's labelled-example buffer, ``semi_supervised_mode=buffer`` (the reference's training step,
docs/design.md §7)."""

from __future__ import annotations

import torch


class LabelledBuffer:
    """Clean labelled examples held back until a full classifier batch is available (docs/design.md §7).

    Per step with ``B`` examples of which the labelled ones are ``(x, y)``: if the buffer and the new labelled
    examples together reach ``B``, :meth:`push` returns all of them (≥ ``B`` examples) and empties the buffer;
    otherwise it keeps them and returns ``None`` (no classifier term this step). The buffer lives on the
    examples' device; the joint model saves it in its checkpoints (:meth:`state_dict`), so a resumed run continues
    with the examples the interrupted one held.
    """

    def __init__(self):
        self.images: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.size = 0

    def push(self, x: torch.Tensor, y: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.size + len(x) >= capacity:
            out = torch.cat([*self.images, x]), torch.cat([*self.targets, y])
            self.clear()
            return out
        if len(x):
            self.images.append(x.detach())
            self.targets.append(y.detach())
            self.size += len(x)
        return None

    def state_dict(self) -> dict:
        """The held examples, concatenated on the CPU (empty tensors when the buffer is empty)."""
        if not self.size:
            return {"images": torch.empty(0), "targets": torch.empty(0, dtype=torch.long)}
        return {"images": torch.cat(self.images).cpu(), "targets": torch.cat(self.targets).cpu()}

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        self.clear()
        if len(state["images"]):
            self.images = [state["images"].to(device) if device is not None else state["images"]]
            self.targets = [state["targets"].to(device) if device is not None else state["targets"]]
            self.size = len(state["images"])

    def clear(self) -> None:
        self.images, self.targets, self.size = [], [], 0
