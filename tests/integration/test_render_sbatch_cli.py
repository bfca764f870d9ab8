"""jobs/render_sbatch.py through its CLI: scripts and plan written, bad input refused (moved from the unit tests)."""
import json
import os
import shlex
import subprocess

from vip.orchestrate import render


def test_render_cli_writes_scripts_and_plan(tmp_path, untrained_dir):
    run_dir = tmp_path / "my run"
    r = subprocess.run([os.sys.executable, "jobs/render_sbatch.py", "--config", "configs/toyvid.yaml",
                        "--run-dir", str(run_dir), "--stage", "1", "--steps", "loo,select",
                        f"model.path={untrained_dir}", "prompts.eval_count=4", "loo.units_per_task=8",
                        "slurm.partition=gpu"],
                       cwd=render.REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    n_tasks = len(json.loads((run_dir / "stage1/loo/tasks.json").read_text())["tasks"])
    loo = (run_dir / "sbatch/stage1/loo.sbatch").read_text()
    assert f"#SBATCH --array=0-{n_tasks - 1}" in loo
    assert "submit in order: bash" in r.stdout and shlex.quote(str(run_dir / "sbatch/stage1/submit.sh")) in r.stdout
    bad = subprocess.run([os.sys.executable, "jobs/render_sbatch.py", "--run-dir", str(run_dir), "--tasks", "loo=x"],
                         cwd=render.REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --tasks takes step=count")
    adaptive = subprocess.run([os.sys.executable, "jobs/render_sbatch.py", "--config", "configs/toyvid.yaml",
                               "--run-dir", str(tmp_path / "adaptive"), "loo.adaptive=true"],
                              cwd=render.REPO, capture_output=True, text=True, timeout=120)
    assert adaptive.returncode == 2 and adaptive.stderr.startswith("error: config key 'loo.adaptive' is true")
    assert not (tmp_path / "adaptive").exists()  # refused before the run directory is made
    packed = subprocess.run([os.sys.executable, "jobs/render_sbatch.py", "--config", "configs/toyvid.yaml", "--packed",
                             "--run-dir", str(tmp_path / "packed"), "--no-plan", "--tasks", "loo=5,filter=3",
                             "--steps", "loo,filter", "slurm.partition=gpu"],
                            cwd=render.REPO, capture_output=True, text=True, timeout=120)
    assert packed.returncode == 0, packed.stderr
    script = (tmp_path / "packed/sbatch/stage1/loo.sbatch").read_text()
    assert "--array" not in script and "#SBATCH --ntasks=" in script  # one job of ranks, not an array
