"""vip.provenance: the one-line refusal and the cheap content identity of weights."""
import json

import pytest

from vip import provenance as prov
from vip.config import ModelConfig, RewardConfig
from vip.store import IncompleteError

EXPECTED = {"kind": "loo", "model_sha256": "a" * 64, "sampler": prov.sampler(ModelConfig()),
            "reward": prov.reward(RewardConfig()), "seeds": [0, 1], "task": 3}


def _attrs(record: dict) -> dict:
    return {prov.ATTR: prov.encode(record)}


def test_the_same_provenance_passes():
    prov.check("s.h5", _attrs(EXPECTED), EXPECTED)


@pytest.mark.parametrize("change, field, shown", [
    (lambda r: r.update(seeds=[7, 8]), "seeds", "is [7, 8] there, [0, 1] in this run's plan"),
    (lambda r: r["sampler"].update(steps=20), "sampler.steps", "is 20 there, 10 in this run's plan"),
    (lambda r: r.update(model_sha256="b" * 64), "model_sha256", "is bbbbbbbbbbbb... there, aaaaaaaaaaaa..."),
    (lambda r: r.update(seeds=list(range(100))), "seeds", "is [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11... there"),
])
def test_the_first_differing_field_is_named_both_ways_in_one_line(change, field, shown):
    record = json.loads(prov.encode(EXPECTED))
    change(record)
    with pytest.raises(IncompleteError) as e:
        prov.check("runs/x/task_00003.h5", _attrs(record), EXPECTED)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"runs/x/task_00003.h5 was computed for another run or config: '{field}' ")
    assert shown in msg and "delete runs/x/task_00003.h5" in msg


def test_a_missing_attribute_or_field_is_named():
    with pytest.raises(IncompleteError, match="records no 'provenance'"):
        prov.check("s.h5", {}, EXPECTED)
    record = json.loads(prov.encode(EXPECTED))
    del record["reward"]["frames"]
    with pytest.raises(IncompleteError, match="records no provenance field 'reward.frames'"):
        prov.check("s.h5", _attrs(record), EXPECTED)
    with pytest.raises(IncompleteError, match="records provenance field 'extra'"):
        prov.check("s.h5", _attrs({**EXPECTED, "extra": 1}), EXPECTED)


def test_files_identity_follows_the_bytes_not_hidden_files(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    big = ckpt / "model.safetensors"
    big.write_bytes(bytes(5 << 20))  # over 2 MiB: sampled at both ends
    (ckpt / "config.json").write_text("{}")
    first = prov.files_identity(str(ckpt))
    (ckpt / ".cache").mkdir()
    (ckpt / ".cache" / "lock").write_text("x")
    assert prov.files_identity(str(ckpt)) == first
    data = bytearray(big.read_bytes())
    data[-1] = 1  # the last byte of a large file
    big.write_bytes(bytes(data))
    prov._IDENTITIES.clear()  # the per-process memo is keyed on size and mtime; a rewrite may share the mtime tick
    assert prov.files_identity(str(ckpt)) != first
    (ckpt / "config.json").write_text('{"a": 1}')
    prov._IDENTITIES.clear()
    assert len({first, prov.files_identity(str(ckpt)), prov.files_identity(str(big))}) == 3
    assert prov.files_identity("") == ""
    assert prov.files_identity(str(tmp_path / "nowhere")).startswith("missing: ")
