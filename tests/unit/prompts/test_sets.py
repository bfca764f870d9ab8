import collections
import json

import pytest

from vip.config import ConfigError
from vip.prompts.sets import eval_set, load_prompts
from vip.toyvid import world


def test_builtin_toyvid_prefixes_are_balanced():
    for n in (6, 12, 36):
        parsed = [world.parse(p) for p in eval_set("toyvid", n, 1, 0).prompts]
        counts = collections.Counter(p.motion for p in parsed)
        assert set(counts) == set(world.MOTIONS) and len(set(counts.values())) == 1
    full = load_prompts("toyvid")
    assert sorted(full) == sorted(p.text for p in world.all_prompts())  # a permutation of the grammar


def test_seeds_and_ids():
    es = eval_set("toyvid", 3, 2, 100)
    assert es.seeds == [100, 101, 102, 103, 104, 105]
    assert es.prompt_ids == [0, 0, 1, 1, 2, 2]
    assert es.prompts[0] == es.prompts[1] != es.prompts[2]


def test_file_formats(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    (tmp_path / "p.csv").write_text("id,prompt\n1,a cat\n2,a dog\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a cat"}) + "\n" + json.dumps({"prompt": "a dog"}) + "\n")
    for name in ("p.txt", "p.csv", "p.jsonl"):
        assert load_prompts(str(tmp_path / name)) == ["a cat", "a dog"]


@pytest.mark.parametrize("name, content, words", [
    ("empty.txt", "\n  \n", "holds no prompts"),
    ("bad.csv", "id,text\n1,a cat\n", "no 'prompt' column"),
    ("bad.jsonl", '{"text": "a"}\n', "line 1 has no 'prompt'"),
    # control characters other than tabs and line breaks are refused, naming the line (issue 17)
    ("bell.txt", "a cat\na \x07dog\n", "line 2 holds the control character U+0007"),
    ("feed.txt", "a cat\fa dog\n", "line 1 holds the control character U+000C"),  # not a line break here
    ("escape.jsonl", json.dumps({"prompt": "a cat"}) + "\n" + json.dumps({"prompt": "a \x1b[31mdog"}) + "\n",
     "line 2 holds the control character U+001B"),
    ("delete.csv", "id,prompt\n1,a cat\n2,a dog\x7f\n", "row 3 holds the control character U+007F"),
])
def test_bad_prompt_files_name_the_file(tmp_path, name, content, words):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError) as e:
        load_prompts(str(tmp_path / name))
    assert words in str(e.value) and name in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.txt"))


def test_tabs_and_line_breaks_stay_in_a_prompt(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a cat\non a\tmat"}) + "\n")
    (tmp_path / "p.csv").write_text('id,prompt\n1,"a cat\r\non a mat"\n')
    assert load_prompts(str(tmp_path / "p.jsonl")) == ["a cat\non a\tmat"]
    assert load_prompts(str(tmp_path / "p.csv")) == ["a cat\r\non a mat"]


def test_prompt_file_extensions(tmp_path):
    (tmp_path / "plain").write_text("a fox runs über the snow\n", encoding="utf-8")
    assert load_prompts(str(tmp_path / "plain")) == ["a fox runs über the snow"]
    (tmp_path / "p.yaml").write_text("- a dog\n")
    with pytest.raises(ConfigError, match=r"unknown extension '\.yaml'.*expected \.txt") as e:
        load_prompts(str(tmp_path / "p.yaml"), key="filter.source")
    assert str(e.value).startswith("filter.source:") and "\n" not in str(e.value)
    (tmp_path / "n.jsonl").write_text('{"prompt": 3}\n')
    with pytest.raises(ConfigError, match="line 1 has no 'prompt' field holding text"):
        load_prompts(str(tmp_path / "n.jsonl"))
