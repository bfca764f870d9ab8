"""VideoCrafter2 backbone on a tiny random config of the published architecture."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from vip.config import ConfigError, ModelConfig
from vip.models.base import UnknownUnitError
from vip.models.videocrafter2 import VideoCrafter2Model, load
from vip.models.videocrafter2.build import TINY_META, TINY_UNET, tiny_components
from vip.models.videocrafter2.convert import export_checkpoint, load_components, read_checkpoint
from vip.models.videocrafter2.convert import main as convert_main
from vip.models.videocrafter2.model import resolve_dtype
from vip.models.videocrafter2.scheduler import VideoCrafterDDIMScheduler
from vip.models.videocrafter2.unet3d import VideoCrafterUNet3D
from vip.redpo import pair_loss

from helpers.tiny_backbones import one_torch_thread

PROMPTS = ["a red fox runs", "waves at dusk", "a city at night"]
SEEDS = [5, 6, 7]
# Worked out by hand from the block structure (docs/decisions.md): with channel_mult (1, 2)
# and 2 res blocks, input 3 downsamples, input 4 doubles channels, output 2 upsamples and
# output 3 halves them; every other block keeps its input's shape.
TINY_UNITS = ["input_blocks.1", "input_blocks.2", "input_blocks.5", "middle_block",
              "output_blocks.0", "output_blocks.1", "output_blocks.4", "output_blocks.5"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors are tiny: a second intra-op thread only adds waiting on a shared CPU (10x slower here)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def model(one_thread):
    torch.manual_seed(0)
    return VideoCrafter2Model(*tiny_components(), TINY_META)


@pytest.fixture(scope="module")
def batch(model):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, *model.latent_shape, generator=g)
    return x, torch.tensor([50, 800]), model.encode_prompts(PROMPTS[:2])


def out(model, batch):
    with torch.no_grad():
        return model.predict(*batch)


def test_units_are_the_shape_keeping_blocks(model):
    assert model.units() == TINY_UNITS
    params = model.unit_params()
    assert all(n > 0 for n in params.values()) and sum(params.values()) < model.num_params()


def test_real_size_unet_on_meta_matches_the_paper():
    with torch.device("meta"):
        unet = VideoCrafterUNet3D()
    n = sum(p.numel() for p in unet.parameters())
    # The paper: 1.413B. lvdm's own UNetModel built from inference_t2v_512_v2.0.yaml has the same
    # 1,413,284,420 parameters and the same 1484 state-dict keys and shapes (checked once).
    assert n == 1_413_284_420 and round(n / 1e9, 3) == 1.413
    model = VideoCrafter2Model.__new__(VideoCrafter2Model)
    model.unet = unet
    assert model.units() == ["input_blocks.1", "input_blocks.2", "input_blocks.5", "input_blocks.8", "input_blocks.10",
                             "input_blocks.11", "middle_block", "output_blocks.0", "output_blocks.1",
                             "output_blocks.3", "output_blocks.4", "output_blocks.7", "output_blocks.10",
                             "output_blocks.11"]


def test_real_size_published_key_names_on_meta():
    """Names and shapes read off lvdm's modules (openaimodel3d.py, ae_modules.py, open_clip), not off our code."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from vip.models.videocrafter2 import build
    from vip.models.videocrafter2.convert import text_links, to_published, unet_links, vae_links

    with torch.device("meta"):
        unet, vae = VideoCrafterUNet3D(), AutoencoderKL(**build.VAE)
        text = CLIPTextModel(CLIPTextConfig(**build.TEXT))
    u = to_published(unet.state_dict(), unet_links(unet))
    assert len(u) == 1484
    assert u["init_attn.0.proj_in.weight"].shape == (512, 320, 1)  # 8 heads x 64, conv1d projection
    assert u["input_blocks.1.0.temopral_conv.conv4.3.weight"].shape == (320, 320, 3, 1, 1)
    assert u["input_blocks.7.1.transformer_blocks.0.attn2.to_k.weight"].shape == (1280, 1024)
    assert u["middle_block.3.out_layers.3.weight"].shape == (1280, 1280, 3, 3)
    assert u["output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)  # level-3 upsampler after the ResBlock
    assert u["output_blocks.5.3.conv.weight"].shape == (1280, 1280, 3, 3)  # after ResBlock, spatial, temporal
    assert u["output_blocks.3.0.skip_connection.weight"].shape == (1280, 2560, 1, 1)
    assert u["fps_embedding.2.weight"].shape == (1280, 1280) and u["out.2.weight"].shape == (4, 320, 3, 3)
    v = to_published(vae.state_dict(), vae_links(vae))
    assert len(v) == 248 and v["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert v["decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)
    assert v["decoder.up.0.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)
    t = to_published(text.state_dict(), text_links(text))
    assert len(t) == 23 * 12 + 4 and t["transformer.resblocks.22.attn.in_proj_weight"].shape == (3072, 1024)
    assert t["positional_embedding"].shape == (77, 1024) and t["token_embedding.weight"].shape == (49408, 1024)


def test_disabling_changes_the_output_and_is_undone(model, batch):
    before = out(model, batch)
    for unit in ("input_blocks.5", "middle_block", "output_blocks.1"):
        with model.disabled([unit]):
            assert unit not in model.units()
            assert (out(model, batch) - before).abs().max() > 1e-4
    assert torch.equal(out(model, batch), before) and model.units() == TINY_UNITS
    with pytest.raises(RuntimeError):
        with model.disabled(["output_blocks.4"]):
            raise RuntimeError("boom")
    assert torch.equal(out(model, batch), before) and model.units() == TINY_UNITS


@settings(max_examples=15, deadline=None)
@given(st.sets(st.sampled_from(TINY_UNITS)))
def test_pruned_drops_exactly_the_units_parameters(model, units):
    units = sorted(units)
    student = model.pruned(units)
    assert student.num_params() == model.num_params() - sum(model.unit_params()[u] for u in units)
    assert student.units() == [u for u in TINY_UNITS if u not in units] and model.units() == TINY_UNITS


def test_pruned_copy_equals_disabled(model, batch):
    units = ["input_blocks.2", "output_blocks.0"]
    with model.disabled(units):
        expect = out(model, batch)
    assert torch.equal(out(model.pruned(units), batch), expect)


def test_other_families_units_are_refused(model):
    with pytest.raises(UnknownUnitError, match="down_blocks.1.motion_modules.0"):
        model.pruned(["down_blocks.1.motion_modules.0"])
    with pytest.raises(UnknownUnitError, match="input_blocks.3"):  # a downsampler cannot be an identity
        model.pruned(["input_blocks.3"])


def test_generation_is_fixed_per_seed_and_batch_independent(model):
    full = model.generate(PROMPTS, SEEDS)
    assert full.shape == (3, 4, 3, 16, 16) and 0 <= full.min() and full.max() <= 1
    alone = model.sample_latents(PROMPTS[1:2], SEEDS[1:2])
    assert torch.allclose(model.sample_latents(PROMPTS, SEEDS)[1], alone[0], rtol=1e-4, atol=1e-4)
    assert torch.equal(model.sample_latents(PROMPTS[1:2], SEEDS[1:2]), alone)
    assert (model.sample_latents(PROMPTS[1:2], [99]) - alone).abs().max() > 1e-2


def test_save_load_round_trip_is_bit_exact(model, batch, tmp_path):
    student = model.pruned(["middle_block", "output_blocks.4"])
    student.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "removed_units.json").read_text()) == ["middle_block", "output_blocks.4"]
    assert json.loads((tmp_path / "s" / "vip_model.json").read_text())["backbone"] == "videocrafter2"
    loaded = load(tmp_path / "s", ModelConfig(backbone="videocrafter2", steps=3, guidance=3.0, fps=8))
    assert loaded.units() == student.units() and loaded.meta["fps"] == 8 != student.meta["fps"]
    with torch.no_grad():
        assert (loaded.predict(*batch) - student.predict(*batch)).abs().max() > 1e-4  # fps conditions the U-Net
    loaded.meta["fps"] = student.meta["fps"]
    with torch.no_grad():
        assert torch.equal(loaded.predict(*batch), student.predict(*batch))
        assert torch.equal(loaded.encode_prompts(PROMPTS), student.encode_prompts(PROMPTS))


