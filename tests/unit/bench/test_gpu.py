"""The GPU benchmark code on the CPU at tiny widths (AnimateDiff's layout, every width / 8), so
it cannot rot: gated leave-one-out equals switching units off one variant at a time, our sampler
equals diffusers' AnimateDiffPipeline, and the ReDPO bench trains."""
import numpy as np
import pytest
import torch

from vip.evaluate import evaluate
from vip.models.gates import UnitGates
from vip.bench import gpu as gpu_bench
from vip.steps.loo.engine import FULL, FastLoo, FastLooOptions
from vip.bench.flops import mfu, peak_flops
from vip.bench.standin_reward import StandInReward

SHAPE = gpu_bench.Shape(frames=2, height=64, width=64, steps=2, guidance=7.5, scale=8)
PROMPTS = gpu_bench.PROMPTS[:2]
SEEDS = [11, 12]


@pytest.fixture(scope="module")
def built():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only fight the other processes on this machine
    yield gpu_bench.build(SHAPE, "cpu")
    torch.set_num_threads(threads)


def test_real_layout_at_scale_one_has_the_published_counts():
    # parameter counts without allocating: SD1.5 U-Net + v1-5-2 adapter = 1312.7M, 21 motion modules
    from diffusers import UNetMotionModel

    from vip.models.motion_unet import motion_units
    from vip.bench import real_configs
    with torch.device("meta"):
        unet = UNetMotionModel.from_unet2d(real_configs.unet2d(), real_configs.motion_adapter())
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 1312.7
    assert len(motion_units(unet)) == 21


def test_gated_variants_in_shared_batches_equal_units_off_one_at_a_time(built):
    model, _ = built
    variants = [FULL] + model.units()[:3]
    reward = StandInReward()
    ref = np.stack([evaluate(model, reward, PROMPTS, SEEDS, 2, [] if v == FULL else [v]) for v in variants])
    # batches mix variants; the motion attention written out (the GPU default) computes the same
    with FastLoo(model, reward, FastLooOptions(batch_clips=3, short_attention=True)) as fl:
        got = fl.run(variants, PROMPTS, SEEDS)
    assert np.abs(ref[1:] - ref[0]).max() > 1e-3  # removing a unit changes the scores: the check has teeth
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert all(type(m).__name__ != "GatedUnit" for m in model.unet.modules())  # gates gone on exit
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in model.unet.attn_processors.values())


def test_our_sampler_is_the_diffusers_pipeline_loop(built):
    model, parts = built
    variants = [FULL, model.units()[5]]
    reward = StandInReward()
    base, times = gpu_bench.pipeline_loo(parts, variants, PROMPTS, SEEDS, SHAPE, reward, "cpu")
    with FastLoo(model, reward, FastLooOptions(batch_clips=4)) as fl:
        ours = fl.run(variants, PROMPTS, SEEDS, SHAPE.steps, SHAPE.guidance)
    assert np.abs(base[1] - base[0]).max() > 1e-3
    np.testing.assert_allclose(ours, base, atol=1e-5)
    assert times["build"] > 0 and times["generate_and_score"] > 0


def test_gate_mask_is_updated_in_place(built):
    model, _ = built
    units = model.units()
    gates = UnitGates(model.unet, units)
    try:
        gates.set([[units[0]], []], "cpu")
        first = gates.mask.keep
        gates.set([[], [units[3]]], "cpu")
        assert gates.mask.keep is first  # a compiled graph keeps reading the same input tensor
        assert first.tolist()[1][3] is False and first[0].all() and first.sum() == 2 * len(units) - 1
        with pytest.raises(KeyError, match="no gate"):
            gates.set([["nope"]], "cpu")
    finally:
        gates.remove()
    assert model.units() == units


def test_redpo_bench_trains_the_policy_and_not_the_teacher(built):
    model, _ = built
    before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    configs = [{"name": "plain", "pairs": 1, "optimizer": "adamw"},
               {"name": "checkpointed", "pairs": 2, "optimizer": "adamw", "checkpointing": True}]
    rows = gpu_bench.bench_redpo(model, configs, steps=1, device="cpu")
    changed = sum(not torch.equal(before[n], p) for n, p in model.unet.named_parameters())
    assert changed > 0.5 * len(before)
    assert rows[0]["pairs_per_s"] > 0 and rows[1]["pairs_per_s"] > 0
    # model FLOPs per pair come from the non-checkpointed step and scale with the batch
    assert rows[1]["tflop_per_step"] == pytest.approx(2 * rows[0]["tflop_per_step"])


def test_forward_flops_scale_with_the_batch(built):
    model, _ = built
    assert gpu_bench.forward_flops(model, 4) == 2 * gpu_bench.forward_flops(model, 2) > 0


