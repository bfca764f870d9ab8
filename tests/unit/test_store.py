import numpy as np
import pytest

from vip.store import IncompleteError, ShardSet, atomic_write_json, read_h5, write_h5


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