def test_load_names_what_is_wrong(model, tmp_path):
    model.pruned(["input_blocks.1"]).save(tmp_path / "m")
    (tmp_path / "m" / "removed_units.json").write_text("[]")  # claims nothing was removed
    with pytest.raises(ConfigError, match="input_blocks.1.resnet"):
        VideoCrafter2Model.load(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "vip_model.json").read_text())
    (tmp_path / "m" / "vip_model.json").write_text(json.dumps(dict(meta, backbone="animatediff")))
    with pytest.raises(ConfigError, match="animatediff"):
        VideoCrafter2Model.load(tmp_path / "m")
    (tmp_path / "m" / "vae" / "config.json").unlink()
    with pytest.raises(ConfigError, match="vae/config.json is missing"):
        VideoCrafter2Model.load(tmp_path / "m")


def test_dtype_rules():
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda") == torch.bfloat16
    with pytest.raises(ConfigError, match="float16 is a dtype the device .cpu. cannot run"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(ConfigError, match="model.dtype"):
        resolve_dtype("int8", "cpu")


def published_schedule() -> dict:
    """The DDPM buffers as lvdm computes them (make_beta_schedule 'linear' + LatentDiffusion use_scale)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    scale = np.concatenate([np.linspace(1.0, 0.7, 400), np.full(1000, 0.7)])  # the 'scale bug' length
    return {"betas": torch.tensor(betas), "alphas_cumprod": torch.tensor(np.cumprod(1 - betas)),
            "scale_arr": torch.tensor(scale, dtype=torch.float32)}


def fresh(seed):
    torch.manual_seed(seed)
    return tiny_components()


def test_converter_round_trip_is_bit_exact(model, batch, tmp_path):
    sd = export_checkpoint(model.unet, model.vae, model.text_encoder)
    assert "model.diffusion_model.input_blocks.1.0.temopral_conv.conv1.2.weight" in sd  # lvdm's names, typo included
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in sd
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in sd
    sd.update(published_schedule())
    # what the published text tower has and VideoCrafter does not use: ignored
    sd["cond_stage_model.model.text_projection"] = torch.zeros(16, 16)
    sd["cond_stage_model.model.transformer.resblocks.2.ln_1.weight"] = torch.zeros(16)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "model.ckpt")  # Lightning's layout
    sd = read_checkpoint(tmp_path / "model.ckpt")
    unet, vae, text, tok, sched = fresh(1)
    assert not torch.equal(unet.conv_out.weight, model.unet.conv_out.weight)
    load_components(sd, unet, vae, text, sched, text_layers=3)
    other = VideoCrafter2Model(unet, vae, text, tok, sched, TINY_META)
    with torch.no_grad():
        assert torch.equal(other.predict(*batch), model.predict(*batch))
        assert torch.equal(other.encode_prompts(PROMPTS), model.encode_prompts(PROMPTS))
        z = batch[0][:1]
        assert torch.equal(other.decode(z), model.decode(z))
    other.save(tmp_path / "converted")  # converted tensors save (no shared storage) and load back
    with torch.no_grad():
        assert torch.equal(VideoCrafter2Model.load(tmp_path / "converted").predict(*batch), model.predict(*batch))


def test_convert_cli_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    (tmp_path / "model.ckpt").write_bytes(b"not a pickle")
    assert convert_main([str(tmp_path / "model.ckpt"), str(tmp_path / "out"), "--tokenizer", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.ckpt" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit, named", [
    (lambda sd: sd.pop("model.diffusion_model.output_blocks.4.2.proj_in.weight"), "output_blocks.4.2.proj_in.weight"),
    (lambda sd: sd.update({"model.diffusion_model.input_blocks.1.3.weight": torch.zeros(1)}), "input_blocks.1.3.weight"),
    (lambda sd: sd.update({"first_stage_model.decoder.conv_in.weight": torch.zeros(2, 2, 3, 3)}), "decoder.conv_in.weight"),
    (lambda sd: sd.pop("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_bias"), "resblocks.1.attn.in_proj_bias"),
    (lambda sd: sd.update({"some_other_model.weight": torch.zeros(1)}), "some_other_model.weight"),
])
def test_converter_names_the_first_bad_key(model, edit, named):
    sd = export_checkpoint(model.unet, model.vae, model.text_encoder)
    edit(sd)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_components(sd, *[c for i, c in enumerate(fresh(2)) if i != 3])


def test_converter_checks_the_noise_schedule(model):
    sd = export_checkpoint(model.unet, model.vae, model.text_encoder)
    betas = np.linspace(1e-4, 0.02, 1000)  # SD1's linear schedule: not VideoCrafter2's
    sd["alphas_cumprod"] = torch.tensor(np.cumprod(1 - betas))
    with pytest.raises(ConfigError, match="alphas_cumprod"):
        load_components(sd, *[c for i, c in enumerate(fresh(2)) if i != 3])


def test_scheduler_follows_lvdm_scaled_ddim():
    s = VideoCrafterDDIMScheduler()
    ref = published_schedule()
    a, scale = ref["alphas_cumprod"].float(), ref["scale_arr"]
    x0, eps = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    t = torch.tensor([0, 250, 700])
    shape = (-1, 1, 1, 1, 1)
    expect = a[t].sqrt().reshape(shape) * scale[t].reshape(shape) * x0 + (1 - a[t]).sqrt().reshape(shape) * eps
    assert torch.allclose(s.add_noise(x0, eps, t), expect, atol=1e-5)
    # one deterministic DDIM step from t=221 to t=201 (50 steps, lvdm's timesteps 1, 21, ..., 981)
    s.set_timesteps(50)
    assert s.timesteps[0] == 981 and s.timesteps[-1] == 1
    xt = torch.randn(1, 4, 2, 2, 2)
    pred_x0 = (xt - (1 - a[221]).sqrt() * eps[:1]) / a[221].sqrt() / scale[221]
    expect = a[201].sqrt() * scale[201] * pred_x0 + (1 - a[201]).sqrt() * eps[:1]
    assert torch.allclose(s.step(eps[:1], 221, xt).prev_sample, expect, atol=1e-5)


def test_one_redpo_step_lowers_the_loss(model):
    teacher, student = model, model.pruned(["middle_block"])
    g = torch.Generator().manual_seed(3)
    x_w, x_l = torch.randn(2, *model.latent_shape, generator=g), torch.randn(2, *model.latent_shape, generator=g)
    noise, t = torch.randn(x_w.shape, generator=g), torch.tensor([100, 600])
    text = model.encode_prompts(PROMPTS[:2])

    def loss():
        rep = lambda x: text.repeat(x.shape[0] // 2, 1, 1)  # noqa: E731
        return pair_loss(lambda x, t_: student.predict(x, t_, rep(x)), lambda x, t_: teacher.predict(x, t_, rep(x)),
                         student.scheduler, x_w, x_l, noise, t, beta=5000.0, w_sft=1e3)

    net = student.trainable_module()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    with torch.no_grad():
        before = loss().loss.item()
    net.train()
    res = loss()
    res.loss.backward()
    opt.step()
    net.eval()
    with torch.no_grad():
        after = loss().loss.item()
    assert after < 0.95 * before, (before, after)
    assert all(p.grad is None for p in teacher.unet.parameters())


def test_bf16_unet_runs_with_float32_norms_and_stays_close():
    """lvdm's GroupNorm32 normalises in float32 whatever the weights' dtype; with bf16 weights that
    needs float32 affine parameters too (group_norm refuses the mix): a bf16 U-Net must run."""
    torch.manual_seed(0)
    unet = VideoCrafterUNet3D(**TINY_UNET).eval()
    x = torch.randn(2, 4, 3, 8, 8)
    text = torch.randn(2, 8, TINY_UNET["context_dim"])
    with torch.no_grad():
        ref = unet(x, torch.tensor([10, 500]), text)
        low = unet.to(torch.bfloat16)(x.bfloat16(), torch.tensor([10, 500]), text.bfloat16())
    assert low.dtype == torch.bfloat16 and torch.isfinite(low.float()).all()
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()
