"""VideoCrafter2 against the reference lvdm code (scripts/goldens/videocrafter2.py ran AILab-CVC/VideoCrafter's
LatentDiffusion, UNetModel, FrozenOpenCLIPEmbedder and batch_ddim_sampling on these small random weights, in its
own environment). The weights are committed as a recipe (weights.json: published key, shape, kind, sum; the
script's docstring says why); the test writes them out as a model.ckpt in the published layout and our
converter loads that as a user's conversion does (convert.read_checkpoint + load_components, the schedule check
included). Compared: the tokenizer's ids exactly, the text embeddings, U-Net forwards and the DDIM latents
(eta 1 as published, and eta 0) within 1e-4."""
import json
import math
import zlib
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from vip.models.videocrafter2 import build, convert
from vip.models.videocrafter2.model import VideoCrafter2Model
from vip.models.videocrafter2.scheduler import VideoCrafterDDIMScheduler
from vip.models.videocrafter2.unet3d import VideoCrafterUNet3D

GOLDEN = Path(__file__).parent / "videocrafter2"
S = json.loads((GOLDEN / "settings.json").read_text())
ATOL = 1e-4
# The DDIM latents: relative to the clip's largest value. A forward differs from lvdm's by ~2e-6 (relative; kernel
# order: lvdm's conv1d init_attn projections against our Linear, einsum attention against SDPA), and each
# step multiplies that by 2 * guidance - 1 = 23 (CFG 12) and by 1 / (sqrt(a_t) * s_t) (~12 at t=801): over the
# golden's 5 steps 3.6e-4 on latents up to 55 (random weights, 15x a real clip's scale), 6.6e-6 relative. A
# wrong formula (sigma, scale, CFG, fps) is off by 1e-2 or more.
LATENT_RTOL = 2e-5


def our_unet_config(lvdm: dict) -> dict:
    """lvdm's unet_config.params in our VideoCrafterUNet3D's terms (lvdm: GroupNorm(32) everywhere, init_attn 8 heads)."""
    assert lvdm["use_linear"] and lvdm["temporal_selfatt_only"] and not lvdm["use_relative_position"]
    assert not lvdm["use_causal_attention"] and lvdm["addition_attention"] and lvdm["fps_cond"]
    return dict(in_channels=lvdm["in_channels"], out_channels=lvdm["out_channels"],
                model_channels=lvdm["model_channels"], channel_mult=tuple(lvdm["channel_mult"]),
                num_res_blocks=lvdm["num_res_blocks"], attention_resolutions=tuple(lvdm["attention_resolutions"]),
                num_head_channels=lvdm["num_head_channels"], transformer_depth=lvdm["transformer_depth"],
                context_dim=lvdm["context_dim"], norm_num_groups=32, temporal_conv=lvdm["temporal_conv"],
                temporal_attention=lvdm["temporal_attention"], addition_attention_heads=8)


def materialize(key: str, shape: list[int], kind: str, seed: int) -> torch.Tensor:
    """scripts/goldens/videocrafter2.py's materialize (the sums in weights.json check that both agree)."""
    r = torch.randn(shape, generator=torch.Generator().manual_seed(seed + zlib.crc32(key.encode())))
    if kind == "norm_weight":
        return 1 + 0.1 * r
    if kind == "matrix":
        return r / math.sqrt(math.prod(shape[1:]))
    return 0.1 * r


@pytest.fixture(scope="module")
def ref():
    return load_file(GOLDEN / "outputs.safetensors")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The golden's model.ckpt: {"state_dict": ...} as LatentDiffusion saves it."""
    recipe = json.loads((GOLDEN / "weights.json").read_text())
    sd = {}
    for key, (shape, kind, total) in recipe["tensors"].items():
        sd[key] = materialize(key, shape, kind, recipe["seed"])
        assert math.isclose(sd[key].double().sum().item(), total, rel_tol=1e-9, abs_tol=1e-9), key
    sd.update(load_file(GOLDEN / "buffers.safetensors"))
    path = tmp_path_factory.mktemp("videocrafter2") / "model.ckpt"
    torch.save({"state_dict": sd}, path)
    return path


