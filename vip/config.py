"""Typed run configuration: dataclasses from YAML plus `section.key=value` overrides.

Every key is checked (unknown keys and wrong types are one-line errors naming the key),
and the resolved config hashes to a stable sha256 that the run directory freezes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad config key, type, value or file; the message is one line that says what is expected."""


@dataclass
class RunConfig:
    name: str = "toyvid"  # run directory is <root>/<name> unless --run-dir is given
    root: str = "runs"
    seed: int = 0  # base of the evaluation seeds


@dataclass
class ModelConfig:
    backbone: str = "toyvid"
    path: str = ""  # a local directory in the backbone's published format; "" = the shipped toyvid teacher
    steps: int = 10  # sampler steps (toyvid: 10 DDIM steps score as well as 20, docs/teacher)
    guidance: float = 1.0  # classifier-free guidance scale (1.0 or less = off, as in diffusers' pipelines)
    device: str = "cpu"
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    adapter: str = ""  # AnimateDiff: a MotionAdapter directory or a .safetensors file (Lightning)
    frames: int = 0  # 0 = the backbone's default
    height: int = 0  # pixels; 0 = the backbone's default
    width: int = 0
    fps: int = 0  # frame-rate conditioning (VideoCrafter2); 0 = the backbone's default
    # AnimateDiff's DDIM settings: animatediff_official (guoyww/AnimateDiff's scripts/animate.py: "leading"
    # timesteps, set_alpha_to_one) | diffusers (diffusers' AnimateDiff docs: "linspace", alpha_cumprod[0] at
    # the end). Read by backbone animatediff only (docs/decisions.md)
    sampler_preset: str = "animatediff_official"


@dataclass
class RewardConfig:
    name: str = "toyvid_score"
    path: str = ""  # a local checkpoint directory in the reward's published format
    frames: int = 0  # frames sampled per clip; 0 = the reward's published count
    fps: float = 0.0  # frame rate of the scored clips (VideoReward samples 2 per second); 0 = 8 (AnimateDiff, VideoCrafter2)
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16
    device: str = ""  # "" = model.device
    batch_size: int = 4  # clips per scoring forward


@dataclass
class PromptsConfig:
    eval: str = "toyvid"  # a built-in set name or a file (.txt one per line, .csv/.jsonl with a prompt column)
    eval_count: int = 36  # the first N prompts of the set; 0 = all
    seeds_per_prompt: int = 1
    # The outcome (Table B) is scored on these prompts, which neither leave-one-out nor curation sees (curation
    # skips them; the evaluation set may not hold them), with seeds of their own. "" = on the evaluation set.
    heldout: str = ""  # a built-in set name (toyvid_heldout) or a file, like `eval`
    heldout_count: int = 0  # the first N prompts of the held-out set; 0 = all


@dataclass
class LooConfig:
    units: list[str] = field(default_factory=list)  # evaluate only these units; [] = all
    units_per_task: int = 4  # one task loads the model once and evaluates this many variants
    prompts_per_task: int = 0  # 0 = all evaluation prompts in one task
    batch_size: int = 16
    # plain: one batch per variant (units toggled in place). batched: vip.steps.loo.engine, gated units so
    # (variant, prompt) jobs of several variants share a batch and one compiled graph serves them all.
    engine: str = "plain"
    compile: bool = False  # engine=batched: torch.compile the gated denoiser once per task (CUDA)
    # Adaptive (vip.steps.loo.adaptive): rounds of adaptive_first, then doubling, samples; a unit whose place
    # in both rankings is settled (confidence bounds at adaptive_z) is not evaluated further. Off until
    # it is shown safe on more runs (docs/decisions.md).
    adaptive: bool = False
    adaptive_z: float = 3.0
    adaptive_first: int = 8


@dataclass
class SelectConfig:
    # units removed per stage (the paper: 4); a list is per stage, its last entry for the stages after it
    # (select.k=8,2: 8 in stage 1, 2 in stage 2 and later); k: 4 in YAML or select.k=4 reads as [4]
    k: list[int] = field(default_factory=lambda: [4])

    def k_at(self, stage: int) -> int:
        return self.k[min(stage, len(self.k)) - 1]


