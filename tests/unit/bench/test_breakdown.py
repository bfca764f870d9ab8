"""Kernel kinds, FLOPs per kind and the lever switches of the GPU benchmarks, on the CPU."""
import pytest
import torch

from vip.bench import breakdown, levers


@pytest.mark.parametrize("name, kind", [
    ("aten.mm.default", "matmul"), ("aten::addmm", "matmul"), ("aten.bmm.default", "matmul"),
    ("aten.convolution.default", "convolution"), ("aten::mkldnn_convolution", "convolution"),
    ("aten._scaled_dot_product_flash_attention.default", "attention"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
    ("sm90_xmma_dgrad_implicit_gemm_bf16bf16", "convolution"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNN", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
    ("triton_poi_fused_add_native_group_norm_0", "other"), ("triton_tem_fused_mm_0", "matmul"),
    ("triton_poi_fused_convolution_silu_3", "other"), ("triton_per_fused__softmax_attention_7", "other"),
    ("void at::native::elementwise_kernel<128, 4>", "other"), ("aten::all", "other"),
])
def test_kernel_kind(name, kind):
    assert breakdown.kernel_kind(name) == kind


def test_flops_and_time_by_kind_of_a_conv_and_a_matmul():
    x = torch.randn(2, 8, 16, 16)
    w = torch.randn(12, 8, 3, 3)
    a, b = torch.randn(64, 32), torch.randn(32, 48)

    def fn():
        torch.nn.functional.conv2d(x, w, padding=1)
        a @ b

    flops = breakdown.flops_by_kind(fn)
    assert flops["convolution"] == 2 * 2 * 12 * 16 * 16 * 8 * 9
    assert flops["matmul"] == 2 * 64 * 32 * 48
    assert flops["attention"] == 0 and flops["other"] == 0
    out = breakdown.breakdown(fn, cuda=False, peak=None, calls=3)
    kinds = out["kinds"]
    assert kinds["convolution"]["seconds"] > 0 and kinds["matmul"]["seconds"] > 0
    assert sum(r["share"] for r in kinds.values()) == pytest.approx(1.0)
    assert kinds["matmul"]["tflops"] == pytest.approx(flops["matmul"] / kinds["matmul"]["seconds"] / 1e12)
    assert out["top"] and {breakdown.kernel_kind(n) for n, _ in out["top"]} >= {"convolution", "matmul"}
    assert "convolution" in breakdown.format_breakdown(out)


def test_levers_parse_and_refuse():
    lv = levers.parse("fast:cudnn_benchmark=1,attention=flash,fused_qkv=yes,compile=tuned")
    assert lv == levers.Levers("fast", cudnn_benchmark=True, attention="flash", fused_qkv=True, compile="tuned")
    assert levers.parse("s:short_attention=on").short_attention is True
    assert levers.parse("plain") == levers.Levers("plain")
    with pytest.raises(ValueError, match="key one of"):
        levers.parse("x:warp_speed=1")
    with pytest.raises(ValueError, match="attention must be one of"):
        levers.parse("x:attention=fastest")
    with pytest.raises(ValueError, match="compile must be one of"):
        levers.Levers("x", compile="max")


def test_applied_restores_the_cudnn_flag():
    before = torch.backends.cudnn.benchmark
    with levers.applied(torch.nn.Linear(2, 2), levers.Levers("x", cudnn_benchmark=not before)) as fn:
        assert torch.backends.cudnn.benchmark is (not before)
        assert isinstance(fn, torch.nn.Linear)
    assert torch.backends.cudnn.benchmark is before


def test_plot_breakdown_charts_profiled_rows_and_refuses_files_without_any(tmp_path):
    import json
    from argparse import Namespace

    from vip.bench.cli import plot_breakdowns
    x, w = torch.randn(2, 8, 16, 16), torch.randn(12, 8, 3, 3)
    b = breakdown.breakdown(lambda: torch.nn.functional.conv2d(x, w, padding=1), cuda=False, peak=None)
    good = tmp_path / "den.json"
    good.write_text(json.dumps({"rows": [{"what": "eager", "batch": 2, "breakdown": b},
                                         {"what": "unprofiled", "batch": 2}]}))
    out = tmp_path / "where.png"
    plot_breakdowns(Namespace(tables=[str(good)], out=str(out), title=""))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"rows": [{"what": "unprofiled", "batch": 2}]}))
    with pytest.raises(SystemExit, match="no row with a breakdown.*--profile"):
        plot_breakdowns(Namespace(tables=[str(bare)], out=str(tmp_path / "x.png"), title=""))
    assert not (tmp_path / "x.png").exists()
