"""Per-sample gates on residual units: one graph serves every leave-one-out variant.

Removing a unit (SkippedUnit) changes the module tree, so a compiled graph is rebuilt for
every variant (90+ s each at AnimateDiff size). A gate instead keeps the unit in place and
chooses, per sample of the batch, between the unit's output and its input:

    out[b] = unit(h)[b]  if keep[b, i]  else  h[b]

`torch.where` copies one of the two exactly, so a gated-off sample equals the same sample
run with the unit removed, and a gated-on sample equals the full model (up to the batch
composition, which can change kernel choices by rounding). Several variants can then share
one batch, and the mask is a tensor updated in place, so a compiled graph never recompiles.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class _Mask:
    """A plain holder (not a module: it stays out of state_dict and the module tree)."""

    keep: torch.Tensor | None = None  # [batch, units] bool; None = every unit on


class GatedUnit(nn.Module):
    def __init__(self, unit: nn.Module, mask: _Mask, index: int):
        super().__init__()
        self.unit, self.index = unit, index
        self.__dict__["_mask"] = mask  # shared by every gate; not registered as a submodule

    def forward(self, hidden_states, *args, **kwargs):
        out = self.unit(hidden_states, *args, **kwargs)
        keep = self._mask.keep
        if keep is None:
            return out
        # motion modules see [batch * frames, C, H, W], batch-major
        per_sample = hidden_states.shape[0] // keep.shape[0]
        k = keep[:, self.index].repeat_interleave(per_sample).view(-1, *([1] * (out.dim() - 1)))
        return torch.where(k, out, hidden_states)


class UnitGates:
    """Wraps the named units of `root` in gates (in place); `remove()` puts them back."""

    def __init__(self, root: nn.Module, units: list[str]):
        self.root, self.units = root, list(units)
        self.index = {u: i for i, u in enumerate(self.units)}
        self.mask = _Mask()
        self._saved = []
        for i, name in enumerate(self.units):
            parent_name, j = name.rsplit(".", 1)
            parent = root.get_submodule(parent_name)
            self._saved.append((parent, int(j), parent[int(j)]))
            parent[int(j)] = GatedUnit(parent[int(j)], self.mask, i)

    def set(self, off: list[list[str]], device) -> None:
        """off[b] = units switched off for sample b of the next forwards. The mask tensor is
        updated in place when its shape allows, so compiled graphs see it as the same input."""
        keep = torch.ones(len(off), len(self.units), dtype=torch.bool)
        for b, units in enumerate(off):
            for u in units:
                if u not in self.index:
                    raise KeyError(f"no gate for unit {u!r}; gated units: {self.units[:3]}...")
                keep[b, self.index[u]] = False
        cur = self.mask.keep
        if cur is not None and cur.shape == keep.shape and cur.device == torch.device(device):
            cur.copy_(keep)
        else:
            self.mask.keep = keep.to(device)

    def clear(self) -> None:
        self.mask.keep = None

    def remove(self) -> None:
        for parent, j, module in reversed(self._saved):
            parent[j] = module
        self._saved = []
        self.mask.keep = None


@contextmanager
def gated(root: nn.Module, units: list[str]):
    g = UnitGates(root, units)
    try:
        yield g
    finally:
        g.remove()
