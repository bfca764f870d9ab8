"""Typed run configuration: dataclasses from YAML plus `section.key=value` overrides.

Every key is checked (unknown keys and wrong types are one-line errors naming the key),
and the resolved config hashes to a stable sha256 that the run directory freezes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
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
    guidance: float = 1.0  # classifier-free guidance scale (1.0 = off)
    device: str = "cpu"


@dataclass
class RewardConfig:
    name: str = "toyvid_score"
    path: str = ""


@dataclass
class PromptsConfig:
    eval: str = "toyvid"  # a built-in set name or a file (.txt one per line, .csv/.jsonl with a prompt column)
    eval_count: int = 36  # the first N prompts of the set; 0 = all
    seeds_per_prompt: int = 1


@dataclass
class LooConfig:
    units: list[str] = field(default_factory=list)  # evaluate only these units; [] = all
    units_per_task: int = 4  # one task loads the model once and evaluates this many variants
    prompts_per_task: int = 0  # 0 = all evaluation prompts in one task
    batch_size: int = 16


@dataclass
class SelectConfig:
    k: int = 4  # units removed per stage (the paper: 4)


@dataclass
class RuntimeConfig:
    """How to run, not what to compute: excluded from the config hash."""

    executor: str = "local"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    progress: bool = True


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    loo: LooConfig = field(default_factory=LooConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def hash(self) -> str:
        """sha256 of what determines results (everything but `runtime`)."""
        d = self.to_dict()
        d.pop("runtime")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


_POSITIVE = {"loo.units_per_task", "loo.batch_size", "select.k", "model.steps", "prompts.seeds_per_prompt"}
_NON_NEGATIVE = {"prompts.eval_count", "loo.prompts_per_task", "runtime.threads"}


def _coerce(key: str, value, kind):
    if typing.get_origin(kind) is list:
        if isinstance(value, str):  # CLI: loo.units=a,b
            value = [v for v in value.split(",") if v]
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
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


def validate(cfg: Config) -> None:
    d = cfg.to_dict()
    for key in _POSITIVE | _NON_NEGATIVE:
        section, name = key.split(".")
        v = d[section][name]
        if key in _POSITIVE and v < 1:
            raise ConfigError(f"config key {key!r} must be at least 1, got {v}")
        if v < 0:
            raise ConfigError(f"config key {key!r} must be 0 or more, got {v}")
    if cfg.runtime.executor not in ("local",):
        raise ConfigError(f"config key 'runtime.executor' must be 'local', got {cfg.runtime.executor!r}")
    if not cfg.run.name or "/" in cfg.run.name:
        raise ConfigError(f"config key 'run.name' must be a non-empty name without '/', got {cfg.run.name!r}")


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