@pytest.fixture(scope="module")
def model(ckpt):
    sd = convert.read_checkpoint(ckpt)
    torch.manual_seed(0)
    vae = AutoencoderKL(**build.TINY_VAE)  # the golden has no VAE: fill first_stage_model.* from our own tiny one
    sd.update({convert.VAE_PREFIX + k: v for k, v in
               convert.to_published(vae.state_dict(), convert.vae_links(vae)).items()})
    tok = convert.prepare_tokenizer(GOLDEN / "tokenizer", max_length=S["context_length"])
    t = S["clip"]["text_cfg"]
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=t["vocab_size"], hidden_size=t["width"], intermediate_size=4 * t["width"],
        num_hidden_layers=S["open_clip_layers"] - 1, num_attention_heads=t["heads"],
        max_position_embeddings=t["context_length"], hidden_act="gelu", layer_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0))
    unet = VideoCrafterUNet3D(**our_unet_config(S["unet"]))
    sched = VideoCrafterDDIMScheduler()
    convert.load_components(sd, unet, vae, text, sched, text_layers=S["open_clip_layers"])
    size = S["latent"] * 2 ** (len(build.TINY_VAE["block_out_channels"]) - 1)
    meta = dict(build.PUBLISHED_META, frames=S["frames"], height=size, width=size, steps=S["steps"],
                guidance=S["guidance"], fps=S["fps"])
    return VideoCrafter2Model(unet.float(), vae.float(), text.float(), tok, sched, meta)


def test_golden_data_vary(ref):
    assert (ref["text_cond"][0] - ref["text_cond"][1]).abs().max() > 0.1
    assert (ref["text_cond"][0] - ref["text_uncond"][0]).abs().max() > 0.1
    eps = ref["fwd_eps"]
    assert eps.std() > 0.1 and (eps[0] - eps[1]).abs().max() > 0.1
    assert (eps[0, :, 0] - eps[0, :, 1]).abs().max() > 0.1  # frames differ
    assert torch.equal(ref["fwd_eps_int_fps"][0], eps[0])  # fps 28 both times
    assert (ref["fwd_eps_int_fps"][1] - eps[1]).abs().max() > 0.05  # fps 28 against 8: the fps embedding shows
    assert (ref["fwd_eps_t501"] - eps).abs().amax(dim=(1, 2, 3, 4)).min() > 0.05  # the timestep shows
    for eta in ("1", "0"):
        lat = [ref[f"latents_eta{eta}_{i}"] for i in range(2)]
        assert lat[0].std() > 0.1 and (lat[0] - lat[1]).abs().max() > 0.1
    assert (ref["latents_eta1_0"] - ref["latents_eta0_0"]).abs().max() > 0.1  # the step noise matters
    assert ref["token_ids"].unique().numel() > 20


def test_golden_schedule(model, ref):
    """lvdm's own buffers (DDPM.register_schedule, LatentDiffusion scale_arr with its 1400 entries) and its DDIM
    timesteps: load_components already ran check_schedule on the ckpt (1e-5); ours are lvdm's to the bit."""
    sd = load_file(GOLDEN / "buffers.safetensors")
    sched = model.scheduler
    assert torch.equal(sched.betas, sd["betas"]) and torch.equal(sched.alphas_cumprod, sd["alphas_cumprod"])
    assert sd["scale_arr"].shape == (1400,)  # fix_scale_bug False: mid_step + num_timesteps entries
    torch.testing.assert_close(sched.scale, sd["scale_arr"][:1000], atol=1e-7, rtol=0)
    s = VideoCrafterDDIMScheduler()
    s.set_timesteps(S["steps"])
    assert s.timesteps.tolist() == ref["ddim_timesteps"].flip(0).tolist()


def test_golden_add_noise(model, ref):
    """Training's forward process: lvdm's q_sample with the signal scale."""
    got = model.scheduler.add_noise(ref["q_x0"], ref["q_noise"], ref["q_t"])
    assert (ref["q_sample"][1] - ref["q_sample"][2]).abs().max() > 0.1
    torch.testing.assert_close(got, ref["q_sample"], atol=ATOL, rtol=0)


