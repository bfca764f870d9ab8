"""Bad input to every entry point: one line naming the key or file, exit 2, and nothing written.

Every entry point goes through one preflight (vip/orchestrate/preflight.py) before its run directory
is created or its config frozen. Each case runs through the real CLI of the entry points where it
used to get through (issue 17) and stage.py; the checks themselves are shared, so not every case
runs through every entry point (each call is a Python start with torch). The stage.py calls run
from another directory than the project's: the relative default train.deepspeed must still be found.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import run_script
from helpers.train import train_env
from vip import config
from vip.store import RunDir

from helpers.paths import ROOT  # noqa: E402
CONFIG = str(ROOT / "configs/toyvid.yaml")
VIDEOSCORE = ROOT / "tests/goldens/videoscore/ckpt"
ENTRY_POINTS = {
    "stage": ["jobs/stage.py", "--stage", "1"],
    "step": ["jobs/step.py", "loo", "--stage", "1", "--config", CONFIG],
    "render": ["jobs/render_sbatch.py", "--stage", "1", "--config", CONFIG],
    "render --no-plan": ["jobs/render_sbatch.py", "--stage", "1", "--config", CONFIG, "--no-plan"],
    "filter": ["jobs/filter_prompts.py", "--config", CONFIG],
    "train": ["jobs/train_redpo.py", "--stage", "1", "--no-progress"],
}


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    return env


def run_entry(entry, run_dir, *args, env=None, cwd=None, user=None):
    """One entry point as a user runs it (`user`: a uid to run as, for permissions root ignores). In this process
    (helpers.cli) unless it needs its own: another uid, or training (DeepSpeed's process group and signals)."""
    script, argv = ROOT / ENTRY_POINTS[entry][0], [*ENTRY_POINTS[entry][1:], "--run-dir", str(run_dir), *args]
    if user is None and entry != "train":
        return run_script(script, argv, env or _env(), cwd or ROOT)
    pre = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    return subprocess.run([*pre, sys.executable, str(script), *argv], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=env or _env(), timeout=900)


def cli(script, *args):
    """jobs/<script> with the test's own environment, from the project root, in this process."""
    return run_script(ROOT / "jobs" / script, list(args), dict(os.environ), ROOT)


def listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


def assert_refused(r, expect, *, absent=()):
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    for text in [expect] if isinstance(expect, str) else expect:
        assert text in lines[0], lines[0]
    for text in absent:
        assert text not in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bad(tmp_path_factory, untrained_dir):
    """Bad inputs shared by the cases: prompt files, a model directory missing a file."""
    d = tmp_path_factory.mktemp("bad")
    (d / "sentences.txt").write_text("a cat playing the piano in a sunny kitchen\na dog running on a beach\n")
    (d / "control.txt").write_text("a red circle moving left on a black background\n"
                                   "a blue square staying still\x07 on a gray background\n")
    shutil.copytree(untrained_dir, d / "no_text_weights")
    (d / "no_text_weights/text_encoder/model.safetensors").unlink()
    return d


CASES = {  # name: (overrides, text the line names, entry points)
    "k above the units": (["select.k=99"], "select.k", ["step", "render", "render --no-plan", "filter"]),
    "unknown reward": (["reward.name=clip"], "reward.name", ["render", "filter"]),
    # without model.path: named as "config key 'model.path' is required for backbone 'sdxl'" before
    "unknown backbone": (["model.backbone=sdxl", "model.path="], "unknown backbone 'sdxl'",
                         ["step", "render", "render --no-plan"]),
    "missing deepspeed file": (["train.deepspeed=/nonexistent/ds.json"], "train.deepspeed",
                               ["render --no-plan", "filter"]),
    "missing prompt file": (["prompts.eval=/nonexistent/p.txt"], "/nonexistent/p.txt", ["render --no-plan"]),
    # VideoScore reads 16 frames; toyvid's clips have 8
    "reward reads more frames": (["reward.name=videoscore", f"reward.path={VIDEOSCORE}"],
                                 ["reward.frames", "16 frames", "have 8"], ["stage", "step", "filter"]),
    "model without text-encoder weights": (["model.path={bad}/no_text_weights"], "text_encoder/model.safetensors",
                                           ["stage", "render"]),
    "prompts outside the toyvid grammar": (["prompts.eval={bad}/sentences.txt"],
                                           ["'a cat playing the piano in a sunny kitchen'", "toyvid grammar"],
                                           ["stage", "step"]),
    "model.frames on toyvid": (["model.frames=4"], ["model.frames", "toyvid", "does not read"], ["stage"]),
    "reward.frames on toyvid_score": (["reward.frames=4"], ["reward.frames", "toyvid_score"], ["stage"]),
    "control character in a prompt": (["prompts.eval={bad}/control.txt"], ["control.txt", "line 2", "U+0007"],
                                      ["stage"]),
    "control character in filter.source": (["filter.source={bad}/control.txt"], ["filter.source", "line 2"],
                                           ["filter"]),
    # the held-out set must be prompts leave-one-out never scores
    "held-out prompts that are evaluation prompts": (["prompts.heldout=toyvid"], ["prompts.heldout", "16 of its prompts"],
                                                     ["stage", "render"]),
    "missing held-out file": (["prompts.heldout=/nonexistent/h.txt"], ["prompts.heldout", "/nonexistent/h.txt"],
                              ["step"]),
}


@pytest.mark.parametrize("case, entry", [(c, e) for c, (_, _, entries) in CASES.items() for e in entries])
def test_bad_input_is_one_line_on_every_entry_point_and_writes_nothing(tmp_path, untrained_dir, bad, case, entry):
    overrides, expect, _ = CASES[case]
    overrides = [o.format(bad=bad) for o in overrides]
    model = [] if any(o.startswith("model.path=") for o in overrides) else [f"model.path={untrained_dir}"]
    before = listing(tmp_path)
    r = run_entry(entry, tmp_path / "run", *model, *overrides, "runtime.progress=false",
                  cwd=tmp_path if entry == "stage" else None)  # stage: from elsewhere than the project
    assert_refused(r, expect, absent=["model.path"] if case == "unknown backbone" else ())
    assert listing(tmp_path) == before


def test_a_refused_config_leaves_the_run_directory_to_the_corrected_one(tmp_path, untrained_dir):
    """step.py and render_sbatch.py froze config.yaml before checking: the corrected config was then
    refused in that directory as made with another config."""
    run_dir = tmp_path / "run"
    assert_refused(run_entry("step", run_dir, f"model.path={untrained_dir}", "select.k=99"), "select.k")
    assert not run_dir.exists()
    r = run_entry("render --no-plan", run_dir, f"model.path={untrained_dir}", "select.k=4")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run_dir / "config.sha256").is_file() and (run_dir / "sbatch/stage1/submit.sh").is_file()


