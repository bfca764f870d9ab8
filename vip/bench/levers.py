"""Denoiser speed levers, each switchable and restored on exit, so one process can measure them
side by side on the same weights: cuDNN autotuning, a forced attention kernel, fused QKV
projections, short-sequence attention in the motion modules, and torch.compile with default or
tuned Inductor settings.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

ATTENTION = ("flash", "efficient", "cudnn", "math")
COMPILE = ("default", "tuned")


@dataclass(frozen=True)
class Levers:
    name: str = "plain"
    cudnn_benchmark: bool = False
    attention: str | None = None  # None: PyTorch's own choice per call; else one SDPA backend for every call
    fused_qkv: bool = False  # diffusers' fuse_qkv_projections(): one GEMM for q, k and v
    short_attention: bool = False  # motion modules' attention written out (vip/models/short_attention.py)
    compile: str | None = None  # None | default | tuned (diffusers' recommended Inductor flags)

    def __post_init__(self):
        if self.attention is not None and self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION} or None, got {self.attention!r}")
        if self.compile is not None and self.compile not in COMPILE:
            raise ValueError(f"compile must be one of {COMPILE} or None, got {self.compile!r}")


# What diffusers' torch.compile guide sets for SD U-Nets (without max-autotune, whose compile time
# would be paid per shape): 1x1 convolutions as matmuls, coordinate-descent tuning of Triton kernels.
TUNED_INDUCTOR = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
                  "coordinate_descent_check_all_directions": True}


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend
    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]


@contextmanager
def call_context(lv: Levers):
    """What must be active around every call (and the compiling first one)."""
    with ExitStack() as stack:
        if lv.attention is not None:
            from torch.nn.attention import sdpa_kernel
            stack.enter_context(sdpa_kernel(_sdpa_backend(lv.attention)))
        if lv.compile == "tuned":
            stack.enter_context(torch._inductor.config.patch(TUNED_INDUCTOR))
        yield


@contextmanager
def applied(module: torch.nn.Module, lv: Levers):
    """Yields the callable to run (module, or a compiled wrapper of it) with lv's module-level
    levers applied; everything is undone on exit."""
    prev_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = lv.cudnn_benchmark
    fused, short = False, []
    try:
        if lv.fused_qkv and hasattr(module, "fuse_qkv_projections"):
            module.fuse_qkv_projections()
            fused = True
        if lv.short_attention:  # after fusing, which sets one processor everywhere
            from vip.models.short_attention import use_short_attention
            short = use_short_attention(module)
        fn = module
        if lv.compile is not None:
            torch._dynamo.reset()  # a graph compiled under other settings must not be reused
            compiled = torch.compile(module, dynamic=False)
            fn = lambda *a, **k: compiled(*a, **k)  # noqa: E731 (predict() tests `denoiser or unet`)
        yield fn
    finally:
        torch.backends.cudnn.benchmark = prev_bench
        if short:
            from vip.models.short_attention import restore
            restore(short)
        if fused:
            _unfuse(module)
        if lv.compile is not None:
            torch._dynamo.reset()


def _unfuse(module: torch.nn.Module) -> None:
    """diffusers' unfuse_qkv_projections() puts the processors back but keeps the fused weights
    (a second copy of every attention projection) and the flag; drop both."""
    module.unfuse_qkv_projections()
    for m in module.modules():
        if getattr(m, "fused_projections", False):
            for name in ("to_qkv", "to_kv", "to_added_qkv"):
                if hasattr(m, name):
                    delattr(m, name)
            m.fused_projections = False


def parse(spec: str) -> Levers:
    """'name:key=value,key=value' -> Levers, e.g. 'fast:cudnn_benchmark=1,compile=tuned'."""
    name, _, rest = spec.partition(":")
    kw: dict = {"name": name}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in Levers.__dataclass_fields__ or key == "name":
            raise ValueError(f"lever {item!r} in {spec!r}: expected key=value with key one of "
                             f"{[k for k in Levers.__dataclass_fields__ if k != 'name']}")
        if key in ("cudnn_benchmark", "fused_qkv", "short_attention"):
            kw[key] = value.lower() in ("1", "true", "yes", "on")
        else:
            kw[key] = None if value.lower() in ("", "none") else value
    return Levers(**kw)
