"""sbatch templates filled from the config: every value is quoted, nothing a config holds can run.

No cluster needed: scripts are checked with `bash -n` and run with stub `python`, `sbatch` and
`scontrol` commands that record their arguments.
"""
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vip import config
from vip.config import ConfigError, has_control_chars
from vip.orchestrate import render
from vip.store import RunDir

NASTY = ["a b", "it's", 'say "hi"', "$(touch pwned)", "`touch pwned`", "x;touch pwned", "a\nb", "$HOME",
         "${IFS}", "\\", "-rf", "*", "%j", "@@STAGE@@", "a\tb", "'", '"', "é ü 中"]
# file names: anything but '/' and NUL, never '.' or '..'
names = st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=20)).map(
    lambda s: s.replace("/", "_").replace("\x00", "_")).filter(lambda s: s not in (".", ".."))


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _stub_python(directory: Path) -> Path:
    """Writes its working directory and argv, NUL-separated, to $ARGV_OUT."""
    directory.mkdir(parents=True, exist_ok=True)
    return _executable(directory / "python", '#!/bin/bash\n{ printf "%s\\0" "$PWD" "$@"; } > "$ARGV_OUT"\n')


def _all_steps(cfg, run, repo, python, tasks=None, max_array=1001):
    tasks = tasks or {"loo": 3, "filter": 2, "pairs": 4}
    return render.render(cfg, run, 1, None, tasks, python=str(python), repo=repo, max_array=max_array)


def test_every_template_renders_parses_and_keeps_the_fixed_options(tmp_path):
    cfg = config.load(None, ["slurm.partition=gpu", "slurm.cpu_partition=cpu", "slurm.array_parallelism=2",
                             "slurm.extra=--reservation=r1", "slurm.nodes=2", "slurm.gpus_per_node=4"])
    written = _all_steps(cfg, RunDir(tmp_path / "run"), tmp_path, "/usr/bin/python3")
    names = [p.name for p in written]
    assert names == ["filter.sbatch", "filter_merge.sbatch", "loo.sbatch", "select.sbatch", "target.sbatch",
                     "pairs.sbatch", "curate.sbatch", "train.sbatch", "outcome.sbatch", "submit.sh"]
    for path in written:
        text = path.read_text()
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, path.name
        assert "@@" not in text.replace("@@STAGE@@", "")
        if path.suffix == ".sbatch":
            assert "#SBATCH --requeue" in text and "USR1@120" in text and "export HDF5_USE_FILE_LOCKING=FALSE" in text
            assert "#SBATCH --reservation=r1" in text
            assert (tmp_path / "run" / "logs" / "stage1" / path.stem).is_dir()  # sbatch does not create it
    loo = (tmp_path / "run/sbatch/stage1/loo.sbatch").read_text()
    assert "#SBATCH --array=0-2%2" in loo and "#SBATCH --partition=gpu" in loo and "#SBATCH --gpus-per-node=1" in loo
    assert "jobs/step.py loo --config" in loo and '--task "$TASK"' in loo
    select = (tmp_path / "run/sbatch/stage1/select.sbatch").read_text()
    assert "#SBATCH --partition=cpu" in select and "gpus" not in select and "#SBATCH --time=60" in select
    train = (tmp_path / "run/sbatch/stage1/train.sbatch").read_text()
    assert "#SBATCH --nodes=2" in train and "#SBATCH --ntasks-per-node=4" in train
    assert "#SBATCH --gpus-per-node=4" in train and "#SBATCH --signal=USR1@120" in train  # to the ranks, not B:
    assert "srun" in train and "jobs/train_redpo.py --run-dir" in train
    assert (tmp_path / "run" / "config.yaml").is_file()  # the scripts read the frozen config