def test_golden_tokenizer_and_text(model, ref):
    assert torch.equal(model.token_ids(S["tokenizer_prompts"]), ref["token_ids"])
    torch.testing.assert_close(model.encode_prompts(S["prompts"]), ref["text_cond"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.encode_prompts([""]), ref["text_uncond"], atol=ATOL, rtol=0)


def test_golden_tokenizer_from_a_pad_bang_config(model, ref, tmp_path):
    """Stable Diffusion 2's tokenizer folder (the converter's --tokenizer) names "!" its pad token: loaded as is,
    a CLIPTokenizer splits every "!" of a prompt out as that special token (id 0, where open_clip gives "!</w>")."""
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_text((GOLDEN / "tokenizer" / name).read_text())
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}))
    as_is = CLIPTokenizer.from_pretrained(tmp_path, model_max_length=S["context_length"])
    assert "!" in as_is.all_special_tokens and as_is("A Dog!").input_ids[-2] == 0  # the trap
    tok = convert.prepare_tokenizer(tmp_path, max_length=S["context_length"])
    other = VideoCrafter2Model(model.unet, model.vae, model.text_encoder, tok, model.scheduler, model.meta)
    assert torch.equal(other.token_ids(S["tokenizer_prompts"]), ref["token_ids"])
    other = VideoCrafter2Model(model.unet, model.vae, model.text_encoder, as_is, model.scheduler, model.meta)
    assert torch.equal(other.token_ids(S["tokenizer_prompts"]), ref["token_ids"])  # an older converted model


def test_golden_unet_forward(model, ref):
    with torch.no_grad():
        eps = model.unet(ref["fwd_x"], ref["fwd_t"], encoder_hidden_states=ref["fwd_context"], fps=ref["fwd_fps"])
        eps_int = model.unet(ref["fwd_x"], ref["fwd_t"], encoder_hidden_states=ref["fwd_context"], fps=S["fps"])
        eps_501 = model.unet(ref["fwd_x"], 501, encoder_hidden_states=ref["fwd_context"], fps=ref["fwd_fps"])
    torch.testing.assert_close(eps, ref["fwd_eps"], atol=ATOL, rtol=0)
    torch.testing.assert_close(eps_int, ref["fwd_eps_int_fps"], atol=ATOL, rtol=0)
    torch.testing.assert_close(eps_501, ref["fwd_eps_t501"], atol=ATOL, rtol=0)


def test_golden_noise_is_lvdms_stream(model, ref):
    """lvdm at batch 1 draws x_T then one z per step from the global RNG seeded like our per-sample generator."""
    for i, seed in enumerate(S["seeds"]):
        g = torch.Generator().manual_seed(seed)
        ours = torch.stack([torch.randn(model.latent_shape, generator=g) for _ in range(S["steps"] + 1)])
        assert torch.equal(ours, ref[f"noise_{i}"])


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_golden_ddim_latents(model, ref, eta):
    assert model.meta["eta"] == 1.0  # the published --ddim_eta
    model.meta["eta"] = eta
    try:
        got = model.sample_latents(S["prompts"], S["seeds"])  # both prompts in one batch; lvdm ran each alone
    finally:
        model.meta["eta"] = 1.0
    for i in range(len(S["prompts"])):
        want = ref[f"latents_eta{eta:g}_{i}"][0]
        err, scale = (got[i] - want).abs().max().item(), want.abs().max().item()
        assert err <= LATENT_RTOL * scale, (i, err, scale, err / scale)


def test_published_sampling_defaults():
    """Our defaults are run_text2video.sh's (guidance 12, 50 steps, eta 1, fps 28, 320x512) and 16 frames."""
    pub = S["published"]
    assert {k: build.PUBLISHED_META[k] for k in ("frames", "height", "width", "fps", "steps", "guidance", "eta")} \
        == {k: pub[k] for k in ("frames", "height", "width", "fps", "steps", "guidance", "eta")}
