import json

import pytest
import torch

from vip.models.base import UnknownUnitError
from vip.models.motion_unet import MotionUNetModel
from vip.toyvid import world

PROMPTS = [world.all_prompts()[i].text for i in (0, 100, 200)]
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def model(untrained_dir):
    return MotionUNetModel.load(untrained_dir)


def test_units_are_the_motion_modules_by_stable_name(model):
    units = model.units()
    assert len(units) == 16
    assert units[0] == "down_blocks.0.motion_modules.0" and "mid_block.motion_modules.0" in units
    assert all(type(model.unet.get_submodule(u)).__name__ == "AnimateDiffTransformer3D" for u in units)
    assert sum(model.unit_params().values()) < model.num_params()


def test_same_seed_same_clip_whatever_the_batch(model):
    full = model.generate(PROMPTS, SEEDS)
    alone = model.generate(PROMPTS[1:2], SEEDS[1:2])
    assert full.shape == (3, 8, 3, 32, 32) and 0 <= full.min() and full.max() <= 1
    assert torch.allclose(full[1], alone[0], atol=1e-5)
    assert not torch.allclose(model.generate(PROMPTS[:1], [99]), full[:1])


def test_disabling_a_unit_changes_output_and_is_undone(model):
    before = model.generate(PROMPTS, SEEDS)
    unit = "down_blocks.1.motion_modules.0"
    with model.disabled([unit]):
        off = model.generate(PROMPTS, SEEDS)
        assert unit not in model.units()
    assert (off - before).abs().max() > 1e-3
    assert torch.equal(model.generate(PROMPTS, SEEDS), before)
    assert unit in model.units()


def test_disabled_is_undone_after_an_error(model):
    params = model.num_params()
    with pytest.raises(RuntimeError):
        with model.disabled(["mid_block.motion_modules.0"]):
            raise RuntimeError("boom")
    assert model.num_params() == params and len(model.units()) == 16


def test_pruned_copy_matches_disabled_and_round_trips(model, tmp_path):
    units = ["down_blocks.0.motion_modules.1", "up_blocks.1.motion_modules.2"]
    with model.disabled(units):
        expect = model.generate(PROMPTS, SEEDS)
    student = model.pruned(units)
    removed = sum(model.unit_params()[u] for u in units)
    assert student.num_params() == model.num_params() - removed
    assert len(model.units()) == 16 and len(student.units()) == 14  # the original is untouched
    assert torch.allclose(student.generate(PROMPTS, SEEDS), expect, atol=1e-6)
    student.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "removed_units.json").read_text()) == units
    loaded = MotionUNetModel.load(tmp_path / "s")
    assert loaded.units() == student.units() and loaded.num_params() == student.num_params()
    assert torch.allclose(loaded.generate(PROMPTS, SEEDS), expect, atol=1e-6)


def test_load_is_strict_about_removed_units(model, tmp_path):
    model.pruned(["down_blocks.0.motion_modules.0"]).save(tmp_path / "s")
    (tmp_path / "s" / "removed_units.json").write_text("[]")  # claims nothing was removed
    with pytest.raises(RuntimeError, match="Missing key"):
        MotionUNetModel.load(tmp_path / "s")


def test_unknown_unit_is_named(model):
    with pytest.raises(UnknownUnitError, match="down_blocks.7.motion_modules.0"):
        with model.disabled(["down_blocks.7.motion_modules.0"]):
            pass
    with pytest.raises(UnknownUnitError):
        model.pruned(["nonsense"])
