"""vip.redpo's Diffusion-DPO term against the Salesforce trainer's own loss lines
(scripts/goldens/diffusion_dpo.py executed them on these tensors, in their own environment)."""
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from vip.redpo import redpo_loss

GOLDEN = Path(__file__).parent / "diffusion_dpo"
OUTPUTS = json.loads((GOLDEN / "outputs.json").read_text())


@pytest.fixture(scope="module")
def tensors():
    return load_file(GOLDEN / "tensors.safetensors")


def test_golden_data_vary(tensors):
    # a loss of log 2 at every beta, or all pairs on one side, would compare nothing
    losses = [o["loss"] for o in OUTPUTS.values()]
    assert max(losses) - min(losses) > 0.1
    assert any(0 < o["implicit_acc"] < 1 for o in OUTPUTS.values())
    inside = tensors["inside_term_beta500"]
    assert (inside > 0).any() and (inside < 0).any()


@pytest.mark.parametrize("beta", list(OUTPUTS))
def test_golden_diffusion_dpo(tensors, beta):
    pred, ref, target = tensors["model_pred"], tensors["ref_pred"], tensors["target"]
    b = pred.shape[0] // 2  # the reference stacks winners first, then losers
    out = redpo_loss(pred[:b], pred[b:], ref[:b], ref[b:], target[:b], target[b:], target[:b],
                     beta=float(beta), w_sft=0.0, kind="dpo")
    want = OUTPUTS[beta]
    assert out.dpo.item() == pytest.approx(want["loss"], abs=1e-4, rel=1e-5)
    assert out.metrics["rewards/accuracies"] == pytest.approx(want["implicit_acc"], abs=1e-6)
    assert out.metrics["rewards/margins"] * b == pytest.approx(tensors[f"inside_term_beta{float(beta):g}"].sum().item(),
                                                               abs=1e-3, rel=1e-5)
    raw = 0.5 * (out.metrics["mse/policy_chosen"] + out.metrics["mse/policy_rejected"])
    assert raw == pytest.approx(want["raw_model_loss"], abs=1e-6)


def test_video_latents_average_every_non_batch_dim(tensors):
    """The trainer is for images [B, C, h, w]; for video [B, C, F, h, w] the per-sample error must
    average F too (a public video port averaged dims [1, 2, 3] only). A clip whose frames all repeat
    the image has the image's per-sample error, so its loss must equal the golden's."""
    b = tensors["model_pred"].shape[0] // 2
    pred, ref, target = (tensors[k].unsqueeze(2).repeat(1, 1, 3, 1, 1) for k in ("model_pred", "ref_pred", "target"))
    vid = redpo_loss(pred[:b], pred[b:], ref[:b], ref[b:], target[:b], target[b:], target[:b], 500.0, 0.0, "dpo")
    assert vid.dpo.item() == pytest.approx(OUTPUTS["500.0"]["loss"], abs=1e-4, rel=1e-5)
