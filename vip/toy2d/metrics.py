"""Distance between two sample sets: sliced Wasserstein-1."""
from __future__ import annotations

import torch


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_dirs: int = 256, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance of the projections.

    a and b are [n, d] and [m, d]; with n != m the projections are compared at m' = min(n, m)
    evenly spaced quantiles. Identical sets give 0; shifting one set by s gives |s| * E|cos|
    (2/pi * |s| in 2-D, up to the sampling of directions).
    """
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_dirs, a.shape[1], generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa, pb = (a.float() @ dirs.T).sort(0).values, (b.float() @ dirs.T).sort(0).values
    if pa.shape[0] != pb.shape[0]:
        q = torch.linspace(0, 1, min(pa.shape[0], pb.shape[0]))
        pa, pb = torch.quantile(pa, q, dim=0), torch.quantile(pb, q, dim=0)
    return float((pa - pb).abs().mean())