def test_signal_delay_and_requeue_limit_come_from_the_config(tmp_path):
    cfg = config.load(None, ["slurm.signal_delay_s=300", "slurm.max_requeues=7"])
    render.render(cfg, RunDir(tmp_path / "run"), 1, ["loo"], {"loo": 2}, python="python3", repo=tmp_path)
    text = (tmp_path / "run/sbatch/stage1/loo.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@300" in text and "MAX_REQUEUES=7" in text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_name=names, repo_name=names, python_dir=names)
@example(run_name="$(touch pwned)", repo_name="`touch pwned`", python_dir="a'b\nc")
@example(run_name="x\ny", repo_name="r", python_dir="p")
def test_paths_pass_literally_and_never_execute(tmp_path_factory, run_name, repo_name, python_dir):
    base = tmp_path_factory.mktemp("prop")
    cwd = base / "cwd"
    cwd.mkdir()
    repo = base / "repo" / repo_name
    repo.mkdir(parents=True)
    python = _stub_python(base / "py" / python_dir)
    run = RunDir(base / "runs" / run_name)
    cfg = config.load(None, [])
    if has_control_chars(run_name):  # it would end the #SBATCH --output line: refused, nothing written
        with pytest.raises(ConfigError, match="control character"):
            _all_steps(cfg, run, repo, python)
        assert not (run.path / "sbatch").exists()
        return
    written = _all_steps(cfg, run, repo, python)
    for path in written:
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, (path.name, r.stderr)
    out = base / "argv"
    env = {**os.environ, "ARGV_OUT": str(out), "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "1",
           "SLURM_JOB_ID": "42"}
    r = subprocess.run(["bash", str(run.path / "sbatch/stage1/loo.sbatch")], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    got = out.read_bytes().split(b"\0")[:-1]
    assert [os.fsdecode(g) for g in got] == [str(repo), "jobs/step.py", "loo", "--config", str(run.path / "config.yaml"),
                                            "--run-dir", str(run.path), "--stage", "1", "--task", "1"]
    for d in (cwd, repo, base):
        assert not (d / "pwned").exists()
    # the #SBATCH --output value, read the way a shell (and sbatch) reads it, is the literal log path
    line = next(x for x in (run.path / "sbatch/stage1/loo.sbatch").read_text().splitlines()
                if x.startswith("#SBATCH --output="))
    assert shlex.split(line.partition("=")[2]) == [f"{run.path}/logs/stage1/loo/%x-%A_%a.out"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=20)),
       key=st.sampled_from(["partition", "account", "qos", "constraint", "exclude"]))
def test_slurm_values_are_quoted_or_refused(tmp_path_factory, value, key):
    base = tmp_path_factory.mktemp("sl")
    if has_control_chars(value):
        with pytest.raises(ConfigError, match=f"slurm.{key}"):
            config.from_dict({"slurm": {key: value}})
        return
    cfg = config.from_dict({"slurm": {key: value, "extra": [f"--comment={value}"]}})
    render.render(cfg, RunDir(base / "run"), 1, ["loo", "select", "train"], {"loo": 2}, python="python3",
                  repo=base)
    for name in ("loo.sbatch", "select.sbatch", "train.sbatch"):
        text = (base / "run/sbatch/stage1" / name).read_text()
        assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0
        for opt in (key, "comment"):
            line = next(x for x in text.splitlines() if x.startswith(f"#SBATCH --{opt}="))
            quoted = line.partition("=")[2]
            # through bash: the literal string comes back, nothing runs
            r = subprocess.run(["bash", "-c", f"printf '%s' {quoted}"], cwd=base, capture_output=True, text=True)
            assert r.stdout == value
            assert not (base / "pwned").exists()


def test_extra_options_must_look_like_options():
    for bad in ["reservation=x", "--", "--x\n--y", "-"]:
        with pytest.raises(ConfigError, match="slurm.extra"):
            config.from_dict({"slurm": {"extra": [bad]}})
    cfg = config.from_dict({"slurm": {"extra": ["--exclusive", "--mail-type=END,FAIL"]}})
    assert render.sbatch_flags(cfg.slurm, "cpu")[-2:] == [("exclusive", None), ("mail-type", "END,FAIL")]