def test_peak_and_mfu():
    assert peak_flops("NVIDIA H100 80GB HBM3")[1] == 989e12
    assert peak_flops("NVIDIA H100 PCIe")[1] == 756e12
    assert peak_flops("NVIDIA H200")[1] == 989e12
    assert mfu(494.5e12, 1.0, 989e12) == pytest.approx(0.5)
    assert mfu(1.0, 1.0, None) is None


@pytest.mark.slow  # Dynamo traces every region, forward and backward: a minute on 2 shared cores
def test_compiled_redpo_step_matches_eager(built):
    """The bench's compiled row: regions traced and compiled with every block checkpointed, then undone.
    Dynamo and AOT autograd with the aot_eager backend (no code generation; docs/decisions.md says why
    the suite compiles nothing with Inductor on the CPU)."""
    import copy
    model, _ = built
    # same weights, same data (each configuration seeds its own generator): the first step's loss
    # is of the initial weights, so eager and compiled must agree
    eager = gpu_bench.bench_redpo(copy.deepcopy(model), [{"name": "eager", "pairs": 1, "optimizer": "adamw"}],
                                  steps=1, device="cpu")
    compiled_model = copy.deepcopy(model)
    # compiled with every block checkpointed: the checkpoint sits inside each compiled region
    rows = gpu_bench.bench_redpo(compiled_model, [{"name": "compiled", "pairs": 1, "optimizer": "adamw",
                                                   "compile": "aot_eager", "checkpointing": True}],
                               steps=1, device="cpu")
    assert "error" not in rows[0], rows[0].get("error")
    assert rows[0]["compiled"] and rows[0]["pairs_per_s"] > 0 and rows[0]["compile_s"] is not None
    # beta = 5000 turns float noise into loss: the loss moves by about beta / 4 x the mse difference, so
    # 2e-3 allows a compiled-vs-eager mse difference of 1.6e-6 (seen: 1.2e-7 on CI's CPU, loss off by
    # 1.5e-4); a wrong compiled graph moves the mse by orders of magnitude more
    assert rows[0]["first_loss"] == pytest.approx(eager[0]["first_loss"], abs=2e-3)
    # regions are uncompiled and unwrapped afterwards: the model is left as it was found
    from vip.train.regions import regions
    assert all(m._compiled_call_impl is None for m in regions(compiled_model.unet))
    from vip.train.checkpointing import blocks, is_checkpointed
    assert not any(is_checkpointed(m) for m in blocks(compiled_model.unet))


def test_denoiser_sweep_fuses_qkv_and_undoes_it_and_a_refused_lever_is_a_row(built):
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    from vip.bench import levers
    model, _ = built
    processors = dict(model.unet.attn_processors)
    seen = {}
    specs = [levers.Levers("plain"), levers.Levers("fused", fused_qkv=True),
             levers.Levers("cudnn attention", attention="cudnn"), levers.Levers("math", attention="math")]

    def on_row(r):  # while a row's levers are applied the module is fused; note what ran
        seen[r["what"]] = r
    with FastLoo(model, StandInReward(), FastLooOptions()) as fl:
        orig = fl.model.unet.fuse_qkv_projections

        def fuse():
            orig()
            seen["fused processors"] = {type(p) for p in fl.model.unet.attn_processors.values()}
        fl.model.unet.fuse_qkv_projections = fuse
        try:
            rows = gpu_bench.sweep_denoiser(fl, 2, 1e-3, specs, iters=1, profile=True, on_row=on_row)
        finally:
            del fl.model.unet.fuse_qkv_projections
    assert [r["what"] for r in rows] == ["plain", "fused", "cudnn attention", "math"]
    assert seen["fused processors"] == {FusedAttnProcessor2_0}
    assert "error" in rows[2] and "s_per_forward" not in rows[2]  # no cuDNN attention on a CPU
    assert all("error" not in rows[i] and rows[i]["s_per_forward"] > 0 for i in (0, 1, 3))
    assert rows[0]["breakdown"]["kinds"]["convolution"]["tflop"] > 0
    # unfused afterwards: the processors are the ones found, and no fused weights linger
    assert {k: type(v) for k, v in model.unet.attn_processors.items()} == {k: type(v) for k, v in processors.items()}
    assert not any(getattr(m, "fused_projections", False) for m in model.unet.modules())


