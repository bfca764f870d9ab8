"""Wan2.1 T2V on a tiny random config of the same architecture, written in the published
Diffusers layout and loaded through the registry."""
import json
import shutil

import pytest
import torch
from diffusers import WanTransformer3DModel

from vip import config
from vip.config import ConfigError, ModelConfig
from vip.models.base import UnknownUnitError
from vip.models.published_configs import WAN21_T2V_1_3B_TRANSFORMER
from vip.models.registry import load_video_model
from vip.models.units import UNIT_PATTERNS, list_units

from helpers.redpo_step import one_redpo_step
from helpers.tiny_backbones import WAN_DIR, write_wan

PROMPTS = ["a red circle moves left", "a blue square moves up"]
SEEDS = [5, 6]
FRAMES, SIZE = 5, 16  # the tiny VAE: 2x in time (1 + 2k frames), 2x in space
UNITS = ["blocks.0", "blocks.2"]


WORDS = "a red blue circle square moves left up right down".split()  # the tiny tokenizer's vocabulary


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    write_wan(root, seed=0, layers=3, words=WORDS, text_vocab=16)
    return root / WAN_DIR


def cfg_for(path, **kw) -> ModelConfig:
    return ModelConfig(**{**dict(backbone="wan2.1", path=str(path), steps=3, guidance=3.0, frames=FRAMES,
                                 height=SIZE, width=SIZE), **kw})


@pytest.fixture(scope="module")
def model(wan_dir):
    m = load_video_model(cfg_for(wan_dir), wan_dir)
    m.meta["max_sequence_length"] = 16  # the tiny tokenizer's prompts are short
    return m


@pytest.fixture(scope="module")
def baseline(model):
    return model.sample_latents(PROMPTS, SEEDS)


@pytest.fixture(scope="module")
def without_units(model):
    with model.disabled(UNITS):
        assert model.units() == ["blocks.1"]
        return model.sample_latents(PROMPTS, SEEDS)


def test_units_are_the_transformer_blocks(model):
    assert model.units() == ["blocks.0", "blocks.1", "blocks.2"]
    per_block = sum(p.numel() for p in model.transformer.blocks[0].parameters())
    assert model.unit_params() == {u: per_block for u in model.units()}
    assert model.scheduler.config.prediction_type == "flow_prediction" and model.scheduler.config.flow_shift == 3.0
    assert model.latent_shape == (4, 3, SIZE // 2, SIZE // 2)


def test_prompt_states_are_zero_past_the_prompt(model):
    text = model.encode_prompts(["a red circle", "a blue square moves up"])
    assert text.shape == (2, 16, 16)
    assert text[0, :3].abs().sum() > 0 and torch.equal(text[0, 3:], torch.zeros_like(text[0, 3:]))


def test_generation_is_fixed_by_seed_whatever_the_batch(model, baseline):
    clips = model.decode(baseline)
    assert clips.shape == (2, FRAMES, 3, SIZE, SIZE) and 0 <= clips.min() and clips.max() <= 1 and clips.std() > 0.01
    alone = model.sample_latents(PROMPTS[1:], SEEDS[1:])
    assert torch.allclose(baseline[1], alone[0], atol=1e-5)
    assert (model.sample_latents(PROMPTS[:1], [99]) - baseline[:1]).abs().max() > 1e-3


def test_disabled_changes_the_output_and_restores_it_exactly(model, baseline, without_units):
    assert (without_units - baseline).abs().max() > 1e-3
    assert torch.equal(model.sample_latents(PROMPTS, SEEDS), baseline)


def test_pruned_drops_params_and_round_trips_bit_exact(model, wan_dir, tmp_path, without_units):
    student = model.pruned(UNITS)
    assert student.num_params() == model.num_params() - sum(model.unit_params()[u] for u in UNITS)
    assert student.units() == ["blocks.1"] and len(model.units()) == 3
    got = student.sample_latents(PROMPTS, SEEDS)
    assert torch.allclose(got, without_units, atol=1e-6)
    student.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "removed_units.json").read_text()) == UNITS
    assert json.loads((tmp_path / "s" / "vip_model.json").read_text())["backbone"] == "wan2.1"
    loaded = load_video_model(cfg_for(tmp_path / "s"), tmp_path / "s")
    assert loaded.units() == ["blocks.1"] and loaded.num_params() == student.num_params()
    assert torch.equal(loaded.sample_latents(PROMPTS, SEEDS), got)
    assert torch.equal(loaded.decode(got), student.decode(got))
    # the frozen text encoder and VAE are the published files, hard-linked (11 GB at 1.3B), not written again
    loaded.save(tmp_path / "s2")  # a student of a student links to the same files
    for part in ("text_encoder", "vae"):
        (weights,) = [f for f in (wan_dir / part).iterdir() if f.suffix == ".safetensors"]
        assert (tmp_path / "s" / part / weights.name).stat().st_ino == weights.stat().st_ino
        assert (tmp_path / "s2" / part / weights.name).stat().st_ino == weights.stat().st_ino
        assert (tmp_path / "s" / part / "config.json").stat().st_ino != (wan_dir / part / "config.json").stat().st_ino
    (weights,) = [f for f in (wan_dir / "transformer").iterdir() if f.suffix == ".safetensors"]
    assert (tmp_path / "s" / "transformer" / weights.name).stat().st_ino != weights.stat().st_ino  # trained: its own
    source_config = (wan_dir / "vae" / "config.json").read_text()
    (tmp_path / "s" / "vae" / "config.json").write_text("{}")  # a person edits the student's config: a copy
    assert (wan_dir / "vae" / "config.json").read_text() == source_config
    student.save(tmp_path / "s")  # saving over an old student replaces its files
    assert (tmp_path / "s" / "vae" / "config.json").read_text() == source_config


