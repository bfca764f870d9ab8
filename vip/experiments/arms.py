"""A training-only experiment: one finished stage of a source run, retrained with train.* overrides.

    <out>/experiment.json           source run, stage and the sha256 of every input (student, pairs, target, teacher)
    <out>/arms/<name>/              one arm = a run directory of its own (config = source config + overrides):
        config.yaml, config.sha256
        stage<S>/pruned -> source   the source stage's pruned student (a link, never copied or changed)
        stage<S>/pairs.h5           the source's pairs, re-keyed to the arm's config hash (see derive_pairs)
        stage<S>/train/             the trainer's output (final/, done.json, metrics.jsonl; checkpoints dropped)
        stage<S>/outcome.json       scored exactly as the outcome step scores a stage
        arm.json                    overrides, inputs, outcome: present = the arm is done

Only train.* keys may change: everything before training (pruning, target, pairs) depends on other
keys alone, so the source's pairs are exactly the pairs the arm's own run would have curated. An arm
whose arm.json matches the current inputs is skipped; one that crashed resumes from its checkpoint.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from vip import config as vip_config
from vip.config import Config, ConfigError
from vip.steps import outcome
from vip.steps.context import StageContext
from vip.steps.pairs import pairs_path, student_sha256
from vip.store import IncompleteError, RunDir, atomic_write_json, read_h5, read_json, sha256_file, write_h5
from vip.train import redpo_trainer

SECTION = "train"
ROOT = Path(__file__).resolve().parents[2]
LOCATION = ("source_run",)  # where the source lies is recorded, not compared: a moved or copied run is the same input


def same_inputs(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in LOCATION} == {k: v for k, v in b.items() if k not in LOCATION}


@dataclass(frozen=True)
class Arm:
    """train.* overrides that differ from the source config, sorted: two spellings of one config are one arm."""

    overrides: tuple[tuple[str, object], ...]

    @property
    def name(self) -> str:
        return "_".join(f"{k.split('.', 1)[1]}-{_fmt(v)}" for k, v in self.overrides) or "source"

    def as_dict(self) -> dict:
        return dict(self.overrides)


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_overrides(items: list[str]) -> dict[str, object]:
    """`train.key=value` strings to {key: raw value}; any other section is refused with one line."""
    out = {}
    for item in items:
        section, name, value = vip_config.parse_override(item)
        if section != SECTION:
            raise ConfigError(f"override {item!r} is outside train.*: a training-only experiment reuses the source "
                              f"stage's pruned student and pairs, which {section}.* would change; start a new run "
                              f"with jobs/stage.py instead")
        out[f"{section}.{name}"] = value
    return out


def load_run_config(run: RunDir) -> Config:
    frozen = run.path / "config.yaml"
    if not frozen.is_file():
        raise ConfigError(f"{frozen} does not exist; --source must be a run directory made by jobs/stage.py")
    return vip_config.load(frozen)


class Experiment:
    def __init__(self, out: str | Path, source: str | Path, stage: int):
        self.out = Path(out)
        self.source = RunDir(Path(source).resolve())
        self.stage = stage
        self.cfg = load_run_config(self.source)
        # the hash the source's records carry: its frozen one (config keys added since then change cfg.hash())
        self.source_hash = (self.source.path / "config.sha256").read_text().strip()
        self.ctx = StageContext(self.source, self.cfg, stage)

    # -- inputs -----------------------------------------------------------------------------------
    @cached_property
    def target(self) -> dict:
        from vip.steps import target

        record = target.load(self.ctx)
        if record is None or record.get("config_sha256") != self.source_hash:
            raise ConfigError(f"{target.target_path(self.ctx)} is missing or from another config; "
                              f"--source must have finished stage {self.stage} up to its pairs")
        return record

    @cached_property
    def inputs(self) -> dict:
        """What every arm's result depends on besides its overrides."""
        pruned, pairs = self.ctx.pruned_path(), pairs_path(self.ctx)
        for p in (pruned / "removed_units.json", pairs):
            if not p.is_file():
                raise ConfigError(f"{p} does not exist; --source must have finished stage {self.stage} "
                                  f"up to curation (jobs/stage.py)")
        attrs = read_h5(pairs)[1]
        student = student_sha256(self.ctx)
        if attrs.get("config_sha256") != self.source_hash or attrs.get("student_sha256") != student:
            raise ConfigError(f"{pairs} was made for another config or student than {self.source.path}'s stage "
                              f"{self.stage}; re-run curation there")
        from vip.steps.target import target_path

        self.target  # noqa: B018 - checks it
        return {"source_run": str(self.source.path), "stage": self.stage,
                "source_config_sha256": self.source_hash, "student_sha256": student,
                "pairs_sha256": sha256_file(pairs), "target_sha256": sha256_file(target_path(self.ctx)),
                "teacher_sha256": self.ctx.teacher_sha256}

    def open(self) -> None:
        """Write experiment.json, or check that an existing one was made from the same inputs."""
        path = self.out / "experiment.json"
        old = read_json(path)
        if old is not None and not same_inputs(old["inputs"], self.inputs):
            diff = [k for k in self.inputs if k not in LOCATION and old["inputs"].get(k) != self.inputs[k]]
            raise ConfigError(f"experiment directory {str(self.out)!r} was made from other inputs ({', '.join(diff)} "
                              f"differ); use a new --out")
        if old is None:
            atomic_write_json(path, {"inputs": self.inputs, "created": time.strftime("%Y-%m-%d %H:%M:%S")})

    # -- arms -------------------------------------------------------------------------------------
    def arm(self, overrides: dict[str, object]) -> Arm:
        """Typed, checked overrides, without those that equal the source's value."""
        cfg = self.arm_config_from(overrides)
        source_train, train = self.cfg.to_dict()[SECTION], cfg.to_dict()[SECTION]
        changed = {f"{SECTION}.{k}": v for k, v in train.items() if v != source_train[k]}
        return Arm(tuple(sorted(changed.items())))

    def arm_config_from(self, overrides: dict[str, object]) -> Config:
        for key in overrides:
            if not key.startswith(SECTION + "."):
                raise ConfigError(f"override {key!r} is outside train.*; a training-only experiment changes train.* only")
        data = self.cfg.to_dict()
        data[SECTION].update({k.split(".", 1)[1]: v for k, v in overrides.items()})
        cfg = vip_config.from_dict(data)
        cfg.runtime.progress = False
        return cfg

    def arm_config(self, arm: Arm, threads: int = 0) -> Config:
        cfg = self.arm_config_from(arm.as_dict())
        cfg.runtime.threads = threads
        return cfg

    def arm_run(self, arm: Arm) -> RunDir:
        return RunDir(self.out / "arms" / arm.name)

    def result(self, arm: Arm) -> dict | None:
        """arm.json if it was made from the current inputs and overrides, else None (not done).

        Not compared: the arm's config hash, which changes whenever a config key is added to the code
        (other keys keep their defaults); the source's frozen hash and the overrides pin the config."""
        record = read_json(self.arm_run(arm).path / "arm.json")
        if record and same_inputs(record["inputs"], self.inputs) and record["overrides"] == arm.as_dict():
            return record
        return None

    def run_arm(self, arm: Arm, threads: int = 0, trainer=None) -> dict:
        """Train (or resume) and score one arm; a finished arm is returned as it is."""
        self.open()
        with _locked(self.arm_run(arm).path):
            done = self.result(arm)
            if done is not None:
                return done
            cfg, run = self.arm_config(arm, threads), self.arm_run(arm)
            t0 = time.perf_counter()
            if not self.trained(run):
                self._prepare(run, arm)
                (trainer or launch_training)(run, cfg, self.stage)
            t1 = time.perf_counter()
            ctx = StageContext(run, cfg, self.stage)
            record = outcome.score_trained(ctx, self.target, redpo_trainer.final_path(run, self.stage))
            atomic_write_json(outcome.outcome_path(ctx), record)
            shutil.rmtree(redpo_trainer.train_dir(run, self.stage) / "ckpt", ignore_errors=True)  # final/ is kept
            result = {"name": arm.name, "overrides": arm.as_dict(), "config_sha256": (run.path / "config.sha256").read_text().strip(),
                      "inputs": self.inputs, "outcome": record,
                      "wall_s": {"train": round(t1 - t0, 1), "score": round(time.perf_counter() - t1, 1)}}
            atomic_write_json(run.path / "arm.json", result)
            return result

    def trained(self, run: RunDir) -> bool:
        """The trainer finished this arm under the config the arm was frozen with."""
        done = read_json(redpo_trainer.train_dir(run, self.stage) / "done.json")
        frozen = run.path / "config.sha256"
        return bool(done) and frozen.is_file() and done.get("config_sha256") == frozen.read_text().strip() \
            and (redpo_trainer.final_path(run, self.stage) / "removed_units.json").is_file()

    def refreeze(self, run: RunDir, arm: Arm) -> str:
        """Freeze the arm's config (source config + overrides) and return its hash, both as a fresh
        process (the trainer) sees the code on disk now.

        Config keys get added to (and removed from) the code while an experiment runs: an arm frozen
        under another key set is the same arm, frozen again; this long-lived process's own config
        classes may already be stale. Checkpoints made under an old hash are dropped."""
        frozen = run.path / "config.sha256"
        old = frozen.read_text().strip() if frozen.is_file() else None
        digest = fresh_freeze(run.path, self.source.path / "config.yaml", arm.as_dict())
        if old is not None and old != digest:
            shutil.rmtree(redpo_trainer.train_dir(run, self.stage) / "ckpt", ignore_errors=True)
        return digest

    def _prepare(self, run: RunDir, arm: Arm) -> None:
        digest = self.refreeze(run, arm)
        stage_dir = run.stage(self.stage)
        stage_dir.mkdir(parents=True, exist_ok=True)
        link, src = stage_dir / "pruned", self.ctx.pruned_path().resolve()
        if not (link.is_symlink() and link.resolve() == src):
            if link.is_symlink() or link.exists():
                link.unlink() if link.is_symlink() else shutil.rmtree(link)
            link.symlink_to(src, target_is_directory=True)
        derive_pairs(pairs_path(self.ctx), stage_dir / "pairs.h5", digest, self.inputs["pairs_sha256"])


