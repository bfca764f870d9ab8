"""Stage 1 end to end on the shipped teacher, through the real entry point."""
import json
import subprocess
import sys

import numpy as np
import pytest

from vip.models.motion_unet import MotionUNetModel
from vip.models.registry import SHIPPED_TEACHER
from vip.selection import choose, deltas
from vip.store import read_h5

from helpers.paths import ROOT  # noqa: E402
pytestmark = pytest.mark.slow
N = 6  # evaluation prompts


def _stage(run_dir, *extra):
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "stage.py"), "--stage", "1", "--config",
                           str(ROOT / "configs" / "toyvid.yaml"), "--run-dir", str(run_dir), *extra],
                          capture_output=True, text=True, cwd=ROOT)


def test_stage1_on_shipped_teacher(tmp_path):
    run_dir = tmp_path / "run"
    # every unit of the shipped teacher, on few prompts and sampler steps: the whole stage in a few minutes
    # (at 12 prompts and 10 steps it took 12 of CI's minutes; tests/integration/test_stage_loop.py runs two)
    args = [f"prompts.eval_count={N}", "model.steps=4", f"loo.batch_size={N}", "loo.units_per_task=8",
            "curate.max_prompts=4", "curate.seeds_per_prompt=2", "train.epochs=1", "train.batch_size=2", "train.min_pairs=1",
            "runtime.progress=false"]
    r = _stage(run_dir, *args)
    assert r.returncode == 0, r.stderr[-2000:]
    teacher = MotionUNetModel.load(SHIPPED_TEACHER)
    units = teacher.units()

    merged, attrs = read_h5(run_dir / "stage1" / "loo.h5")
    variants = merged["variants"].tolist()
    assert merged["scores"].shape == (1 + len(units), N, 4)
    assert sorted(variants[1:]) == sorted(units)
    assert np.all((merged["scores"] >= 1) & (merged["scores"] <= 4))

    sel = json.loads((run_dir / "stage1" / "selection.json").read_text())
    assert sel["chosen"] == choose(deltas(merged["scores"], variants), 4).chosen
    assert len(sel["chosen"]) == 4
    student = MotionUNetModel.load(run_dir / "stage1" / "pruned")
    assert sorted(student.units()) == sorted(set(units) - set(sel["chosen"]))
    assert student.num_params() == teacher.num_params() - sum(sel["unit_params"][u] for u in sel["chosen"])

    # the printed table lists every unit with its Δ and marks the chosen ones
    table = [line for line in r.stdout.splitlines() if "motion_modules" in line]
    assert len(table) == len(units)
    for line in table:
        unit = line.split()[0]
        assert line.rstrip().endswith("yes") == (unit in sel["chosen"])
        assert float(line.split()[5]) == pytest.approx(sel["delta"][unit]["total"], abs=6e-4)

    from PIL import Image
    with Image.open(run_dir / "stage1" / "selection.png") as chart:  # the Δ chart a person looks at
        assert chart.width > 600 and chart.height > 300

    # status reads the files only and reports everything done
    s = _stage(run_dir, "--status", *args)
    assert s.returncode == 0
    rows = {ln.split()[0]: ln.split()[1] for ln in s.stdout.splitlines() if ln.split() and ln.split()[0] in
            ("loo", "select", "target", "curate", "train", "outcome")}
    assert rows == {"loo": "done", "select": "done", "target": "done", "curate": "done", "train": "done",
                    "outcome": "done"}
    assert all(u in s.stdout for u in sel["chosen"])