@dataclass
class FilterConfig:
    """LLM prompt scoring (supplement F), run once per run and shared by every stage."""

    source: str = "toyvid"  # prompts to score: a built-in set or a .txt/.csv/.jsonl file
    backend: str = "toyvid"  # toyvid (offline: the grammar knows each prompt) | gemini (google-genai)
    model: str = "gemini-2.0-flash"  # the paper's Gemini 2.0 Flash
    base_url: str = ""  # "" = Google's endpoint; tests point it at a local server
    cache: str = ""  # answer cache (SQLite); "" = ~/.cache/vip/llm_answers.sqlite, shared by runs
    prompts_per_task: int = 256
    concurrency: int = 8  # requests in flight per task
    max_retries: int = 6  # on 429, 5xx and timeouts, with exponential backoff and jitter
    timeout_s: float = 60.0


@dataclass
class CurateConfig:
    """Target detection and preference-pair curation (supplement C.2)."""

    target_threshold: float = 0.0  # 0 = one target, the largest drop; > 0 = every aspect that drops at least this
    max_prompts: int = 48  # target-filtered prompts used for pairs (the first N); 0 = all
    seeds_per_prompt: int = 3  # candidate pairs per prompt
    alpha: float = 0.3  # keep a pair only if its unpreferred target score >= mean - alpha * std
    # one target that keeps fewer than train.min_pairs: the next aspect that dropped, on the same candidates
    # (vip.curation.curate_with_fallback); false = the largest drop only, and the stage may skip training
    fallback: bool = True
    samples_per_task: int = 48
    batch_size: int = 16


@dataclass
class TrainConfig:
    """ReDPO training of the pruned student (main paper Sec. 3; Diffusion-DPO, Wallace et al.)."""

    loss: str = "redpo"  # redpo (DPO + w_sft * SFT) | sft (distillation only: the paper's SFT baseline) | dpo
    # A named set of reference, beta, w_sft, lr and min_lr (RECIPES); keys set in the file or on the command line
    # win over it. "" = those keys alone. Out of the hash: the values it resolves to are in it.
    recipe: str = ""
    beta: float = 5000.0  # Diffusion-DPO's beta (not published for V.I.P.)
    w_sft: float = 1.0e6  # weight of the SFT (distillation) term; the paper's VideoCrafter2 value
    reference: str = "teacher"  # DPO reference: teacher (frozen full M0) | student (frozen initial student)
    sft_target: str = "teacher"  # teacher (distill M0's prediction on the winner) | noise (the diffusion target)
    # share of pairs trained on the empty prompt (both trainers of Diffusion-DPO use 0.2): keeps the
    # unconditional branch of classifier-free guidance trained; 0 for models sampled without guidance
    prompt_dropout: float = 0.2
    min_pairs: int = 16  # fewer kept pairs than this: the stage skips training (a handful of pairs overfits)
    epochs: int = 4
    batch_size: int = 4  # pairs per rank per micro-step
    grad_accum: int = 1
    lr: float = 1.0e-5
    min_lr: float = 1.0e-6
    warmup_steps: int = 5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50  # optimizer steps; 0 = only on a signal and at the end
    keep_checkpoints: int = 2
    deepspeed: str = "configs/deepspeed/zero2.json"
    # How the denoisers run, not what they compute (neither is in the config hash; docs/benchmarks.md):
    # backbone = the loader's choice (AnimateDiff: diffusers' ResNets only; Wan: every block) | every_block
    # (AnimateDiff: ResNets, attentions and motion modules; 16 pairs of 16x256x256 fit in 47 GB) | none
    checkpointing: str = "backbone"
    compile: bool = False  # regional torch.compile of policy, teacher and reference (vip/train/regions.py)
    # torch.compile's backend: inductor (the speed); aot_eager traces and runs the same graphs without code
    # generation (how the CPU tests check the regions; Inductor's CPU code is not what a GPU runs anyway)
    compile_backend: str = "inductor"
    nprocs: int = 1  # processes per node when jobs/stage.py launches training itself (not in the config hash)


@dataclass
class RuntimeConfig:
    """How to run, not what to compute: excluded from the config hash."""

    executor: str = "local"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    progress: bool = True


