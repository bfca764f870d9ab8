"""Bad input to jobs/stage.py: one line naming the key or file, exit 2, and no run directory written."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _stage(run_dir, *args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "jobs/stage.py"), "--stage", "1", "--run-dir", str(run_dir),
                           *args], capture_output=True, text=True, cwd=ROOT, env=env)


@pytest.mark.parametrize("args, expect", [
    (["filter.backend=gemini"], "GEMINI_API_KEY"),  # the key is checked before anything starts
    (["train.reference=teacher_copy"], "train.reference"),
    (["train.deepspeed=configs/deepspeed/none.json"], "train.deepspeed"),
    (["filter.source=prompts.yaml"], "filter.source"),
    (["curate.alpha=-0.3"], "curate.alpha"),
    (["--until", "0"], "--until"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, expect):
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    if "filter.source=prompts.yaml" in args:
        (tmp_path / "prompts.yaml").write_text("- a red circle\n")
        args = [f"filter.source={tmp_path / 'prompts.yaml'}"]
    r = _stage(tmp_path / "run", *args, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_a_deepspeed_config_contradicting_nprocs_is_refused_before_anything_runs(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"train_micro_batch_size_per_gpu": 4, "train_batch_size": 4, "zero_optimization": {"stage": 2}}')
    r = _stage(tmp_path / "run", f"train.deepspeed={ds}", "train.nprocs=2")
    assert r.returncode == 2
    assert "train_batch_size is 4" in r.stderr and "2 ranks give 8" in r.stderr
    assert not (tmp_path / "run").exists()
