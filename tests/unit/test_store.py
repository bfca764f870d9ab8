import hashlib
import json

import numpy as np
import pytest

from vip import config
from vip.config import ConfigError
from vip.store import (IncompleteError, RunDir, ShardSet, atomic_write_json, is_current, read_h5, read_json,
                       sha256_file, sha256_tree, write_h5)


def _arrays(i):
    return {"scores": np.full((2, 3), float(i), dtype=np.float32), "names": np.array(["a", "b"])}


def test_h5_round_trip_keeps_values_strings_and_attrs(tmp_path):
    write_h5(tmp_path / "x.h5", _arrays(7), {"aspects": "[\"vq\"]", "task": 3})
    arrays, attrs = read_h5(tmp_path / "x.h5")
    assert arrays["scores"].tolist() == [[7.0] * 3] * 2
    assert arrays["names"].tolist() == ["a", "b"]
    assert attrs["task"] == 3
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_marker_written_after_shard_and_missing_named(tmp_path):
    s = ShardSet(tmp_path)
    for i in (0, 2):
        s.write(i, _arrays(i), {})
    assert s.missing(range(3)) == [1]
    with pytest.raises(IncompleteError, match="task_00001.h5"):
        s.read_all([0, 1, 2])
    assert [a["scores"][0, 0] for a, _ in s.read_all([0, 2])] == [0.0, 2.0]