def test_short_sequence_attention_equals_sdpa_in_every_motion_module(built):
    from vip.models import short_attention
    from vip.models.short_attention import ShortSequenceAttnProcessor
    model, _ = built
    unet = model.unet
    attns = short_attention.motion_attentions(unet)
    assert len(attns) == 2 * len(model.units())  # two temporal self-attentions per motion module
    x = torch.randn(2, *model.latent_shape)
    text = model.encode_prompts(PROMPTS[:1] * 2)
    t = torch.tensor([10, 700])
    fast_calls = []
    orig = ShortSequenceAttnProcessor.__call__

    def spy(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *a, **k):
        fast_calls.append(encoder_hidden_states is None and attention_mask is None)
        return orig(self, attn, hidden_states, encoder_hidden_states, attention_mask, *a, **k)
    with torch.no_grad():
        ref = model.predict(x, t, text)
        saved = short_attention.use_short_attention(unet)
        ShortSequenceAttnProcessor.__call__ = spy
        try:
            got = model.predict(x, t, text)
        finally:
            ShortSequenceAttnProcessor.__call__ = orig
            short_attention.restore(saved)
        again = model.predict(x, t, text)
    assert len(fast_calls) == len(attns) and all(fast_calls)  # every motion attention took the written-out path
    assert (got - ref).abs().max() < 1e-5 * ref.abs().max() + 1e-6
    assert torch.equal(again, ref)  # restored: SDPA again
    assert all(type(a.processor).__name__ != "ShortSequenceAttnProcessor" for a in attns)


@pytest.mark.parametrize("name", ["wan2.1-1.3b", "videocrafter2"])
def test_backbone_denoiser_bench_runs_the_published_architecture_small(name):
    from vip.bench import backbones
    from vip.bench.levers import Levers
    shape = gpu_bench.Shape(frames=5, height=32, width=32, scale=8)
    out = gpu_bench.bench_backbone(name, shape, 4, [Levers("eager")], iters=1, device="cpu", profile=True)
    base, eager = out["rows"]
    assert base["batch"] == 2 and eager["batch"] == 4 and "error" not in eager
    assert out["tflop_per_sample"] > 0 and eager["tflop_per_forward"] == pytest.approx(4 * out["tflop_per_sample"])
    kinds = eager["breakdown"]["kinds"]
    # the counter has no formula for the CPU's fused attention op: its time shows, its FLOPs do not
    assert kinds["matmul"]["tflop"] > 0 and kinds["attention"]["seconds"] > 0
    if name == "videocrafter2":
        assert kinds["convolution"]["tflop"] > 0
    d = backbones.build(name, 5, 32, 32, 8)
    assert d.latent_shape[1] == (2 if name.startswith("wan") else 5)  # Wan's VAE: 1 + 4k frames -> 1 + k
    with pytest.raises(ValueError, match="backbone must be one of"):
        backbones.build("sdxl", 5, 32, 32, 8)


def test_published_sizes_of_the_other_backbones():
    from vip.bench import backbones
    with torch.device("meta"):
        wan = backbones.build("wan2.1-1.3b", 17, 256, 256, device="meta").module
        vc2 = backbones.build("videocrafter2", 16, 320, 512, device="meta").module
    assert round(sum(p.numel() for p in wan.parameters()) / 1e9, 2) == 1.42  # "1.3B" counts without embeddings
    assert 1.2e9 < sum(p.numel() for p in vc2.parameters()) < 1.5e9


def test_checkpointing_every_block_keeps_keys_values_and_gradients(built):
    from vip.train.checkpointing import blocks, checkpoint_every_block, is_checkpointed, undo
    model, _ = built
    unet = model.unet.train()
    needed = [p.requires_grad for p in unet.parameters()]
    unet.requires_grad_(True)
    keys = list(unet.state_dict())
    x = torch.randn(1, *model.latent_shape)
    text = model.encode_prompts(PROMPTS[:1])
    t = torch.tensor([300])

    def loss_and_grads():
        unet.zero_grad(set_to_none=True)
        loss = model.predict(x, t, text).square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None}
    try:
        ref_loss, ref = loss_and_grads()
        checkpoint_every_block(unet)
        n = sum(is_checkpointed(m) for m in blocks(unet))
        assert n == len(list(blocks(unet))) > 2 * len(model.units())  # ResNets, attentions and motion modules
        assert list(unet.state_dict()) == keys  # a saved student keeps the published names
        loss, got = loss_and_grads()
        assert torch.equal(loss, ref_loss) and got.keys() == ref.keys()
        assert all(torch.allclose(got[k], ref[k], atol=1e-6) for k in ref)
    finally:
        undo(unet)
        unet.zero_grad(set_to_none=True)
        unet.eval()
        for p, r in zip(unet.parameters(), needed):
            p.requires_grad_(r)
    assert not any(is_checkpointed(m) for m in blocks(unet))


def test_bf16_decode_is_close_and_the_vae_is_restored(built):
    model, _ = built
    variants = [FULL, model.units()[2]]
    reward = StandInReward()
    with FastLoo(model, reward, FastLooOptions(batch_clips=4)) as fl:
        ref = fl.run(variants, PROMPTS, SEEDS)
    with FastLoo(model, reward, FastLooOptions(batch_clips=4, decode_dtype="bfloat16")) as fl:
        assert model.codec.vae.dtype == torch.bfloat16
        got = fl.run(variants, PROMPTS, SEEDS)
    assert model.codec.vae.dtype == torch.float32
    assert not np.array_equal(got, ref)  # it did decode in bf16
    np.testing.assert_allclose(got, ref, atol=0.02)
