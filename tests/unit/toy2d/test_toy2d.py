"""Toy 2-D experiment of supplement E (vip/toy2d, jobs/toy2d.py)."""
import math

import pytest
import torch

from vip.toy2d.data import MODE1, MODE2, OOD, TwoModes
from vip.toy2d.diffusion import make_scheduler
from vip.toy2d.distill import DistillConfig, preference_pairs, variant_loss
from vip.toy2d.experiment import findings, verdict
from vip.toy2d.metrics import sliced_wasserstein
from vip.toy2d.mlp import DenoiserMLP
DATA = TwoModes()


def test_data_has_two_modes_in_the_stated_proportions():
    x, mode = DATA.sample(40_000, torch.Generator().manual_seed(0))
    assert x.shape == (40_000, 2)
    assert mode.float().mean().item() == pytest.approx(DATA.weights[1], abs=0.01)
    for k in (0, 1):
        pts = x[mode == k]
        assert pts.mean(0).tolist() == pytest.approx(list(DATA.centres[k]), abs=0.01)
        assert pts.std(0).tolist() == pytest.approx([DATA.stds[k]] * 2, rel=0.03)
    # a 2-D Gaussian leaves a 3-sigma disc with probability exp(-4.5) = 1.1%
    counts = DATA.counts(x)
    assert counts["OOD"] / 40_000 == pytest.approx(math.exp(-4.5), abs=0.003)
    assert counts["Mode 2"] / 40_000 == pytest.approx(DATA.weights[1] * (1 - math.exp(-4.5)), abs=0.01)


def test_classifier_and_reward_on_hand_made_points():
    (c1, c2), (r1, r2) = DATA.centres, DATA.radii.tolist()
    pts = torch.tensor([c1, c2,
                        (c1[0] + 0.95 * r1, c1[1]), (c1[0] + 1.05 * r1, c1[1]),
                        (c2[0], c2[1] - 0.95 * r2), (c2[0], c2[1] - 1.05 * r2),
                        (0.0, 0.0), (5.0, 5.0)])
    assert DATA.classify(pts).tolist() == [MODE1, MODE2, MODE1, OOD, MODE2, OOD, OOD, OOD]
    assert DATA.reward(pts).tolist() == [0, 1, 0, 0, 1, 0, 0, 0]
    assert DATA.counts(pts) == {"Mode 1": 2, "Mode 2": 2, "OOD": 4}


def test_sliced_wasserstein_is_zero_for_identical_samples_and_grows_with_a_shift():
    a = torch.randn(3000, 2, generator=torch.Generator().manual_seed(1))
    assert sliced_wasserstein(a, a) == pytest.approx(0.0, abs=1e-7)
    dists = [sliced_wasserstein(a, a + torch.tensor([s, 0.0])) for s in (0.1, 0.5, 1.0, 2.0)]
    assert dists == sorted(dists) and dists[0] > 0
    assert dists[-1] == pytest.approx(2.0 * 2 / math.pi, rel=0.05)   # |s| * E|cos theta|
    assert sliced_wasserstein(a, a[:1000] + 1.0) == pytest.approx(sliced_wasserstein(a[:1000] + 1.0, a), rel=1e-4)


def test_preference_pairs_take_winners_in_mode_2_and_losers_outside():
    g = torch.Generator().manual_seed(2)
    teacher_x, student_x = DATA.sample(500, g)[0], torch.randn(500, 2, generator=g)
    w, l_ = preference_pairs(teacher_x, student_x, DATA.reward)
    assert len(w) > 0 and (DATA.classify(w) == MODE2).all()
    assert len(l_) > 0 and (DATA.classify(l_) != MODE2).all()
    with pytest.raises(ValueError, match="no preference pairs"):
        preference_pairs(teacher_x[DATA.classify(teacher_x) != MODE2], student_x, DATA.reward)