def test_long_arrays_are_split_into_parts_with_offsets_and_chained(tmp_path):
    cfg = config.load(None, ["slurm.array_parallelism=2"])
    run = RunDir(tmp_path / "run")
    written = render.render(cfg, run, 1, ["loo", "select"], {"loo": 12}, python="python3", repo=tmp_path,
                            max_array=5)
    assert [p.name for p in written] == ["loo.part0.sbatch", "loo.part1.sbatch", "loo.part2.sbatch",
                                         "select.sbatch", "submit.sh"]
    arrays = [next(x for x in p.read_text().splitlines() if x.startswith("#SBATCH --array=")) for p in written[:3]]
    assert arrays == ["#SBATCH --array=0-4%2", "#SBATCH --array=0-4%2", "#SBATCH --array=0-1%2"]
    assert ["TASK=$(( 0 +" in written[0].read_text(), "TASK=$(( 5 +" in written[1].read_text(),
            "TASK=$(( 10 +" in written[2].read_text()] == [True] * 3
    # submit.sh against a stub sbatch: parts one after another (the cap holds over all), select after all
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _executable(bindir / "sbatch", '#!/bin/bash\nn=$(( $(wc -l < "$LOG" 2>/dev/null || echo 0) + 100 ))\n'
                                   'echo "$n $*" >> "$LOG"\necho "$n;vip"\n')
    log = tmp_path / "sbatch.log"
    r = subprocess.run(["bash", str(written[-1])], env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
                                                        "LOG": str(log)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == [
        "100 --parsable loo.part0.sbatch",
        "101 --parsable --dependency=afterany:100 loo.part1.sbatch",
        "102 --parsable --dependency=afterany:101 loo.part2.sbatch",
        "103 --parsable --dependency=afterany:100:101:102 select.sbatch"]


def _run_common(tmp_path, restarts: int, max_requeues: int, signal_self: bool):
    """The common part of a rendered array script, with a stub scontrol and a step that signals the shell."""
    cfg = config.load(None, [f"slurm.max_requeues={max_requeues}"])
    run = RunDir(tmp_path / "run")
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    _executable(bindir / "scontrol", '#!/bin/bash\necho "scontrol $*" >> "$LOG"\n')
    step = "kill -USR1 $PPID; sleep 0.5; " if signal_self else ""
    python = _executable(tmp_path / "python", f'#!/bin/bash\n{step}echo "ran $*" >> "$LOG"\n')
    render.render(cfg, run, 1, ["loo"], {"loo": 2}, python=str(python), repo=tmp_path)
    log = tmp_path / "log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "LOG": str(log), "SLURM_ARRAY_JOB_ID": "7",
           "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "8", "SLURM_RESTART_COUNT": str(restarts)}
    r = subprocess.run(["bash", str(run.path / "sbatch/stage1/loo.sbatch")], env=env, capture_output=True,
                       text=True, timeout=30)
    return r, (log.read_text().splitlines() if log.exists() else [])


def test_usr1_requeues_the_task_until_the_limit(tmp_path):
    r, log = _run_common(tmp_path, restarts=0, max_requeues=2, signal_self=True)
    assert log[0] == "scontrol requeue 7_1" and "requeueing 7_1 (restart 1 of at most 2)" in r.stderr
    r, log = _run_common(tmp_path, restarts=2, max_requeues=2, signal_self=True)
    assert not any(x.startswith("scontrol") for x in log) and "not requeueing" in r.stderr
    r, log = _run_common(tmp_path, restarts=3, max_requeues=2, signal_self=False)
    assert r.returncode == 1 and log == [] and "more than MAX_REQUEUES=2" in r.stderr
    r, log = _run_common(tmp_path, restarts=1, max_requeues=2, signal_self=False)
    assert r.returncode == 0 and log == ["ran jobs/step.py loo --config " + str(tmp_path / "run/config.yaml")
                                         + " --run-dir " + str(tmp_path / "run") + " --stage 1 --task 1"]


def test_unknown_task_count_leaves_the_array_to_the_submitter(tmp_path):
    cfg = config.load(None, [])
    written = render.render(cfg, RunDir(tmp_path / "run"), 1, ["target", "pairs", "curate"], {}, python="python3",
                            repo=tmp_path)
    pairs = (tmp_path / "run/sbatch/stage1/pairs.sbatch").read_text()
    assert "#SBATCH --array" not in pairs and "SLURM_ARRAY_TASK_ID:?submit as an array job" in pairs
    submit = written[-1].read_text()
    assert "TARGET=$(submit target.sbatch)" in submit
    assert "# pairs: not submitted here" in submit and "# curate: not submitted here: needs pairs" in submit


def test_packed_mode_renders_one_job_per_fanned_out_step_launched_by_srun_or_mpirun(tmp_path):
    cfg = config.load(None, ["slurm.packed=true", "slurm.packed_ranks=3", "slurm.partition=gpu",
                             "slurm.cpu_partition=cpu", "slurm.time=90", "slurm.signal_delay_s=200"])
    run = RunDir(tmp_path / "run $(touch pwned) it's")
    bindir = tmp_path / "bin it's"
    bindir.mkdir()
    # python, srun and mpirun stand-ins record their arguments (NUL-separated), one line per call
    rec = '#!/bin/bash\n{ printf "%s\\0" "$(basename "$0")" "$@"; echo; } >> "$ARGV_OUT"\n'
    python = _executable(bindir / "python", rec)
    for name in ("srun", "mpirun"):
        _executable(bindir / name, rec)
    written = render.render(cfg, run, 1, None, {"loo": 2}, python=str(python), repo=tmp_path, max_array=5)
    names = [p.name for p in written]
    assert names == ["filter.sbatch", "filter_merge.sbatch", "loo.sbatch", "select.sbatch", "target.sbatch",
                     "pairs.sbatch", "curate.sbatch", "train.sbatch", "outcome.sbatch", "submit.sh"]
    out = run.path / "sbatch/stage1"
    loo, pairs, filt = ((out / f"{s}.sbatch").read_text() for s in ("loo", "pairs", "filter"))
    for text in (loo, pairs, filt):
        assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0
        assert "#SBATCH --array" not in text and "#SBATCH --requeue" in text and "USR1@200" in text
        assert "#SBATCH --time=90" in text
    assert "#SBATCH --ntasks=2" in loo  # 3 ranks asked for, but the plan has 2 tasks
    assert "#SBATCH --ntasks=3" in pairs and "#SBATCH --gpus-per-task=1" in pairs  # task count unknown: 3
    assert "#SBATCH --partition=cpu" in filt and "gpus" not in filt
    submit = (out / "submit.sh").read_text()
    assert "PAIRS=$(submit --dependency=afterany:$TARGET:$FILTER_MERGE pairs.sbatch)" in submit  # no count needed

    argv = tmp_path / "argv"

    def calls(slurm_job_id):
        argv.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
        env.update(PATH=f"{bindir}:{os.environ['PATH']}", ARGV_OUT=str(argv),
                   **({"SLURM_JOB_ID": slurm_job_id} if slurm_job_id else {}))
        r = subprocess.run(["bash", str(out / "loo.sbatch")], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return [[os.fsdecode(a) for a in line.split(b"\0")[:-1]] for line in argv.read_bytes().splitlines()]

    step = [str(python), "jobs/step.py", "loo", "--packed", "--config", str(run.path / "config.yaml"),
            "--run-dir", str(run.path), "--stage", "1"]
    assert calls("42") == [["srun", "--ntasks=2", *step]]  # in an allocation: srun starts the ranks
    assert calls(None) == [["mpirun", "-n", "2", *step]]  # no Slurm: the mpirun beside python
    assert not list(tmp_path.rglob("pwned"))