@dataclass
class SlurmConfig:
    """How to submit to Slurm (runtime.executor=slurm and the sbatch templates): excluded from the config hash.

    Values go into #SBATCH lines shell-quoted; control characters (newlines) are refused."""

    partition: str = ""  # GPU jobs (array tasks, training); "" = the cluster's default partition
    cpu_partition: str = ""  # small CPU jobs (merges, selection, curation); "" = partition
    account: str = ""
    qos: str = ""
    time: int = 240  # minutes per job or array task
    cpu_time: int = 60  # minutes per small CPU job
    mem_gb: int = 0  # per node; 0 = the cluster's default
    gpus_per_node: int = 1  # training: GPUs per node (one task per GPU); array tasks use one GPU each
    array_gpus: int = 1  # GPUs per array task and single GPU job; 0 on CPU-only clusters
    cpus_per_task: int = 8
    nodes: int = 1  # training: nodes x gpus_per_node tasks
    constraint: str = ""
    exclude: str = ""
    extra: list[str] = field(default_factory=list)  # extra sbatch options, e.g. ["--reservation=x"]
    array_parallelism: int = 0  # at most N array tasks at once (%N); 0 = no cap
    max_requeues: int = 3  # a task requeued (preemption, time limit) more often than this fails
    signal_delay_s: int = 120  # the preemption/time-limit signal comes this long before the kill
    # Packed mode, for clusters that cap jobs per user or array sizes: each fanned-out step (loo, pairs,
    # filter) is one job of packed_ranks ranks (one GPU each, or CPU ranks) that share out its tasks.
    packed: bool = False
    packed_ranks: int = 0  # ranks of a packed job; 0 = nodes x max(1, gpus_per_node); never more than its tasks


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    loo: LooConfig = field(default_factory=LooConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def hash(self) -> str:
        """sha256 of what determines results (everything but `runtime`, `slurm`, the local process
        count `train.nprocs` and the trainer's speed switches `train.checkpointing` / `train.compile[_backend]`:
        how to run; a checkpoint resumes on another world size or with them changed), and `train.recipe`,
        whose values are hashed as the keys they set)."""
        d = self.to_dict()
        d.pop("runtime")
        d.pop("slurm")
        for key in ("nprocs", "checkpointing", "compile", "compile_backend", "recipe"):
            d["train"].pop(key)
        # the sampler preset changes nothing for other backbones, and `diffusers` is the sampler from before
        # the key existed: left out then, so those runs keep their hash
        if d["model"]["backbone"] != "animatediff" or d["model"]["sampler_preset"] == "diffusers":
            d["model"].pop("sampler_preset")
        if not d["prompts"]["heldout"]:  # scored on the evaluation set, as before the keys existed
            for key in ("heldout", "heldout_count"):
                d["prompts"].pop(key)
        if d["curate"]["fallback"]:  # the default: hashed as before the key existed (a curation.json made then
            d["curate"].pop("fallback")  # stays; only a target that kept too few pairs would differ)
        if len(d["select"]["k"]) == 1:  # one k for every stage: hashed as the int it was before lists
            d["select"]["k"] = d["select"]["k"][0]
        if not d["loo"]["adaptive"]:  # these keys change nothing then, and runs planned before they existed stay valid
            for key in ("adaptive", "adaptive_z", "adaptive_first"):
                d["loo"].pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


_POSITIVE = {"loo.units_per_task", "loo.batch_size", "loo.adaptive_z", "loo.adaptive_first", "select.k", "model.steps",
             "prompts.seeds_per_prompt",
             "filter.prompts_per_task", "filter.concurrency", "filter.timeout_s", "curate.seeds_per_prompt",
             "curate.samples_per_task", "curate.batch_size", "train.epochs", "train.batch_size", "train.grad_accum",
             "train.lr", "train.beta", "train.keep_checkpoints", "train.nprocs",
             "reward.batch_size", "slurm.time", "slurm.cpu_time", "slurm.cpus_per_task", "slurm.nodes"}
_NON_NEGATIVE = {"model.frames", "model.height", "model.width", "model.fps", "reward.frames", "reward.fps", "prompts.eval_count", "prompts.heldout_count", "loo.prompts_per_task", "runtime.threads", "filter.max_retries",
                 "curate.target_threshold", "curate.max_prompts", "curate.alpha", "train.w_sft", "train.min_lr",
                 "train.prompt_dropout",
                 "train.warmup_steps", "train.weight_decay", "train.grad_clip", "train.checkpoint_every",
                 "slurm.mem_gb", "slurm.gpus_per_node", "slurm.array_gpus", "slurm.array_parallelism",
                 "slurm.max_requeues", "slurm.signal_delay_s", "slurm.packed_ranks"}
_DTYPES = ("auto", "float32", "bfloat16", "float16")
# train.recipe -> the train.* values it stands for (docs/decisions.md, "The demo").
# paper: the frozen full teacher as the DPO reference and Diffusion-DPO's beta, as the paper's method figure
#   has it; w_SFT and lr are not published, these are the values the toyvid demo ran with before.
# revised: a frozen copy of the initial student as the reference, a 10x smaller lr, and a DPO term that the
#   SFT term does not drown out (docs/results.md, Table D revised and the w_SFT sweep).
RECIPES = {
    "paper": {"reference": "teacher", "beta": 5000.0, "w_sft": 1000.0, "lr": 1.0e-4, "min_lr": 1.0e-5},
    "revised": {"reference": "student", "beta": 500.0, "w_sft": 100.0, "lr": 1.0e-5, "min_lr": 1.0e-6},
}
SAMPLER_PRESETS = ("animatediff_official", "diffusers")  # vip.models.animatediff builds each
_CHOICES = {"filter.backend": ("toyvid", "gemini"), "train.reference": ("teacher", "student"),
            "train.sft_target": ("teacher", "noise"), "train.loss": ("redpo", "sft", "dpo"),
            "loo.engine": ("plain", "batched"), "train.checkpointing": ("backbone", "every_block", "none"),
            "train.compile_backend": ("inductor", "aot_eager", "cudagraphs"),
            "model.dtype": _DTYPES, "reward.dtype": _DTYPES, "model.sampler_preset": SAMPLER_PRESETS,
            "train.recipe": ("", *RECIPES)}


def _coerce(key: str, value, kind):
    if typing.get_origin(kind) is list:
        inner = typing.get_args(kind)[0]
        if isinstance(value, str):  # CLI: loo.units=a,b; select.k=8,2
            value = [v if inner is str else parse_value(v) for v in value.split(",") if v]
        elif inner is int and isinstance(value, int) and not isinstance(value, bool):  # select.k: 4
            value = [value]
        if isinstance(value, list):
            return [_coerce(key, v, typing.get_args(kind)[0]) for v in value]
        raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # nan fails every comparison: alpha=nan would reject every pair
                raise ConfigError(f"config key {key!r} must be a finite number, got {value!r}")
            return number
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"config key {key!r} expects {getattr(kind, '__name__', kind)}, got {value!r}")


