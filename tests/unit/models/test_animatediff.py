"""AnimateDiff (v1-5-2 / v3 adapters, Lightning file) on tiny random configs of the same
architecture, written to disk in the published layouts and loaded through the registry."""
import json
import shutil

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from safetensors.torch import save_file

from vip import config
from vip.config import ConfigError, ModelConfig
from vip.models.base import UnknownUnitError
from vip.models.motion_unet import motion_units
from vip.models.registry import load_video_model
from helpers.redpo_step import one_redpo_step
from helpers.tiny_backbones import tiny_adapter, write_sd15

PROMPTS = ["a red circle moves left", "a blue square moves up"]
SEEDS = [3, 4]
FRAMES, SIZE = 4, 16
UNITS = ["mid_block.motion_modules.0", "up_blocks.0.motion_modules.1"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny SD1.5 directory (unet/, vae/, text_encoder/, tokenizer/), a v1-5-2-like and a
    v3-like adapter directory and a Lightning-style single file, as users download them
    (one seed: the adapters draw on after the SD1.5 weights)."""
    root = tmp_path_factory.mktemp("animatediff")
    write_sd15(root / "sd15", seed=0, vae_size=SIZE)
    tiny_adapter(mid=True, heads=2, groups=16, seed=None).save_pretrained(root / "v152")
    tiny_adapter(mid=False, heads=2, groups=16, seed=None).save_pretrained(root / "v3")
    # Lightning's published defaults: 8 heads, 32 groups (not readable from the tensors)
    save_file(tiny_adapter(mid=True, heads=8, groups=32, seed=None).state_dict(),
              root / "animatediff_lightning_2step_diffusers.safetensors")
    return root


def cfg_for(dirs, adapter="v152", **kw) -> ModelConfig:
    base = dict(backbone="animatediff", path=str(dirs / "sd15"), adapter=str(dirs / adapter), steps=2,
                guidance=2.0, frames=FRAMES, height=SIZE, width=SIZE)
    return ModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model(dirs):
    cfg = cfg_for(dirs)
    return load_video_model(cfg, cfg.path)


def test_units_are_the_adapters_motion_modules(model, dirs):
    # 1 layer per block: 2 down + 1 mid + 2x2 up (diffusers' up blocks have layers+1) = 7
    units = model.units()
    assert len(units) == 7 and "mid_block.motion_modules.0" in units
    assert units[0] == "down_blocks.0.motion_modules.0"
    adapter = MotionAdapter.from_pretrained(dirs / "v152")
    assert sum(model.unit_params().values()) == sum(p.numel() for p in adapter.parameters())
    # the adapter's weights, not random ones, sit in the motion modules
    got = model.unet.get_submodule("up_blocks.1.motion_modules.1").proj_in.weight
    assert torch.equal(got, adapter.up_blocks[1].motion_modules[1].proj_in.weight)
    v3 = load_video_model(cfg_for(dirs, "v3"), dirs / "sd15")
    assert len(v3.units()) == 6 and not any(u.startswith("mid_block") for u in v3.units())
    assert model.scheduler.config.beta_schedule == "linear" and model.scheduler.config.prediction_type == "epsilon"
    assert model.latent_shape == (4, FRAMES, SIZE // 2, SIZE // 2)  # the tiny VAE downsamples 2x


@pytest.fixture(scope="module")
def baseline(model):
    return model.sample_latents(PROMPTS, SEEDS)


@pytest.fixture(scope="module")
def without_units(model):
    with model.disabled(UNITS):
        assert not set(UNITS) & set(model.units())
        return model.sample_latents(PROMPTS, SEEDS)


def test_generation_is_fixed_by_seed_whatever_the_batch(model, baseline):
    clips = model.decode(baseline)
    assert clips.shape == (2, FRAMES, 3, SIZE, SIZE) and 0 <= clips.min() and clips.max() <= 1
    assert clips.std() > 0.01  # a real decode, not a constant
    alone = model.sample_latents(PROMPTS[1:], SEEDS[1:])
    assert torch.allclose(baseline[1], alone[0], atol=1e-5)
    assert (model.sample_latents(PROMPTS[:1], [99]) - baseline[:1]).abs().max() > 1e-3


def test_disabled_changes_the_output_and_restores_it_exactly(model, baseline, without_units):
    assert (without_units - baseline).abs().max() > 1e-3
    assert set(UNITS) <= set(model.units())
    assert torch.equal(model.sample_latents(PROMPTS, SEEDS), baseline)


def test_pruned_drops_params_and_round_trips_bit_exact(model, dirs, tmp_path, without_units):
    student = model.pruned(UNITS)
    assert student.num_params() == model.num_params() - sum(model.unit_params()[u] for u in UNITS)
    assert len(student.units()) == 5 and len(model.units()) == 7
    got = student.sample_latents(PROMPTS, SEEDS)
    assert torch.allclose(got, without_units, atol=1e-6)
    student.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "removed_units.json").read_text()) == UNITS
    assert json.loads((tmp_path / "s" / "vip_model.json").read_text())["backbone"] == "animatediff"
    cfg = cfg_for(dirs, path=str(tmp_path / "s"), adapter="")  # a saved student needs no adapter
    loaded = load_video_model(cfg, tmp_path / "s")
    assert loaded.units() == student.units() and loaded.num_params() == student.num_params()
    assert torch.equal(loaded.sample_latents(PROMPTS, SEEDS), got)
    assert torch.equal(loaded.decode(got), student.decode(got))  # the VAE came back too


def test_one_redpo_step_changes_weights_and_lowers_the_loss(model):
    teacher, student = model, model.pruned(["up_blocks.1.motion_modules.0"])
    before, policy, first, second = one_redpo_step(teacher, student, PROMPTS)
    assert max((p - before[n]).abs().max().item() for n, p in policy.named_parameters()) > 0
    # the teacher's weights are the student's minus the pruned unit: untouched by the step
    assert torch.equal(teacher.unet.conv_in.weight, before["conv_in.weight"])
    assert second < first


def test_lightning_loads_the_single_file_with_its_sampler(dirs, tmp_path):
    cfg = cfg_for(dirs, "animatediff_lightning_2step_diffusers.safetensors", backbone="animatediff_lightning",
                  steps=2, guidance=1.0)
    m = load_video_model(cfg, cfg.path)
    assert len(m.units()) == 7
    assert type(m.scheduler).__name__ == "EulerDiscreteScheduler"
    s = m.scheduler.__class__.from_config(m.scheduler.config)
    s.set_timesteps(2)
    assert s.timesteps.tolist() == [999, 499]  # trailing spacing: 1000 - 1000/2 * k - 1
    clips = m.generate(PROMPTS[:1], [1])
    assert clips.shape == (1, FRAMES, 3, SIZE, SIZE)
    with pytest.raises(ConfigError, match="distilled for 2 steps"):
        load_video_model(cfg_for(dirs, "animatediff_lightning_2step_diffusers.safetensors",
                                 backbone="animatediff_lightning", steps=4, guidance=1.0), cfg.path)
    with pytest.raises(ConfigError, match="animatediff_lightning"):  # the file under the plain backbone
        load_video_model(cfg_for(dirs, "animatediff_lightning_2step_diffusers.safetensors"), cfg.path)
    m.pruned(["mid_block.motion_modules.0"]).save(tmp_path / "l")
    again = load_video_model(ModelConfig(backbone="animatediff_lightning", steps=2, guidance=1.0,
                                         frames=FRAMES, height=SIZE, width=SIZE), tmp_path / "l")
    assert len(again.units()) == 6 and again.meta["distilled_steps"] == 2


def test_a_missing_file_is_named(dirs, tmp_path):
    shutil.copytree(dirs / "sd15", tmp_path / "sd15")
    (tmp_path / "sd15" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="vae/diffusion_pytorch_model.safetensors is missing"):
        load_video_model(cfg_for(dirs, path=str(tmp_path / "sd15")), tmp_path / "sd15")
    (tmp_path / "v152").mkdir()
    (tmp_path / "v152" / "config.json").write_text((dirs / "v152" / "config.json").read_text())
    with pytest.raises(ConfigError, match="diffusion_pytorch_model.safetensors is missing"):
        load_video_model(cfg_for(dirs, str(tmp_path / "v152")), dirs / "sd15")


def test_bad_input_is_one_clear_line(model, dirs, tmp_path):
    with pytest.raises(ConfigError, match="float16 is a dtype the device 'cpu' cannot run"):
        load_video_model(cfg_for(dirs, dtype="float16"), dirs / "sd15")
    with pytest.raises(ConfigError, match="model.adapter"):
        load_video_model(ModelConfig(backbone="animatediff", path=str(dirs / "sd15")), dirs / "sd15")
    with pytest.raises(ConfigError, match="model.frames' is 9 but the motion modules' positional table holds 8"):
        load_video_model(cfg_for(dirs, frames=9), dirs / "sd15")
    with pytest.raises(ConfigError, match="model.width' must be a multiple of 4"):  # VAE 2x, one U-Net downsample
        load_video_model(cfg_for(dirs, width=18), dirs / "sd15")
    # a unit list from another family
    with pytest.raises(UnknownUnitError, match="Wan transformer blocks"):
        model.check_units(["blocks.3"])
    student = model.pruned(["down_blocks.0.motion_modules.0"])
    student.save(tmp_path / "s")
    with pytest.raises(ConfigError, match="holds a 'animatediff' model"):
        load_video_model(ModelConfig(backbone="wan2.1"), tmp_path / "s")
    with pytest.raises(ConfigError, match="holds a 'animatediff' model"):
        load_video_model(ModelConfig(backbone="toyvid"), tmp_path / "s")
    (tmp_path / "s" / "removed_units.json").write_text('["blocks.3"]')
    with pytest.raises(ConfigError, match="removed_units.json: 'blocks.3' is not a unit of this animatediff model"):
        load_video_model(cfg_for(dirs), tmp_path / "s")


def test_real_size_motion_modules_match_the_published_counts():
    from vip.models.published_configs import MOTION_ADAPTER_V1_5_2, MOTION_ADAPTER_V3, SD15_UNET

    counts = {}
    with torch.device("meta"):  # shapes only: nothing allocated, nothing downloaded
        for name, adapter in (("v1-5-2", MOTION_ADAPTER_V1_5_2), ("v3", MOTION_ADAPTER_V3)):
            unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(**SD15_UNET), MotionAdapter(**adapter),
                                               load_weights=False)
            units = motion_units(unet)
            counts[name] = (len(units), sum(p.numel() for u in units for p in unet.get_submodule(u).parameters()))
    assert counts["v1-5-2"][0] == 21 and abs(counts["v1-5-2"][1] / 1e6 - 453.2) <= 0.1  # the paper's 0.453B
    assert counts["v3"][0] == 20


def test_configs_load_with_the_papers_settings():
    ad = config.load("configs/animatediff.yaml")
    assert (ad.model.backbone, ad.model.steps, ad.model.guidance) == ("animatediff", 25, 7.5)
    assert (ad.model.frames, ad.model.height, ad.model.width) == (16, 512, 512)
    assert ad.select.k == [4] and ad.curate.alpha == 0.3 and ad.reward.name == "videoscore"
    lt = config.load("configs/animatediff_lightning.yaml")
    assert (lt.model.backbone, lt.model.steps, lt.model.guidance) == ("animatediff_lightning", 4, 1.0)
    assert lt.model.adapter.endswith("animatediff_lightning_4step_diffusers.safetensors")
    assert lt.select.k == [4] and lt.curate.alpha == 0.3


def test_sampler_presets_are_the_two_published_ddim_recipes(dirs, model, baseline, tmp_path):
    """model.sampler_preset: animatediff_official (the default: guoyww/AnimateDiff's "leading" timesteps
    ending on alpha 1) or diffusers (the docs' "linspace", ending on alpha_cumprod[0]); golden-checked in
    tests/goldens/test_golden_animatediff.py."""
    assert ModelConfig().sampler_preset == "animatediff_official" and model.meta["sampler_preset"] == "animatediff_official"
    want = {"animatediff_official": ([961, 921, 881], True), "diffusers": ([999, 957, 916], False)}
    models = {"animatediff_official": model,
              "diffusers": load_video_model(cfg_for(dirs, sampler_preset="diffusers"), dirs / "sd15")}
    for preset, (first, alpha_one) in want.items():
        s = models[preset].scheduler.__class__.from_config(models[preset].scheduler.config)
        s.set_timesteps(25)
        assert s.timesteps.tolist()[:3] == first and s.config.set_alpha_to_one is alpha_one
        assert models[preset].meta["sampler_preset"] == preset
    other = models["diffusers"].sample_latents(PROMPTS, SEEDS)
    assert (other - baseline).abs().max() > 1e-3
    # a saved student samples as the config says, whatever scheduler/ it was saved with
    model.pruned(UNITS[:1]).save(tmp_path / "s")
    student = load_video_model(cfg_for(dirs, path=str(tmp_path / "s"), adapter="", sampler_preset="diffusers"),
                               tmp_path / "s")
    assert student.scheduler.config.timestep_spacing == "linspace" and student.meta["sampler_preset"] == "diffusers"


def test_a_bad_sampler_preset_is_one_line_naming_the_key(dirs):
    with pytest.raises(ConfigError, match="config key 'model.sampler_preset' must be one of "
                                          "animatediff_official, diffusers; got 'ddim'"):
        config.load(None, ["model.backbone=animatediff", "model.sampler_preset=ddim"])
    with pytest.raises(ConfigError, match="'model.sampler_preset' must be one of"):  # a ModelConfig built in code
        load_video_model(cfg_for(dirs, sampler_preset="linspace"), dirs / "sd15")


def test_the_preset_is_in_the_hash_only_where_it_changes_the_sampler():
    h = lambda *o: config.load(None, list(o)).hash()  # noqa: E731
    ad = "model.backbone=animatediff"
    assert h(ad) != h(ad, "model.sampler_preset=diffusers")
    # other backbones never read it; `diffusers` is the sampler before the key existed: runs keep their hash
    assert h() == h("model.sampler_preset=diffusers")
    assert h("model.backbone=wan2.1") == h("model.backbone=wan2.1", "model.sampler_preset=diffusers")
    d = config.load(None, [ad, "model.sampler_preset=diffusers"]).to_dict()
    del d["model"]["sampler_preset"]
    # a config frozen before the key existed (its hash is the diffusers one) now means the official sampler:
    # its run directory refuses to resume under another sampler instead of mixing the two
    assert config.from_dict(d).hash() != h(ad, "model.sampler_preset=diffusers")
