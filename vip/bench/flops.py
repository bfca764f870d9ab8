"""FLOPs by torch.utils.flop_counter and MFU against a dense bf16 peak."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) bf16 tensor-core peaks from the datasheets, FLOP/s.
BF16_PEAK = {"H100 SXM": 989e12, "H100 PCIe": 756e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device_name: str | None = None) -> tuple[str, float | None]:
    """(which peak was assumed, FLOP/s); None off CUDA. 'H100 80GB HBM3' is the SXM part."""
    if device_name is None:
        if not torch.cuda.is_available():
            return "cpu (no peak)", None
        device_name = torch.cuda.get_device_name()
    if "H100" in device_name:
        key = "H100 PCIe" if "PCIe" in device_name else "H100 SXM"
    else:
        key = next((k for k in BF16_PEAK if k in device_name), None)
    return (f"{key} dense bf16 {BF16_PEAK[key] / 1e12:.0f} TFLOP/s", BF16_PEAK[key]) if key else (device_name, None)


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call of fn (matmuls, convolutions, attention; what tensor cores do)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    return None if not peak or seconds <= 0 else flops / seconds / peak
