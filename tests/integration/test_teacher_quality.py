"""The shipped teacher is a real model of its world: far better than itself without motion
modules, above all in temporal consistency and dynamic degree."""
import pytest

from vip.evaluate import evaluate, mean_scores
from vip.models.motion_unet import MotionUNetModel
from vip.models.registry import SHIPPED_TEACHER
from vip.prompts.sets import eval_set
from vip.rewards.toyvid_score import ToyvidScore

pytestmark = pytest.mark.slow


def test_teacher_beats_itself_without_motion_modules():
    model = MotionUNetModel.load(SHIPPED_TEACHER)
    assert len(model.units()) >= 12  # two stages of k = 4 leave a working model
    es = eval_set("toyvid", 12, 1, 1000)
    reward = ToyvidScore()
    full = mean_scores(evaluate(model, reward, es.prompts, es.seeds, 12))
    flat = mean_scores(evaluate(model, reward, es.prompts, es.seeds, 12, units_off=model.units()))
    assert full["temporal_consistency"] > flat["temporal_consistency"] + 1.5, (full, flat)
    assert full["dynamic_degree"] > flat["dynamic_degree"] + 1.0, (full, flat)
    assert full["total"] > flat["total"] + 4.0
    assert full["temporal_consistency"] > 3.3 and full["text_alignment"] > 2.5, full
