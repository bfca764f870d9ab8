"""jobs/toy2d.py --quick through its CLI: its files, and the teacher beats an untrained model (moved from the unit tests)."""
import json
import subprocess
import sys

import torch

from helpers.paths import ROOT
from vip.toy2d.data import TwoModes
from vip.toy2d.diffusion import make_scheduler, sample
from vip.toy2d.experiment import MODELS
from vip.toy2d.mlp import DenoiserMLP

DATA = TwoModes()


def test_quick_run_writes_its_files_and_the_teacher_beats_an_untrained_model(tmp_path):
    out = tmp_path / "toy"
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "toy2d.py"), "--quick", "--seeds", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("toy2d_modes.png", "toy2d_samples.png", "toy2d_training.png", "results.md", "results.json"):
        assert (out / name).stat().st_size > 1000, name
    res = json.loads((out / "results.json").read_text())
    n_eval = res["config"]["n_eval"]
    assert set(res["summary"]) == set(MODELS)
    teacher_ood = res["summary"]["teacher"]["OOD"][0] / n_eval
    torch.manual_seed(0)
    untrained = DenoiserMLP(4, 64).eval()
    x = sample(untrained, make_scheduler(), n_eval, 50, torch.Generator().manual_seed(0))
    untrained_ood = DATA.counts(x)["OOD"] / n_eval
    assert teacher_ood < 0.15 and untrained_ood > 0.5 and teacher_ood < untrained_ood
    md = (out / "results.md").read_text()
    assert "OOD" in md and "3σ" in md and "| DPO+SFT |" in md and "(1)" in md and "(3)" in md
    assert "finding 1:" in proc.stdout