FREEZE = """
import sys; sys.path.insert(0, sys.argv[1])
from pathlib import Path
from vip import config
from vip.store import atomic_write_text
cfg = config.load(sys.argv[3], sys.argv[4:])
cfg.runtime.progress = False
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
atomic_write_text(out / "config.yaml", config.to_yaml(cfg))
atomic_write_text(out / "config.sha256", cfg.hash() + "\\n")
print(cfg.hash())
"""


def fresh_freeze(run_dir: Path, source_yaml: Path, overrides: dict) -> str:
    """Write run_dir/config.yaml and config.sha256 (source config + overrides) with the code on disk now."""
    args = [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in overrides.items()]
    r = subprocess.run([sys.executable, "-c", FREEZE, str(ROOT), str(run_dir), str(source_yaml), *args],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise ConfigError(f"cannot freeze {run_dir}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return r.stdout.strip()


def derive_pairs(source: Path, dest: Path, config_sha256: str, source_sha256: str) -> None:
    """The source pairs under the arm's config hash (the trainer accepts only pairs of its own run).

    The arrays and every other attribute are copied unchanged; the file records what it came from.
    Written once: rewriting would change its sha256 and orphan the arm's training checkpoints."""
    if dest.is_file():
        attrs = read_h5(dest)[1]
        if attrs.get("source_pairs_sha256") == source_sha256 and attrs.get("config_sha256") == config_sha256:
            return
    arrays, attrs = read_h5(source)
    attrs.update(config_sha256=config_sha256, source_pairs_sha256=source_sha256,
                 source_config_sha256=attrs.get("config_sha256"))
    write_h5(dest, arrays, attrs)


def launch_training(run: RunDir, cfg: Config, stage: int) -> None:
    """jobs/train_redpo.py in its own process, as the stage driver launches it; its output goes to train.log."""
    from vip.orchestrate.driver import train_command

    env = dict(os.environ)
    if cfg.runtime.threads:
        env["OMP_NUM_THREADS"] = str(cfg.runtime.threads)
    log = run.stage(stage) / "train.log"
    with open(log, "w") as f:
        code = subprocess.run(train_command(run, cfg, stage), env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if code == redpo_trainer.EXIT_REQUEUE:
        raise IncompleteError(f"training of {run.path} stopped on a signal after a checkpoint; run again to resume")
    if code != 0:
        raise IncompleteError(f"training of {run.path} failed (exit {code}); see {log}")


@contextmanager
def _locked(arm_dir: Path):
    """One process per arm: a second command on the same experiment waits, then finds the arm done."""
    arm_dir.mkdir(parents=True, exist_ok=True)
    with open(arm_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def recovered(record: dict, aspect: str) -> float:
    """The fraction of the pruning drop in `aspect` that training won back: (trained - pruned) / (full - pruned)."""
    full, pruned, trained = record["full"][aspect], record["pruned"][aspect], record["redpo"][aspect]
    return (trained - pruned) / (full - pruned) if full != pruned else float("nan")
