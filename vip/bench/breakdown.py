"""Where a call's time goes: kernels grouped by kind (convolution, matmul, attention, the rest),
next to the FLOPs each kind does, so a low MFU points at its cause (slow GEMMs or time spent
outside them).

On a GPU the times are CUDA kernel times from torch.profiler; on the CPU they are the self
times of the aten ops, which is how the tests exercise this code.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

KINDS = ("convolution", "matmul", "attention", "other")
_MM_OPS = {"mm", "addmm", "bmm", "baddbmm", "linear", "matmul", "_addmm_activation"}


def kernel_kind(name: str) -> str:
    """The kind of a CUDA kernel or aten op, from its name. Inductor's Triton kernels are named
    after the aten ops they fuse, so they are sorted first. Attention is tested next (cuDNN's
    fused attention kernels are named like convolutions: ..._sdpa_..._fprop_...), then
    convolution (cuDNN's implicit-GEMM kernels say fprop/dgrad/wgrad), then matmul."""
    n = name.lower()
    if n.startswith("triton_"):  # Inductor's own kernels: templates are GEMMs, the rest fused pointwise or
        return "matmul" if n.startswith("triton_tem") else "other"  # reductions (a "fused_convolution" is its bias add)
    if any(s in n for s in ("flash", "fmha", "attention", "sdpa", "attn")):
        return "attention"
    if any(s in n for s in ("conv", "implicit_gemm", "fprop", "dgrad", "wgrad")):
        return "convolution"
    if any(s in n for s in ("gemm", "xmma", "cutlass", "nvjet", "cublas", "triton_tem")):
        return "matmul"
    op = n.split("::")[-1].removeprefix("aten.").split(".")[0]  # aten::mm (profiler), aten.mm.default (counter)
    if op in _MM_OPS:
        return "matmul"
    return "other"


def flops_by_kind(fn) -> dict[str, int]:
    """FLOPs of one call of fn per kind, as torch.utils.flop_counter counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    out = dict.fromkeys(KINDS, 0)
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        out[kernel_kind(str(op))] += int(n)
    return out


def _self_time_us(evt, cuda: bool) -> float:
    if cuda:
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(evt, attr):
                return float(getattr(evt, attr))
        return 0.0
    return float(evt.self_cpu_time_total)


def time_by_kind(fn, cuda: bool, calls: int = 2) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Seconds per call by kind, and the ten costliest kernels (name, seconds per call)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if cuda:
            torch.cuda.synchronize()
    by_kind: dict[str, float] = defaultdict(float)
    kernels = []
    for evt in prof.key_averages():
        is_kernel = getattr(evt, "device_type", None) == torch.autograd.DeviceType.CUDA if cuda else \
            evt.key.startswith("aten::")
        if not is_kernel:
            continue
        s = _self_time_us(evt, cuda) / 1e6 / calls
        if s <= 0:
            continue
        by_kind[kernel_kind(evt.key)] += s
        kernels.append((evt.key, s))
    kernels.sort(key=lambda kv: -kv[1])
    return {k: by_kind.get(k, 0.0) for k in KINDS}, kernels[:10]


def breakdown(fn, cuda: bool, peak: float | None, calls: int = 2, flops: dict | None = None) -> dict:
    """{kind: {seconds, share, tflop, tflops, mfu}} plus 'top' kernels; fn is warm already. Pass
    `flops` (flops_by_kind of the eager equivalent) for a compiled fn: under the counter's
    dispatch mode a compiled function does not run its compiled code."""
    flops = flops if flops is not None else flops_by_kind(fn)
    times, top = time_by_kind(fn, cuda, calls)
    total = sum(times.values()) or 1.0
    rows = {}
    for k in KINDS:
        s = times[k]
        rate = flops[k] / s if s > 0 else None
        rows[k] = {"seconds": s, "share": s / total, "tflop": flops[k] / 1e12,
                   "tflops": rate / 1e12 if rate else None, "mfu": rate / peak if rate and peak else None}
    return {"kinds": rows, "top": top, "seconds": total, "tflop": sum(flops.values()) / 1e12}


def format_breakdown(b: dict, indent: str = "    ") -> str:
    lines = [f"{indent}{'kind':12s} {'ms':>8s} {'share':>6s} {'TFLOP':>7s} {'TFLOP/s':>8s} {'MFU':>6s}"]
    for k, r in b["kinds"].items():
        lines.append(f"{indent}{k:12s} {1e3 * r['seconds']:8.1f} {100 * r['share']:5.1f}% {r['tflop']:7.2f} "
                     + (f"{r['tflops']:8.1f}" if r["tflops"] else f"{'-':>8s}")
                     + (f" {100 * r['mfu']:5.1f}%" if r["mfu"] else f" {'-':>6s}"))
    lines.append(f"{indent}costliest kernels:")
    lines += [f"{indent}  {1e3 * s:8.2f} ms  {kernel_kind(n):11s} {n[:90]}" for n, s in b["top"]]
    return "\n".join(lines)
