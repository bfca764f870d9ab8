"""What determines a shard: recorded with it as one JSON attribute, checked before it is merged.

Every shard (leave-one-out, pairs, the teacher's pair cache, prompt-filter scores) carries an
attribute `provenance`: the inputs its values follow from (the model's content hash, the sampler
settings, the reward's identity and settings, the seeds, the prompt ids and a hash of the prompt
texts, its place in the plan), built by one function per shard kind in the step's module. A merge
builds what its plan expects of each shard and compares field by field; a shard that differs, or
records no provenance (written before shards recorded it), is refused with one line naming the shard
and the first field that differs, both ways. It is never merged, and never silently recomputed: a
shard copied in from another run is a mistake the user should see (docs/decisions.md).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vip.config import ModelConfig, RewardConfig
from vip.store import IncompleteError

ATTR = "provenance"
_SAMPLE = 1 << 20  # bytes read from each end of a large weights file


def texts_sha256(texts: list[str]) -> str:
    """sha256 of a list of prompts (order and boundaries included)."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def files_identity(path: str) -> str:
    """Content identity of a weights file or directory, cheap enough for every shard: sha256 over each
    file's relative name, size and bytes (files over 2 MiB: their first and last MiB; hidden files and
    folders, e.g. a download cache, left out); computed once per process while no file's size or mtime
    changes. "" for no path."""
    if not path:
        return ""
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    else:  # hidden files and folders (a download cache) are not the weights
        files = sorted(p for p in root.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        return f"missing: {path}"
    stats = [(f.name if f == root else str(f.relative_to(root)), f.stat()) for f in files]
    key = (str(root), tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats))
    if key not in _IDENTITIES:
        h = hashlib.sha256()
        for f, (name, st) in zip(files, stats):
            with open(f, "rb") as fh:
                if st.st_size <= 2 * _SAMPLE:
                    data = fh.read()
                else:
                    data = fh.read(_SAMPLE)
                    fh.seek(st.st_size - _SAMPLE)
                    data += fh.read()
            h.update(f"{name}\0{st.st_size}\0".encode() + hashlib.sha256(data).digest())
        _IDENTITIES[key] = h.hexdigest()
    return _IDENTITIES[key]


_IDENTITIES: dict[tuple, str] = {}


def sampler(m: ModelConfig) -> dict:
    """The settings of cfg.model that change the clips (the weights themselves: the model's hash)."""
    out = {"backbone": m.backbone, "steps": m.steps, "guidance": m.guidance, "dtype": m.dtype, "frames": m.frames,
           "height": m.height, "width": m.width, "fps": m.fps, "adapter": m.adapter,
           "adapter_files": files_identity(m.adapter)}
    if m.backbone == "animatediff":  # read by that backbone only
        out["sampler_preset"] = m.sampler_preset
    return out


def reward(r: RewardConfig) -> dict:
    """The reward's identity and the settings that change its scores (not dtype, device, batch size)."""
    return {"name": r.name, "path": r.path, "files": files_identity(r.path), "frames": r.frames, "fps": r.fps}


def encode(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _short(value, width: int = 40) -> str:
    """A value for the one-line message: a hash by its first 12 digits, anything long cut."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "..."
    s = json.dumps(value, ensure_ascii=False)
    return s if len(s) <= width else s[:width - 3] + "..."


def check(shard: Path, attrs: dict, expected: dict) -> None:
    """Refuse (IncompleteError, one line) a shard whose recorded provenance is not `expected`."""
    fix = f"delete {shard} and run the step again to recompute it"
    raw = attrs.get(ATTR)
    if raw is None:
        raise IncompleteError(f"{shard} records no '{ATTR}' (written before shards recorded what they were "
                              f"computed from, or not by this run); {fix}")
    try:
        recorded = _flat(json.loads(raw))
    except (TypeError, ValueError):
        raise IncompleteError(f"{shard} has an unreadable '{ATTR}' attribute; {fix}") from None
    want = _flat(json.loads(encode(expected)))  # through JSON, as recorded: tuples are lists
    for key, value in want.items():
        if key not in recorded:
            raise IncompleteError(f"{shard} records no provenance field '{key}'; {fix}")
        if recorded[key] != value:
            raise IncompleteError(f"{shard} was computed for another run or config: '{key}' is "
                                  f"{_short(recorded[key])} there, {_short(value)} in this run's plan; it is not "
                                  f"merged: {fix}")
    extra = [k for k in recorded if k not in want]
    if extra:
        raise IncompleteError(f"{shard} records provenance field '{extra[0]}' that this run's plan has not; {fix}")
