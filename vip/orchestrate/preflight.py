"""One preflight for every entry point: what a command needs is checked before anything is written.

jobs/stage.py, jobs/step.py, jobs/render_sbatch.py, jobs/filter_prompts.py and jobs/train_redpo.py all
call `preflight` before the run directory is created or its config frozen, so a bad input is one line
(a ConfigError or IncompleteError) and the corrected config is then accepted in the same directory.

What is checked (each a one-line error naming the key, file or step):
  - the backbone and the reward by name, model.path (or the shipped teacher), reward.path where the
    reward reads one (the keys a backbone or reward ignores are refused by vip.config already)
  - the evaluation prompts (file, control characters, and prompts the reward cannot score: the
    toyvid_score reward knows the toyvid grammar only) and filter.source until the filter is planned
  - the LLM backend of the prompt filter (an API key) where the command runs or plans the filter
  - the DeepSpeed JSON against train.* and the world size training will launch with (train.nprocs
    locally, slurm.nodes x slurm.gpus_per_node on Slurm), resolved as the trainer resolves it
  - the model itself (loaded: its files, loo.units, select.k against the units evaluated, and the
    frames of its clips against what the reward reads) where the command loads it anyway, and
    whenever this call would freeze a new run directory: a frozen config has passed every check
  - training: the stage's pruned student exists
  - the run directory (and the stage's folder) can be written, when they exist already (a finished
    step on a run kept read-only is let through: it writes nothing)
The Slurm client and the cluster's partition names are checked by jobs/stage.py --executor slurm
(vip.orchestrate.slurm.check_client / check_names), the one command that submits.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from vip.config import Config, ConfigError, reads_key
from vip.models.registry import base_model_path, check_backbone
from vip.orchestrate import stepjobs
from vip.prompts.llm import check_backend
from vip.prompts.sets import load_prompts
from vip.rewards.registry import check_reward
from vip.steps.context import StageContext
from vip.store import IncompleteError, RunDir

# the steps that load the stage's model anyway: its checks cost nothing more there
MODEL_STEPS = ("stage", "loo", "select")
STEPS = ("stage", *(s for s in stepjobs.STEPS if s != "filter_merge"), "render")  # the commands it checks for


def preflight(cfg: Config, run: RunDir, stage: int, step: str = "stage", *, freeze: bool = True,
              load_model: bool | None = None, render_steps: list[str] | None = None) -> StageContext:
    """Check what `step` needs (stage: a whole stage, as jobs/stage.py runs it; render: the scripts of
    `render_steps`, default all), then freeze the config unless `freeze` is False. A call that would
    freeze a new run directory checks what every step of the run needs. `load_model` False skips
    the checks that load the model (render_sbatch.py --no-plan on an existing run, a packed rank before it has
    its GPU);
    None: where a step needed loads it anyway (stage, loo, select) or the run directory is new."""
    if stage < 1:
        raise ConfigError(f"--stage must be 1 or more, got {stage}")
    if step not in STEPS:
        raise ValueError(f"unknown preflight step {step!r}")
    fresh = freeze and not (run.path / "config.sha256").is_file()
    if step == "stage" or fresh:  # a new run directory: what every step of the run needs
        needed = set(STEPS)
    elif step == "render":
        needed = set(render_steps or STEPS)
    else:
        needed = {step}

    check_backbone(cfg.model.backbone)
    check_reward(cfg.reward.name)
    model_dir = base_model_path(cfg.model)
    if not model_dir.is_dir():
        raise ConfigError(f"config key 'model.path': model directory {str(model_dir)!r} does not exist")
    if reads_key(cfg, "reward", "path"):
        from vip.rewards.loading import checkpoint_dir

        checkpoint_dir(cfg.reward, f"{cfg.reward.name} checkpoint")
    ctx = StageContext(run, cfg, stage)
    if step != "train":
        check_scorable(cfg, ctx.eval_set.prompts, "prompts.eval", cfg.prompts.eval)
        if ctx.heldout_set is not None:
            check_scorable(cfg, ctx.heldout_set.prompts, "prompts.heldout", cfg.prompts.heldout)
            check_disjoint(ctx.eval_set.prompts, ctx.heldout_set.prompts)
    if "filter" in needed:
        check_backend(cfg.filter)  # e.g. a missing API key, before any job is started
        from vip.steps import filter as prompt_filter

        if prompt_filter.read_plan(run) is None:
            load_prompts(cfg.filter.source, key="filter.source")
    if "train" in needed and step != "train":
        check_deepspeed(cfg, training_world(cfg, slurm=step == "render"))  # render: the scripts run on Slurm
    if step == "train":
        from vip.train.redpo_trainer import read_deepspeed

        read_deepspeed(cfg.train.deepspeed)  # its batch keys are checked against the launch's world there
        check_student(ctx)
    if load_model is None:
        load_model = bool(needed & set(MODEL_STEPS))
    if load_model and (stage == 1 or (run.stage(stage - 1) / "train" / "final").is_dir()):
        check_model(ctx)
    else:
        check_frames(cfg, saved_frames(model_dir))
    if type(run).freeze is RunDir.freeze:  # not a read-only view of the run (jobs/stage.py --dry-run)
        try:
            check_writable(run, stage)
        except ConfigError:
            if not is_done(ctx, step):  # a finished run kept read-only still says so (and prints its results)
                raise
    if freeze:
        run.freeze(cfg)
    return ctx


def check_model(ctx: StageContext) -> None:
    """Load the stage's model (kept on ctx for the command): loo.units, select.k, the clips' frames."""
    from vip.steps import loo

    try:
        model = ctx.model
    except OSError as e:  # a file the loader's own checks missed (transformers' and diffusers' from_pretrained)
        raise ConfigError(f"model directory {str(ctx.model_path())!r} cannot be loaded as a {ctx.cfg.model.backbone} "
                          f"model: {str(e).strip().splitlines()[0]}") from None
    units = loo.units_to_evaluate(ctx)  # checks loo.units
    k = ctx.cfg.select.k_at(ctx.stage)
    if k > len(units):
        raise ConfigError(f"config key 'select.k' gives {k} units to remove in stage {ctx.stage} but only {len(units)} units are evaluated "
                          f"({len(model.units())} in the model); expected 1 to {len(units)}")
    check_frames(ctx.cfg, getattr(model, "meta", {}).get("frames"))


def saved_frames(model_dir: Path) -> int | None:
    """The clip length recorded in a saved model's vip_model.json (read without loading the model)."""
    meta = model_dir / "vip_model.json"
    try:
        return int(json.loads(meta.read_text()).get("frames")) if meta.is_file() else None
    except (ValueError, TypeError, OSError):
        return None


