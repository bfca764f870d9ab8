"""Rendered sbatch scripts submitted with plain sbatch on the real cluster: quoted paths reach sbatch
and the step literally, submit.sh chains the steps, and USR1 requeues an array task once."""
import os
import stat
import subprocess
from pathlib import Path

import pytest

from helpers.slurm import SLURM, sh, wait_for
from vip import config
from vip.orchestrate import render, slurm
from vip.store import RunDir

pytestmark = pytest.mark.slurm

STUB = r"""#!/bin/bash
# stands in for python: records its arguments; task 1 dawdles on its first run (to be signalled there)
task=""; prev=""
for a in "$@"; do [ "$prev" = "--task" ] && task="$a"; prev="$a"; done
printf '%s\n' "$*" >> "$(dirname "$0")/calls.log"
if [ "$task" = 1 ] && [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then touch "$(dirname "$0")/task1-running"; sleep 120; fi
exit 0
"""


def test_rendered_scripts_run_on_the_cluster_and_usr1_requeues(tmp_path):
    stub_dir = tmp_path / "py"
    stub_dir.mkdir()
    stub = stub_dir / "python"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    run = RunDir(tmp_path / "run $(touch pwned) it's")
    cfg = config.load(None, [*SLURM, "slurm.max_requeues=1", "slurm.extra=--comment=vip test"])
    render.render(cfg, run, 1, ["loo", "select"], {"loo": 2}, python=str(stub), repo=tmp_path)
    out = subprocess.run(["bash", str(run.path / "sbatch/stage1/submit.sh")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    ids = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    loo_id, select_id = ids["loo"], ids["select"]
    wait_for(lambda: (stub_dir / "task1-running").exists(), 90, "task 1 running")
    sh("scancel", "--batch", "--signal=USR1", f"{loo_id}_1")  # what --signal=B:USR1@120 sends before the limit
    states = slurm.wait([loo_id, select_id], timeout=150)
    assert set(states.values()) == {"COMPLETED"}, states
    logs = run.path / "logs/stage1"
    log1 = (logs / "loo" / f"vip-toyvid-s1-loo-{loo_id}_1.out").read_text()  # the quoted --output path, literally
    assert "requeueing" in log1 and "restart 1 of at most 1" in log1
    calls = (stub_dir / "calls.log").read_text().splitlines()
    cfg_path, run_path = run.path / "config.yaml", run.path
    assert sorted(calls) == sorted([f"jobs/step.py loo --config {cfg_path} --run-dir {run_path} --stage 1 --task {t}"
                                    for t in (0, 1, 1)]
                                   + [f"jobs/step.py select --config {cfg_path} --run-dir {run_path} --stage 1"])
    assert calls[-1].startswith("jobs/step.py select")  # after the whole array (afterany)
    assert (logs / "select" / f"vip-toyvid-s1-select-{select_id}.out").is_file()
    assert not any(p.name == "pwned" for p in tmp_path.rglob("pwned"))
    assert not Path("pwned").exists() and not os.path.exists(os.path.expanduser("~/pwned"))