@pytest.mark.parametrize("args, expect", [
    (["filter.backend=gemini"], "GEMINI_API_KEY"),  # the key is checked before anything starts
    (["train.reference=teacher_copy"], "train.reference"),
    (["train.deepspeed=configs/deepspeed/none.json"], "train.deepspeed"),
    (["filter.source=prompts.yaml"], "filter.source"),
    (["curate.alpha=-0.3"], "curate.alpha"),
    (["--until", "0"], "--until"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, expect):
    if "filter.source=prompts.yaml" in args:
        (tmp_path / "prompts.yaml").write_text("- a red circle\n")
        args = [f"filter.source={tmp_path / 'prompts.yaml'}"]
    assert_refused(run_entry("stage", tmp_path / "run", *args), expect)
    assert not (tmp_path / "run").exists()


def test_a_deepspeed_config_contradicting_nprocs_is_refused_before_anything_runs(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text('{"train_micro_batch_size_per_gpu": 4, "train_batch_size": 4, "zero_optimization": {"stage": 2}}')
    r = run_entry("stage", tmp_path / "run", f"train.deepspeed={ds}", "train.nprocs=2")
    assert_refused(r, ["train_batch_size is 4", "2 ranks give 8"])
    assert not (tmp_path / "run").exists()


# --- training: its own entry point, and as the stage launches it -------------------------------------------

def test_training_without_a_pruned_student_is_one_line(tmp_path, untrained_dir):
    """A stage stopped after leave-one-out (or before): no pruned student yet."""
    from vip import config as vip_config
    from vip.store import RunDir

    run = RunDir(tmp_path / "run")
    run.freeze(vip_config.load(CONFIG, [f"model.path={untrained_dir}"]))
    (run.stage(1) / "loo").mkdir(parents=True)
    before = listing(tmp_path)
    assert_refused(run_entry("train", run.path), ["pruned student", "select"])
    assert listing(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root ignores permissions")
@pytest.mark.parametrize("entry", ["stage", "train"])
def test_a_run_directory_made_read_only_is_one_line(untrained_dir, entry):
    """An existing run directory (a frozen config, a pruned student and pairs) made read-only. Root ignores
    permissions, so where the test runs as root the command runs as nobody (uid 65534), in folders it may
    enter (pytest's are the owner's only)."""
    import tempfile

    from helpers.train import make_train_run

    base, home = Path(tempfile.mkdtemp(prefix="vip-ro-")), Path(tempfile.mkdtemp(prefix="vip-home-"))
    base.chmod(0o755)
    home.chmod(0o777)
    try:
        shutil.copytree(untrained_dir, base / "model")
        run = make_train_run(base / "run", base / "model")
        for p in [*(base / "model").rglob("*"), run.path, *run.path.rglob("*")]:  # safetensors writes 0600 files
            p.chmod(0o555 if p.is_dir() else 0o444)
        before = listing(base)
        args = ["--config", str(run.path / "config.yaml")] if entry == "stage" else []  # only the permissions are wrong
        r = run_entry(entry, run.path, *args, env=_env(HOME=str(home), PYTHONDONTWRITEBYTECODE="1"),
                      user=65534 if os.geteuid() == 0 else None)
        assert_refused(r, [str(run.path), "cannot be written"])
        assert listing(base) == before
    finally:
        for p in [base, *base.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def _other_student_checkpoint(run) -> Path:
    tag = run.stage(1) / "train" / "ckpt" / "step0000003"
    tag.mkdir(parents=True)
    (tag / "vip_checkpoint.json").write_text(json.dumps({"student_sha256": "0" * 64, "pairs_sha256": "x",
                                                         "config_sha256": "y", "step": 3}))
    return tag


@pytest.mark.parametrize("nprocs", [1, 2])
def test_the_stage_repeats_the_trainers_line_once_without_torchruns_traceback(train_run, capfd, monkeypatch, nprocs):
    """The stage launches training as jobs/stage.py does (driver.run_training: torchrun for 2 processes);
    the trainer refuses a checkpoint of another student: that line is the stage's one line."""
    from vip import config as vip_config
    from vip.orchestrate import driver
    from vip.steps.context import StageContext
    from vip.store import IncompleteError

    run = train_run()
    _other_student_checkpoint(run)
    cfg = vip_config.load(run.path / "config.yaml", [f"train.nprocs={nprocs}", "runtime.progress=false"])
    for k, v in train_env().items():
        monkeypatch.setenv(k, v)
    with pytest.raises(IncompleteError) as e:
        driver.run_training(StageContext(run, cfg, 1))
    err = capfd.readouterr().err
    assert str(e.value).startswith("stage 1 training: checkpoint ") and "was made for another student" in str(e.value)
    assert "error:" not in err and "Traceback" not in err and "ChildFailedError" not in err, err[-3000:]


def test_training_under_torchrun_prints_the_line_once(train_run):
    """torchrun run by hand: every rank fails alike, rank 0 alone prints the line."""
    run = train_run()
    _other_student_checkpoint(run)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "jobs/train_redpo.py"), "--run-dir", str(run.path), "--stage", "1", "--no-progress"],
                       capture_output=True, text=True, env=train_env(), cwd=ROOT, timeout=600)
    assert r.returncode != 0
    assert r.stderr.count("error: checkpoint ") == 1, r.stderr[-3000:]


def test_few_pairs_train_with_a_deepspeed_file_the_preflight_accepted_from_any_directory(train_run, tmp_path):
    """3 pairs shrink the micro-batch below train.batch_size=4, which the DeepSpeed file fixes: it agrees with
    train.*, so launch takes the smaller batch instead of refusing it; a relative train.deepspeed is read from
    the project root, not from where the trainer is launched."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "train_batch_size": 4,
                              "zero_optimization": {"stage": 2}}))
    relative = os.path.relpath(ds, ROOT)  # ../../tmp/...: only right when read from the project root
    run = train_run(n_pairs=3, overrides=["train.batch_size=4", "train.epochs=1", f"train.deepspeed={relative}"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "jobs/train_redpo.py"), "--run-dir", str(run.path),
                        "--stage", "1", "--no-progress"], capture_output=True, text=True, env=train_env(),
                       cwd=elsewhere, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "batch 3 per rank instead of train.batch_size=4" in r.stdout
    done = json.loads((run.stage(1) / "train" / "done.json").read_text())
    assert done["micro_batch"] == 3 and done["steps"] == 1


# --- moved from the unit tests: jobs/stage.py and jobs/train_teacher.py through their CLI -----------------

@pytest.mark.parametrize("args, words", [
    (["select.kk=1"], "select.kk"),
    (["model.backbone=sdxl"], "model.backbone"),
    (["reward.name=clip"], "reward.name"),
    (["select.k=99"], "select.k"),
    (["loo.units=down_blocks.9.motion_modules.0"], "down_blocks.9.motion_modules.0"),
    (["prompts.eval=/nonexistent/prompts.txt"], "/nonexistent/prompts.txt"),
    (["model.path=/nonexistent/model"], "/nonexistent/model"),
    (["model.path=/tmp"], "vip_model.json is missing"),
])
def test_stage_bad_config_is_one_line_and_writes_nothing(tmp_path, untrained_dir, args, words):
    run_dir = tmp_path / "run"
    r = cli("stage.py", "--stage", "1", "--run-dir", str(run_dir), f"model.path={untrained_dir}", *args)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.stderr
    assert not run_dir.exists()


def test_cli_empty_prompt_file_is_one_line(tmp_path, untrained_dir):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n")
    r = cli("stage.py", "--run-dir", str(tmp_path / "run"), f"model.path={untrained_dir}", f"prompts.eval={empty}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "holds no prompts" in r.stderr
    assert not (tmp_path / "run").exists()


def test_cli_refuses_existing_run_with_other_config(tmp_path, untrained_dir):
    run = RunDir(tmp_path / "run")
    run.freeze(config.load(ROOT / "configs" / "toyvid.yaml", [f"model.path={untrained_dir}"]))
    r = cli("stage.py", "--run-dir", str(run.path), f"model.path={untrained_dir}", "select.k=2")
    assert r.returncode == 2 and "another config" in r.stderr and "--run-dir" in r.stderr
    assert not (run.path / "stage1").exists()


@pytest.mark.parametrize("arg, words", [("steps=abc", "teacher.steps"), ("nosuch=1", "teacher.nosuch"),
                                        ("steps", "key=value")])
def test_teacher_cli_bad_override_is_one_line(tmp_path, arg, words):
    r = cli("train_teacher.py", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "o"), arg)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()
