"""Prunable units as entries of nn.ModuleLists, named by their path in the module tree.

Every family's units are residual (a motion module, a transformer block), so removing one
means putting an identity in its slot; the tree keeps its shape and stays saveable.
"""
from __future__ import annotations

import re
from contextlib import contextmanager

from torch import nn


class SkippedUnit(nn.Module):
    """Identity stand-in for a removed unit; accepts (and ignores) the unit's extra arguments."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _slot(root: nn.Module, name: str) -> tuple[nn.ModuleList, int]:
    parent_name, index = name.rsplit(".", 1)
    return root.get_submodule(parent_name), int(index)


def list_units(root: nn.Module, pattern: re.Pattern) -> list[str]:
    """Units still present, in module-tree order (stable across runs and processes)."""
    return [n for n, m in root.named_modules() if pattern.match(n) and not isinstance(m, SkippedUnit)]


def remove_units(root: nn.Module, units: list[str]) -> None:
    for name in units:
        parent, i = _slot(root, name)
        parent[i] = SkippedUnit()


@contextmanager
def units_skipped(root: nn.Module, units: list[str]):
    """Swap identities in and put the original modules back on exit, even after an error."""
    saved = []
    try:
        for name in units:
            parent, i = _slot(root, name)
            saved.append((parent, i, parent[i]))
            parent[i] = SkippedUnit()
        yield
    finally:
        for parent, i, module in reversed(saved):
            parent[i] = module


# How each family names its units: lets a unit list from another family be called what it is.
UNIT_PATTERNS = {
    "AnimateDiff motion modules": re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.motion_modules\.\d+$"),
    "Wan transformer blocks": re.compile(r"^blocks\.\d+$"),
}


def family_of_unit(name: str) -> str | None:
    return next((fam for fam, pat in UNIT_PATTERNS.items() if pat.match(name)), None)