def test_one_redpo_step_changes_weights_and_lowers_the_loss(model):
    teacher, student = model, model.pruned(["blocks.1"])
    before, policy, first, second = one_redpo_step(teacher, student, PROMPTS)
    assert max((p - before[n]).abs().max().item() for n, p in policy.named_parameters()) > 0
    assert torch.equal(teacher.transformer.proj_out.weight, before["proj_out.weight"])  # the teacher is untouched
    assert second < first


def test_a_missing_file_is_named(wan_dir, tmp_path):
    shutil.copytree(wan_dir, tmp_path / "w")
    (tmp_path / "w" / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="text_encoder/model.safetensors is missing"):
        load_video_model(cfg_for(tmp_path / "w"), tmp_path / "w")


def test_bad_input_is_one_clear_line(model, wan_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.frames' must be 2k\\+1"):
        load_video_model(cfg_for(wan_dir, frames=4), wan_dir)
    with pytest.raises(ConfigError, match="float16 is a dtype the device 'cpu' cannot run"):
        load_video_model(cfg_for(wan_dir, dtype="float16"), wan_dir)
    with pytest.raises(UnknownUnitError, match="AnimateDiff motion modules"):
        model.check_units(["mid_block.motion_modules.0"])
    model.pruned(["blocks.1"]).save(tmp_path / "s")
    with pytest.raises(ConfigError, match="holds a 'wan2.1' model .* model.backbone is 'animatediff'"):
        load_video_model(ModelConfig(backbone="animatediff"), tmp_path / "s")
    (tmp_path / "s" / "removed_units.json").write_text('["down_blocks.0.motion_modules.0"]')
    with pytest.raises(ConfigError, match="removed_units.json: 'down_blocks.0.motion_modules.0' is not a unit "
                                          "of this wan2.1 model \\(it names AnimateDiff motion modules\\)"):
        load_video_model(cfg_for(tmp_path / "s"), tmp_path / "s")


def wan_params_by_hand(d: int, ffn: int, layers: int, text: int = 4096, freq: int = 256, c: int = 16) -> tuple[int, int]:
    """Parameters of the Wan2.1 DiT from its published shapes (independent of diffusers' code):
    per block self- and cross-attention (q, k, v, o with bias, RMS q/k norms), the affine
    cross-attention LayerNorm, the GELU FFN and the 6-way modulation table; outside the blocks
    the patch embedding, time and text embedders, time projection, output head and table."""
    block = 8 * (d * d + d) + 4 * d + 2 * d + (2 * d * ffn + ffn + d) + 6 * d
    outside = (c * d * 4 + d) + (freq * d + d) + (d * d + d) + (d * 6 * d + 6 * d) + (text * d + d) + (d * d + d) \
        + (d * c * 4 + c * 4) + 2 * d
    return block, layers * block + outside


def test_real_size_1_3b_matches_the_published_shape():
    with torch.device("meta"):  # shapes only: nothing allocated, nothing downloaded
        w = WanTransformer3DModel(**WAN21_T2V_1_3B_TRANSFORMER)
    blocks = list_units(w, UNIT_PATTERNS["Wan transformer blocks"])
    assert blocks == [f"blocks.{i}" for i in range(30)]
    block, total = wan_params_by_hand(d=12 * 128, ffn=8960, layers=30)
    assert sum(p.numel() for p in w.blocks[0].parameters()) == block == 46_440_704
    # published as "1.3B" (Wan-AI/Wan2.1-T2V-1.3B); the transformer alone holds 1.419B, 98% of it in blocks
    assert sum(p.numel() for p in w.parameters()) == total == 1_418_996_800


def test_config_loads_with_wans_settings():
    c = config.load("configs/wan2.1_1.3b.yaml")
    assert (c.model.backbone, c.model.steps, c.model.guidance) == ("wan2.1", 50, 5.0)
    assert (c.model.frames, c.model.height, c.model.width) == (81, 480, 832)
    assert c.select.k == [4] and c.curate.alpha == 0.3 and c.reward.name == "videoscore"