def reward_frames(cfg: Config) -> tuple[int, str]:
    """The frames per clip the reward reads at least, and the key that sets it (0: any clip)."""
    if cfg.reward.name == "videoscore":
        from vip.rewards.videoscore import PUBLISHED_FRAMES

        return cfg.reward.frames or PUBLISHED_FRAMES, "reward.frames"
    if cfg.reward.name == "videoreward":
        from vip.rewards.videoreward import FRAME_FACTOR

        return cfg.reward.frames or FRAME_FACTOR, "reward.frames" if cfg.reward.frames else "model.frames"
    return 0, ""


def check_frames(cfg: Config, clip_frames: int | None) -> None:
    """Clips shorter than the reward reads are refused here, not when the first clip is scored."""
    if reads_key(cfg, "model", "frames") and cfg.model.frames:
        clip_frames = cfg.model.frames
    need, key = reward_frames(cfg)
    if not clip_frames or clip_frames >= need:
        return
    longer = "" if not reads_key(cfg, "model", "frames") else f", or generate longer clips (model.frames={need})"
    raise ConfigError(f"config key {key!r}: the reward {cfg.reward.name} reads {need} frames per clip, but the "
                      f"{cfg.model.backbone} model's clips have {clip_frames}; set reward.frames={clip_frames} or "
                      f"fewer{longer}")


def check_disjoint(evaluated: list[str], heldout: list[str]) -> None:
    """No held-out prompt is one leave-one-out scores: the outcome must be measured on prompts it never saw."""
    shared = [p for p in dict.fromkeys(heldout) if p in set(evaluated)]
    if shared:
        raise ConfigError(f"config key 'prompts.heldout': {len(shared)} of its prompts are also evaluation prompts "
                          f"(prompts.eval), e.g. {shared[0]!r}; held-out prompts must be ones leave-one-out never "
                          "scores: use another set or file, or fewer prompts.eval_count")


def check_scorable(cfg: Config, prompts: list[str], key: str, spec: str) -> None:
    """Every prompt is one the reward can score: toyvid_score knows the toyvid grammar only."""
    if cfg.reward.name != "toyvid_score":
        return
    from vip.toyvid import world

    for i, p in enumerate(prompts):
        try:
            world.parse(p)
        except ValueError:
            raise ConfigError(f"{key}: prompt {i + 1} of {spec!r}, {p!r}, is not in the toyvid grammar, the only "
                              f"prompts the reward toyvid_score can score (e.g. {world.all_prompts()[0].text!r}); "
                              f"use toyvid prompts ({key}={'toyvid' if key == 'prompts.eval' else 'toyvid_heldout'}) or another "
                              "reward") from None


def training_world(cfg: Config, slurm: bool = False) -> int:
    """The ranks training will launch with: train.nprocs locally, nodes x GPUs per node on Slurm."""
    if slurm or cfg.runtime.executor == "slurm":
        return cfg.slurm.nodes * max(1, cfg.slurm.gpus_per_node)
    return cfg.train.nprocs


def check_deepspeed(cfg: Config, world: int) -> None:
    """What the trainer checks at launch (vip.train.redpo_trainer.deepspeed_config), for `world` ranks."""
    from vip.train.redpo_trainer import deepspeed_config

    deepspeed_config(cfg.train.deepspeed, cfg.train, world, cfg.model.device)


def check_student(ctx: StageContext) -> None:
    if not (ctx.pruned_path() / "removed_units.json").is_file():
        raise IncompleteError(f"training needs stage {ctx.stage}'s pruned student ({ctx.pruned_path()}), which "
                              f"selection writes; run the stage's selection first (jobs/step.py select --run-dir "
                              f"{ctx.run.path} --stage {ctx.stage}, or jobs/stage.py)")


def is_done(ctx: StageContext, step: str) -> bool:
    """The command has nothing to write: its step (stage: the stage's outcome and the report) is done."""
    try:
        if step == "stage":
            return stepjobs.STEPS["outcome"].done(ctx) and (ctx.run.path / "report.html").is_file()
        return stepjobs.STEPS[step].done(ctx)
    except (OSError, ValueError, KeyError):
        return False


def check_writable(run: RunDir, stage: int) -> None:
    """An existing run directory (and stage folder) that cannot be written is one line now, not a
    traceback at the first file a step writes. Asked of the OS (access(2): modes, ACLs, a read-only
    mount), so that the check itself writes nothing."""
    for path in (run.path, run.stage(stage)):
        if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            why = "a read-only file system" if os.statvfs(path).f_flag & os.ST_RDONLY else "permission denied"
            raise ConfigError(f"run directory {str(path)!r} cannot be written ({why}); fix its permissions "
                              "or give another --run-dir")