def test_variant_losses_come_from_the_shared_redpo_loss():
    torch.manual_seed(0)
    teacher, student = DenoiserMLP(4, 64), DenoiserMLP(2, 32)
    sch = make_scheduler()
    g = torch.Generator().manual_seed(3)
    x_w, x_l = DATA.sample(64, g)[0], torch.randn(64, 2, generator=g)
    noise, t = torch.randn(64, 2, generator=g), torch.randint(0, 1000, (64,), generator=g)
    cfg = DistillConfig(beta=100.0, w_sft=7.0)
    args = (student, teacher, sch, x_w, x_l, noise, t, cfg)
    sft, r = variant_loss("SFT", *args)
    dpo, _ = variant_loss("DPO", *args)
    both, _ = variant_loss("DPO+SFT", *args)
    assert r.sft > 0
    assert sft.item() == pytest.approx(7.0 * r.sft.item(), rel=1e-6)
    assert dpo.item() == pytest.approx(r.dpo.item(), rel=1e-6)
    assert both.item() == pytest.approx(r.dpo.item() + 7.0 * r.sft.item(), rel=1e-5)
    # a policy identical to the teacher (the DPO reference): DPO = log 2, SFT = 0
    same, r2 = variant_loss("DPO+SFT", teacher, teacher, sch, x_w, x_l, noise, t, cfg)
    assert r2.dpo.item() == pytest.approx(math.log(2), abs=1e-6) and r2.sft.item() == 0
    with pytest.raises(ValueError, match="unknown variant"):
        variant_loss("KD", *args)


def test_mlp_sizes_count_linear_layers():
    linears = lambda m: [x for x in m.modules() if isinstance(x, torch.nn.Linear)]  # noqa: E731
    teacher, student = DenoiserMLP(4, 64), DenoiserMLP(2, 32)
    assert len(linears(teacher)) == 4 and [x.out_features for x in linears(teacher)] == [64, 64, 64, 2]
    assert len(linears(student)) == 2 and [x.out_features for x in linears(student)] == [32, 2]
    assert student.n_params() < teacher.n_params() / 10


def _fake(numbers_by_model):
    return {"seed": 0, "numbers": {m: dict(zip(("Mode 1", "Mode 2", "OOD", "SW"), v))
                                   for m, v in numbers_by_model.items()}}


def test_findings_are_judged_from_the_numbers():
    paper_like = {"teacher": (700, 290, 10, 0.01), "base student": (700, 150, 150, 0.10),
                  "SFT": (600, 200, 200, 0.12), "DPO": (300, 500, 200, 0.40), "DPO+SFT": (680, 270, 50, 0.05)}
    f = {x["id"]: x for x in findings([_fake(paper_like)] * 2)}
    assert all(x["holds"] for x in f.values())
    opposite = dict(paper_like, SFT=(700, 200, 100, 0.30), DPO=(750, 100, 150, 0.20), **{"DPO+SFT": (600, 200, 200, 0.5)})
    f = {x["id"]: x for x in findings([_fake(opposite)] * 2)}
    assert not any(x["holds"] for x in f.values())
    assert verdict(f[3]) == "DOES NOT HOLD"
    partly = dict(paper_like, DPO=(300, 680, 20, 0.40))   # DPO has the fewest OOD
    f3 = findings([_fake(partly)])[2]
    assert not f3["holds"] and verdict(f3) == "PARTLY (fewest OOD: no, closest: yes)"


def test_a_finding_that_holds_on_the_means_but_not_on_most_seeds_is_flagged():
    base = {"teacher": (700, 290, 10, 0.01), "base student": (700, 150, 150, 0.10),
            "DPO": (300, 500, 200, 0.40), "DPO+SFT": (680, 270, 50, 0.05)}
    # SFT has more OOD than the base on the mean (driven by one seed) but fewer on 3 of 4 seeds
    runs = [_fake(dict(base, SFT=(600, 200, ood, 0.12))) for ood in (140, 140, 140, 400)]
    f1 = findings(runs)[0]
    assert f1["holds"] and not f1["robust"]
    assert verdict(f1) == "HOLDS ON THE MEANS ONLY (more OOD: 1/4 seeds)"
