"""The run directory: frozen config, atomic files, HDF5 shards with completion markers.

A shard is written to a temporary name, fsynced and renamed; only then is its marker
written, holding the shard's size and sha256. A shard counts as done only when its
marker matches the bytes on disk and the file opens, so a truncated or half-copied
shard is found and recomputed, never merged.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")  # shared filesystems: readers must not block on writers
import h5py  # noqa: E402
import numpy as np  # noqa: E402

from vip.config import Config, ConfigError, to_yaml  # noqa: E402


class IncompleteError(RuntimeError):
    """Inputs of a step are missing or corrupt; the message names them."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary name beside `path`; on success fsync it and rename it to `path`
    (then fsync the folder), on error remove it. Readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict | None:
    """A step's JSON record, or None before the step has run."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def is_current(record: dict | None, cfg: Config) -> bool:
    """A record counts only if it was made under this run's config."""
    return bool(record) and record.get("config_sha256") == cfg.hash()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(directory: Path) -> str:
    """Content hash of a model directory (every file, by relative path), to tie results to weights."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        h.update(str(f.relative_to(directory)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def write_h5(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Atomically write an HDF5 file of named arrays (str arrays as UTF-8) and attributes."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            if arr.dtype.kind in "US":
                f.create_dataset(name, data=arr.astype(object), dtype=h5py.string_dtype())
            else:
                f.create_dataset(name, data=arr)
        for k, v in attrs.items():
            f.attrs[k] = v


def read_h5(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with h5py.File(path, "r") as f:
        arrays = {}
        for name, ds in f.items():
            data = ds[()]
            if h5py.check_string_dtype(ds.dtype) is not None:
                data = np.array([x.decode() if isinstance(x, bytes) else x for x in np.ravel(data)]).reshape(ds.shape)
            arrays[name] = data
        return arrays, dict(f.attrs)


class ShardSet:
    """Per-task shards of one step: shards/task_00007.h5 + done/task_00007 markers."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def shard(self, task: int) -> Path:
        return self.dir / "shards" / f"task_{task:05d}.h5"

    def marker(self, task: int) -> Path:
        return self.dir / "done" / f"task_{task:05d}"

    def write(self, task: int, arrays: dict[str, np.ndarray], attrs: dict) -> None:
        shard = self.shard(task)
        write_h5(shard, arrays, attrs)
        atomic_write_json(self.marker(task), {"sha256": sha256_file(shard), "bytes": shard.stat().st_size})

    def is_done(self, task: int) -> bool:
        """Marker present and matching the shard's bytes, and the shard readable."""
        shard, marker = self.shard(task), self.marker(task)
        if not (shard.is_file() and marker.is_file()):
            return False
        try:
            expect = json.loads(marker.read_text())
            if shard.stat().st_size != expect["bytes"] or sha256_file(shard) != expect["sha256"]:
                return False
            with h5py.File(shard, "r"):
                return True
        except (OSError, ValueError, KeyError):
            return False

    def missing(self, tasks: range | list[int]) -> list[int]:
        return [t for t in tasks if not self.is_done(t)]

    def discard(self, task: int) -> None:
        """Drop a bad shard and its marker so the task reruns from scratch."""
        self.marker(task).unlink(missing_ok=True)
        self.shard(task).unlink(missing_ok=True)

    def read_all(self, tasks: list[int]) -> list[tuple[dict, dict]]:
        missing = self.missing(tasks)
        if missing:
            names = ", ".join(self.shard(t).name for t in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise IncompleteError(
                f"{len(missing)} of {len(tasks)} tasks missing or corrupt in {self.dir}: {names}{more}; "
                "re-run the step to recompute them"
            )
        return [read_h5(self.shard(t)) for t in tasks]


class RunDir:
    """runs/<name>/: config.yaml + config.sha256, one folder per stage."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def for_config(cls, cfg: Config, override: str | Path | None = None) -> "RunDir":
        return cls(Path(override) if override else Path(cfg.run.root) / cfg.run.name)

    def stage(self, n: int) -> Path:
        return self.path / f"stage{n}"

    def freeze(self, cfg: Config) -> None:
        """Write the resolved config once; a later run with another config is refused."""
        digest = cfg.hash()
        hash_file = self.path / "config.sha256"
        if hash_file.exists():
            old = hash_file.read_text().strip()
            if old != digest:
                raise ConfigError(
                    f"run directory {str(self.path)!r} was made with another config (sha256 {old[:12]}, "
                    f"now {digest[:12]}); start a new run with --run-dir <new dir> or run.name=<new name>, "
                    f"or diff against {self.path / 'config.yaml'}"
                )
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"run directory {str(self.path)!r} cannot be written: {e.strerror}") from None
        atomic_write_text(self.path / "config.yaml", to_yaml(cfg))
        atomic_write_text(hash_file, digest + "\n")