def apply(section_obj, section: str, values: dict) -> None:
    """Set typed fields of one dataclass from a mapping; unknown keys and wrong types are ConfigErrors."""
    hints = typing.get_type_hints(type(section_obj))
    names = [f.name for f in dataclasses.fields(section_obj)]
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{section}.{key}'; {section} has: {', '.join(names)}")
        setattr(section_obj, key, _coerce(f"{section}.{key}", value, hints[key]))


def from_dict(data: dict) -> Config:
    cfg = Config()
    sections = [f.name for f in dataclasses.fields(cfg)]
    for section, values in (data or {}).items():
        if section not in sections:
            raise ConfigError(f"unknown config section {section!r}; expected one of: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping of keys, got {values!r}")
        apply(getattr(cfg, section), section, values)
    train = (data or {}).get("train") or {}
    if cfg.train.recipe in RECIPES:  # an unknown name is refused by validate, naming the choices
        apply(cfg.train, "train", {k: v for k, v in RECIPES[cfg.train.recipe].items() if k not in train})
    validate(cfg)
    return cfg


def parse_value(raw: str):
    """A command-line value as YAML reads it (3 -> int, 0.5 -> float, a,b -> str)."""
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw


def parse_override(item: str) -> tuple[str, str, object]:
    key, sep, raw = item.partition("=")
    if not sep or key.count(".") != 1:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. select.k=2)")
    section, name = key.split(".")
    return section, name, parse_value(raw)


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist (see configs/ for examples)")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    for item in overrides:
        section, name, value = parse_override(item)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping of keys")
        data[section][name] = value
    return from_dict(data)


# The model.* and reward.* keys a backbone or reward does not read (it reads every other key of its section).
# A non-default value of one would change the config hash and nothing else, so it is refused (naming the key);
# model.sampler_preset is left out of the hash instead (Config.hash). A backbone or reward registered in code
# and not listed here is not checked.
IGNORED_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "model": {"toyvid": ("frames", "height", "width", "fps", "adapter"),  # 8 frames of 32x32, fixed by its world
              "animatediff": ("fps",), "animatediff_lightning": ("fps",),
              "videocrafter2": ("adapter",), "wan2.1": ("fps", "adapter")},
    "reward": {"toyvid_score": ("path", "frames", "fps"),  # rule-based: no weights, every frame of the clip
               "videoscore": ("fps",), "videoreward": ()},
}