def test_truncated_or_altered_shard_is_not_done(tmp_path):
    s = ShardSet(tmp_path)
    s.write(0, _arrays(0), {})
    s.write(1, _arrays(1), {})
    data = s.shard(0).read_bytes()
    s.shard(0).write_bytes(data[: len(data) // 2])  # truncated copy
    raw = bytearray(s.shard(1).read_bytes())
    raw[-1] ^= 0xFF  # same size, different bytes
    s.shard(1).write_bytes(bytes(raw))
    assert s.missing([0, 1]) == [0, 1]
    s.discard(0)
    assert not s.shard(0).exists() and not s.marker(0).exists()


def test_shard_without_marker_is_not_done(tmp_path):
    s = ShardSet(tmp_path)
    write_h5(s.shard(0), _arrays(0), {})  # crashed before the marker
    assert s.missing([0]) == [0]


def test_failed_write_leaves_nothing(tmp_path):
    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        write_h5(tmp_path / "y.h5", {"x": Boom()}, {})
    assert list(tmp_path.iterdir()) == []
    atomic_write_json(tmp_path / "j.json", {"a": 1})
    assert (tmp_path / "j.json").read_text().strip().startswith("{")


# --- the exact layout and messages (mutation testing, docs/testing.md) ---------------------------------

def test_json_records_are_indented_in_insertion_order_with_a_final_newline(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"b": 1, "a": [2]})
    assert (tmp_path / "r.json").read_text() == '{\n  "b": 1,\n  "a": [\n    2\n  ]\n}\n'
    assert read_json(tmp_path / "r.json") == {"b": 1, "a": [2]}
    assert read_json(tmp_path / "missing.json") is None  # the step has not run


def test_string_arrays_of_any_shape_round_trip(tmp_path):
    names = np.array([["a", "bé"], ["c", "d"]])
    write_h5(tmp_path / "x.h5", {"names": names, "none": np.array([], dtype=str)}, {})
    arrays, _ = read_h5(tmp_path / "x.h5")
    assert arrays["names"].shape == (2, 2) and arrays["names"].tolist() == names.tolist()
    assert arrays["none"].shape == (0,)  # a task with no prompts still writes its (empty) names


def test_shards_and_markers_live_in_their_folders(tmp_path):
    s = ShardSet(tmp_path)
    assert s.shard(7) == tmp_path / "shards" / "task_00007.h5"
    assert s.marker(7) == tmp_path / "done" / "task_00007"
    s.discard(3)  # nothing there: nothing to do, no error
    s.write(3, _arrays(3), {})
    marker = json.loads(s.marker(3).read_text())
    assert marker == {"sha256": sha256_file(s.shard(3)), "bytes": s.shard(3).stat().st_size}


def test_a_marker_or_shard_that_cannot_be_read_is_not_done(tmp_path):
    s = ShardSet(tmp_path)
    s.shard(0).parent.mkdir(parents=True)
    s.shard(0).write_bytes(b"not hdf5 at all")  # the marker matches its bytes, but it does not open
    atomic_write_json(s.marker(0), {"sha256": sha256_file(s.shard(0)), "bytes": s.shard(0).stat().st_size})
    s.write(1, _arrays(1), {})
    s.marker(1).write_text("{not json")
    s.write(2, _arrays(2), {})
    s.marker(2).write_text('{"bytes": 1}')  # no sha256
    assert s.missing([0, 1, 2]) == [0, 1, 2]


def test_missing_tasks_are_named_ten_at_most(tmp_path):
    s = ShardSet(tmp_path)
    names = ", ".join(f"task_{t:05d}.h5" for t in range(10))
    with pytest.raises(IncompleteError) as e:
        s.read_all(list(range(11)))
    assert str(e.value) == (f"11 of 11 tasks missing or corrupt in {tmp_path}: {names} and 1 more; "
                            "re-run the step to recompute them")
    with pytest.raises(IncompleteError) as e:
        s.read_all(list(range(10)))
    assert str(e.value) == f"10 of 10 tasks missing or corrupt in {tmp_path}: {names}; re-run the step to recompute them"


def test_tree_hash_covers_relative_names_and_contents(tmp_path):
    for root in ("a", "b"):
        (tmp_path / root / "sub").mkdir(parents=True)
        (tmp_path / root / "w.bin").write_bytes(b"weights")
        (tmp_path / root / "sub" / "c.json").write_text("{}")
    expect = hashlib.sha256()
    for rel in ("sub/c.json", "w.bin"):  # sorted by path
        expect.update(rel.encode() + b"\0" + hashlib.sha256((tmp_path / "a" / rel).read_bytes()).hexdigest().encode())
    assert sha256_tree(tmp_path / "a") == sha256_tree(tmp_path / "b") == expect.hexdigest()
    (tmp_path / "b" / "w.bin").rename(tmp_path / "b" / "v.bin")
    assert sha256_tree(tmp_path / "b") != sha256_tree(tmp_path / "a")
    assert sha256_file(tmp_path / "a" / "w.bin") == hashlib.sha256(b"weights").hexdigest()


def test_a_record_is_current_only_under_the_same_config():
    cfg = config.load(None)
    assert is_current({"config_sha256": cfg.hash()}, cfg)
    assert not is_current({"config_sha256": config.load(None, ["select.k=2"]).hash()}, cfg)
    assert is_current(None, cfg) is False and is_current({}, cfg) is False


def test_run_dir_paths(tmp_path):
    cfg = config.load(None, [f"run.root={tmp_path}", "run.name=demo"])
    assert RunDir.for_config(cfg).path == tmp_path / "demo"
    assert RunDir.for_config(cfg, str(tmp_path / "x")).path == tmp_path / "x"
    assert RunDir(str(tmp_path)).stage(3) == tmp_path / "stage3"


def test_freeze_writes_the_config_once_and_refuses_another(tmp_path):
    cfg = config.load(None)
    run = RunDir(tmp_path / "new" / "nested")  # parents are made
    run.freeze(cfg)
    assert sorted(p.name for p in run.path.iterdir()) == ["config.sha256", "config.yaml"]  # no probe left
    assert (run.path / "config.yaml").read_text() == config.to_yaml(cfg)
    assert (run.path / "config.sha256").read_text() == cfg.hash() + "\n"
    run.freeze(cfg)  # the same config again: fine
    other = config.load(None, ["select.k=2"])
    with pytest.raises(ConfigError) as e:
        run.freeze(other)
    assert str(e.value) == (f"run directory {str(run.path)!r} was made with another config (sha256 {cfg.hash()[:12]}, "
                            f"now {other.hash()[:12]}); start a new run with --run-dir <new dir> or "
                            f"run.name=<new name>, or diff against {run.path / 'config.yaml'}")
    existing = RunDir(tmp_path / "existing")
    existing.path.mkdir()
    existing.freeze(cfg)  # an existing empty folder is fine
    assert (existing.path / "config.sha256").is_file()


def test_a_run_dir_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    run = RunDir(tmp_path / "file" / "run")
    with pytest.raises(ConfigError) as e:
        run.freeze(config.load(None))
    assert str(e.value) == f"run directory {str(run.path)!r} cannot be written: Not a directory"