def _owner(cfg: Config, section: str) -> str:
    return cfg.model.backbone if section == "model" else cfg.reward.name


def reads_key(cfg: Config, section: str, key: str) -> bool:
    """True when the chosen backbone (section model) or reward is known to read `section.key`."""
    ignored = IGNORED_KEYS[section].get(_owner(cfg, section))
    return ignored is not None and key not in ignored


def validate_keys_read(cfg: Config) -> None:
    for section, table in IGNORED_KEYS.items():
        owner = _owner(cfg, section)
        defaults = {"model": ModelConfig(), "reward": RewardConfig()}[section]
        for key in table.get(owner, ()):
            value = getattr(getattr(cfg, section), key)
            if value != getattr(defaults, key):
                what = "backbone" if section == "model" else "reward"
                raise ConfigError(f"config key '{section}.{key}' is {value!r}, but the {what} {owner!r} does not read "
                                  f"it (it would change the config hash and nothing else); leave it at "
                                  f"{getattr(defaults, key)!r}")


def _check_sign(key: str, v) -> None:
    if key in _POSITIVE and (v < 1 if isinstance(v, int) else v <= 0):
        raise ConfigError(f"config key {key!r} must be {'at least 1' if isinstance(v, int) else 'positive'}, got {v}")
    if v < 0:
        raise ConfigError(f"config key {key!r} must be 0 or more, got {v}")


def validate(cfg: Config) -> None:
    d = cfg.to_dict()
    if not cfg.select.k:
        raise ConfigError("config key 'select.k' needs the units removed per stage (e.g. 4, or 8,2 for stages 1, 2); "
                          "got nothing")
    for key in _POSITIVE | _NON_NEGATIVE:
        section, name = key.split(".")
        values = d[section][name] if isinstance(d[section][name], list) else [d[section][name]]
        for v in values:
            _check_sign(key, v)
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        if d[section][name] not in allowed:
            raise ConfigError(f"config key {key!r} must be one of {', '.join(repr(a) if a == '' else a for a in allowed)}; got {d[section][name]!r}")
    if cfg.train.prompt_dropout > 1:
        raise ConfigError(f"config key 'train.prompt_dropout' is a share of pairs, from 0 to 1; got {cfg.train.prompt_dropout}")
    if cfg.train.checkpointing == "every_block" and cfg.model.backbone == "videocrafter2":
        raise ConfigError("config key 'train.checkpointing': every_block is for animatediff, toyvid and wan2.1; "
                          "videocrafter2 has no checkpointing: use 'none' or 'backbone'")
    if cfg.train.compile and cfg.model.backbone == "videocrafter2":
        raise ConfigError("config key 'train.compile': regional compilation knows the blocks of animatediff, toyvid "
                          "and wan2.1, not videocrafter2; set train.compile=false")
    if cfg.runtime.executor not in ("local", "slurm"):
        raise ConfigError(f"config key 'runtime.executor' must be 'local' or 'slurm', got {cfg.runtime.executor!r}")
    validate_keys_read(cfg)
    validate_slurm(cfg.slurm)
    if not cfg.run.name or "/" in cfg.run.name:
        raise ConfigError(f"config key 'run.name' must be a non-empty name without '/', got {cfg.run.name!r}")


_SBATCH_OPTION = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*(=.*)?", re.DOTALL)


def has_control_chars(value: str) -> bool:
    """Newlines and other control characters (C0, DEL, C1) and the Unicode line/paragraph separators."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)


def validate_slurm(s: SlurmConfig) -> None:
    """Slurm values end up in #SBATCH lines: shell-quoted there, but a newline would end the line."""
    for name in ("partition", "cpu_partition", "account", "qos", "constraint", "exclude"):
        v = getattr(s, name)
        if has_control_chars(v):
            raise ConfigError(f"config key 'slurm.{name}' must not contain newlines or control characters, got {v!r}")
    for opt in s.extra:
        if has_control_chars(opt) or not _SBATCH_OPTION.fullmatch(opt):
            raise ConfigError(f"config key 'slurm.extra' holds sbatch options like '--reservation=x' (one line each), "
                              f"got {opt!r}")


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
