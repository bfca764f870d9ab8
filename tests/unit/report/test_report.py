"""The run report (vip/report, jobs/report.py) on a synthetic run directory written by hand: known numbers in,
the same numbers, units and figures out; missing stages shown as "not yet run"; nothing external referenced."""
import base64
import json
import re
import struct
from html import escape
from pathlib import Path

import numpy as np
import pytest

from vip.report.build import write_report

ASPECTS = ("visual_quality", "temporal_consistency", "dynamic_degree", "text_alignment")
UNITS = ["down_blocks.0.motion_modules.0", "down_blocks.1.motion_modules.1", "mid_block.motion_modules.0",
         "up_blocks.1.motion_modules.2", "up_blocks.2.motion_modules.0", "up_blocks.2.motion_modules.1"]
CHOSEN = ["up_blocks.2.motion_modules.1", "down_blocks.0.motion_modules.0"]
OUTCOME = {
    "stage": 1, "targets": ["temporal_consistency"],
    "full": {"visual_quality": 2.5, "temporal_consistency": 3.25, "dynamic_degree": 2.0625, "text_alignment": 2.3105,
             "total": 10.123},
    "pruned": {"visual_quality": 2.375, "temporal_consistency": 2.8125, "dynamic_degree": 2.125,
               "text_alignment": 2.1435, "total": 9.456},
    "redpo": {"visual_quality": 2.4375, "temporal_consistency": 3.1875, "dynamic_degree": 2.0, "text_alignment": 2.3617,
              "total": 9.987},
    "params": {"full": 1234567, "student": 1034567}, "removed_units": CHOSEN, "training": "40 steps on 21 pairs",
    "config_sha256": "c" * 64,
}


def _w(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _selection(chosen: list[str]) -> dict:
    # Δ per unit: the chosen units harm least in total and in TC, so they lead both rankings
    delta = {}
    for i, u in enumerate(UNITS):
        base = -0.05 if u in chosen else 0.02 * (i + 1)
        delta[u] = {"visual_quality": base, "temporal_consistency": base + 0.01 * i, "dynamic_degree": -base / 2,
                    "text_alignment": 0.005 * i}
        delta[u]["total"] = sum(delta[u][a] for a in ASPECTS)
    by_total = sorted(UNITS, key=lambda u: (delta[u]["total"], u))
    by_tc = sorted(UNITS, key=lambda u: (delta[u]["temporal_consistency"], u))
    return {"chosen": chosen, "n": 2, "by_total": by_total, "by_tc": by_tc, "delta": delta, "k": 2,
            "unit_params": {u: 100000 + 1000 * i for i, u in enumerate(UNITS)},
            "params_before": 1234567, "params_after": 1034567, "config_sha256": "c" * 64}


def make_run(root: Path) -> Path:
    """Stage 1 finished; stage 2 has its selection and target, and training is under way (no curation.json:
    it was removed, say, to be redone)."""
    run = root / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("run:\n  name: synth\n  seed: 0\nselect:\n  k: 2\ncurate:\n  alpha: 0.3\n")
    (run / "config.sha256").write_text("c" * 64 + "\n")
    hist = {"0": 10, "1": 20, "2": 30, "3": 48, "unparseable": 0}
    _w(run / "filter" / "summary.json", {
        "source": "toyvid", "backend": "toyvid", "model": "toyvid", "prompts": 108,
        "sets": {"dynamic_degree": 31, "temporal_consistency": 29, "visual_quality": 40, "text_alignment": 17},
        "histograms": {"dynamic_motion": hist, "visual_quality": {**hist, "3": 47, "unparseable": 1}},
    })
    s1 = run / "stage1"
    _w(s1 / "selection.json", _selection(CHOSEN))
    _w(s1 / "target.json", {
        "targets": ["temporal_consistency"], "threshold": 0.0, "teacher": OUTCOME["full"],
        "pruned": OUTCOME["pruned"], "drop": {a: OUTCOME["full"][a] - OUTCOME["pruned"][a] for a in ASPECTS},
        "samples": 36, "config_sha256": "c" * 64})
    rng = np.random.default_rng(0)
    pref = rng.normal(3.0, 0.3, (48, 4))
    unpref = pref - rng.normal(0.2, 0.2, (48, 4))
    _w(s1 / "curation.json", {
        "targets": ["temporal_consistency"], "alpha": 0.3, "candidates": 48, "kept": 21, "duplicates": 0,
        "rejected": {"target_not_better": 9, "below_floor": 13, "gap_not_largest": 17},
        "floors": {"temporal_consistency": 2.7182}, "candidate_scores": {"preferred": pref.tolist(),
                                                                          "unpreferred": unpref.tolist()},
        "kept_index": list(range(21)), "config_sha256": "c" * 64})
    lines = []
    for step in range(1, 51):
        dpo = 0.69 * np.exp(-step / 15)
        lines.append(json.dumps({"step": step, "loss": dpo + 0.5 / step, "dpo": dpo, "sft": 0.0005 / step,
                                 "rewards/accuracies": min(1.0, 0.4 + step / 40), "rewards/chosen": 0.01 * step,
                                 "rewards/rejected": -0.02 * step, "rewards/margins": 0.03 * step,
                                 "lr": 1e-4 * min(1, step / 5), "grad_norm": 1 / step, "samples_per_s": 12.5}))
    (s1 / "train").mkdir()
    (s1 / "train" / "metrics.jsonl").write_text("\n".join(lines[:40]) + "\n")
    _w(s1 / "train" / "done.json", {"steps": 40, "pairs": 21, "world_size": 1})
    _w(s1 / "outcome.json", OUTCOME)
    s2 = run / "stage2"
    _w(s2 / "selection.json", _selection(["mid_block.motion_modules.0", "up_blocks.1.motion_modules.2"]))
    _w(s2 / "target.json", {**json.loads((s1 / "target.json").read_text()),
                            "pruned": {**OUTCOME["pruned"], "total": 9.111}})
    (s2 / "train").mkdir()
    (s2 / "train" / "metrics.jsonl").write_text("\n".join(lines[40:]) + "\n" + lines[-1][:25])  # a line cut short
    return run


def _light(run: Path) -> Path:
    """The run without the records that only feed figures (faster tests of what is left)."""
    import shutil

    for p in (run / "filter", run / "stage2", run / "stage1" / "selection.json", run / "stage1" / "curation.json",
              run / "stage1" / "train" / "metrics.jsonl"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return run


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _section(html: str, anchor: str) -> str:
    start = html.index(f'id="{anchor}"')
    nxt = html.find("<h2", start)
    return html[start:nxt if nxt > 0 else None]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report"))
    path = write_report(run)
    return run, path, path.read_text()


def test_html_shows_the_runs_numbers_units_and_header(report):
    run, path, html = report
    assert path == run / "report.html"
    assert str(run.resolve()) in html and "c" * 64 in html and "name: synth" in html
    assert re.search(r"generated</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d UTC", html)
    s1 = _section(html, "stage1")
    for unit in CHOSEN:
        assert f"<strong>{unit} ✓</strong>" in s1  # the chosen units, marked in the rankings table
    assert f"Removed <strong>{CHOSEN[0]}</strong>, <strong>{CHOSEN[1]}</strong>" in s1
    # outcome table: every formatted number of stage 1, parameters with separators, recovered share
    outcome = _section(html, "outcome")
    for key in ("full", "pruned", "redpo"):
        for a in (*ASPECTS, "total"):
            assert f">{OUTCOME[key][a]:.3f}<" in outcome, (key, a)
    assert ">1,234,567<" in outcome and ">1,034,567<" in outcome and ">83.8%<" in outcome
    assert ">80%<" in outcome  # (9.987 - 9.456) / (10.123 - 9.456)
    # target, curation, training, filter
    assert ">+0.438<" in s1  # TC drop 3.25 - 2.8125
    assert "kept 21 of 48 candidate pairs" in s1 and ">13<" in s1
    assert "unpreferred target score below mean - alpha*std" in s1  # RULE_TEXT names the rules
    assert "40 steps on 21 pairs, 1 rank(s)" in s1
    flt = _section(html, "filter")
    assert ">31<" in flt and ">47<" in flt and "108 prompts" in flt


def test_missing_parts_of_a_stage_are_not_yet_run(report):
    _, _, html = report
    s2 = _section(html, "stage2")
    assert "<strong>mid_block.motion_modules.0 ✓</strong>" in s2  # what exists is shown
    assert ">9.111<" in s2 and "<strong>in progress</strong>: 10 steps logged so far" in s2
    assert "pair generation and curation: not yet run" in s2
    assert "outcome (evaluation of the trained student): not yet run" in s2
    outcome = _section(html, "outcome")
    assert "stage 2</td><td>pruned</td>" in outcome and ">9.111<" in outcome  # from target.json
    assert "stage 2</td><td>ReDPO (not yet run)</td>" in outcome
    assert "not yet run" not in _section(html, "stage1")


def test_a_stage_folder_with_nothing_finished_is_not_yet_run(tmp_path):
    run = _light(make_run(tmp_path))
    (run / "stage3").mkdir()
    html = write_report(run).read_text()
    s3 = _section(html, "stage3")
    assert "Status: not yet run." in s3 and s3.count("not yet run") == 6  # status + five steps
    assert re.search(r"stage 3</td><td>not yet run</td>", _section(html, "outcome"))


def test_every_figure_is_an_embedded_png_and_nothing_is_external(report):
    run, _, html = report
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) == 7  # outcome, filter histogram, stage 1 selection/curation/training, stage 2 selection/training
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        w, h = _png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert 500 <= w <= 2500 and 250 <= h <= 1500, (w, h)
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in refs), refs
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html
    # Markdown: the same figures as files beside it
    md = (run / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 7 and all(link.startswith("report_files/") and (run / link).is_file() for link in links)
    assert sorted(p.name for p in (run / "report_files").iterdir()) == sorted(Path(x).name for x in links)
    assert "| stage 1 | **ReDPO** | 2.438 | 3.188 | 2.000 | 2.362 | **9.987** | 1,034,567 |" in md


def test_a_run_with_nothing_but_its_config(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.yaml").write_text("run:\n  name: fresh\n")
    html = write_report(run).read_text()
    assert "<img" not in html and html.count("not yet run") >= 3  # outcome, filter, stage 1


def test_a_stage_whose_training_was_skipped(tmp_path):
    """train.min_pairs: too few pairs, no training; the student is the pruned one."""
    run = _light(make_run(tmp_path))
    s1 = run / "stage1"
    reason = "2 pairs < train.min_pairs=16"
    _w(s1 / "train" / "done.json", {"steps": 0, "pairs": 2, "world_size": 0, "skipped": reason})
    _w(s1 / "outcome.json", {**OUTCOME, "redpo": OUTCOME["pruned"], "training": reason})
    html = write_report(run).read_text()
    stage1 = _section(html, "stage1")
    assert f"<strong>skipped</strong>: {escape(reason)}; the pruned student goes on untrained." in stage1
    assert "Training was skipped" in stage1 and "ReDPO training: not yet run" not in stage1
    assert f"<td>skipped: {escape(reason)}</td>" in _section(html, "outcome")
    assert len(re.findall(r"<img ", html)) == 1  # the outcome chart; no training curves


def test_a_fallback_target_and_the_outcome_samples_are_in_the_report(tmp_path):
    run = make_run(tmp_path)
    c = json.loads((run / "stage1" / "curation.json").read_text())
    c.update(targets=["visual_quality"], primary_targets=["temporal_consistency"], floors={"visual_quality": 2.9},
             tried={"temporal_consistency": 2, "visual_quality": 21})
    _w(run / "stage1" / "curation.json", c)
    from PIL import Image
    Image.new("RGB", (40, 30), "red").save(run / "stage1" / "samples.png")  # what the outcome step draws
    html = write_report(run).read_text()
    assert "kept too few pairs" in html and "temporal_consistency 2, visual_quality 21" in html
    assert (run / "report_files" / "stage1_samples.png").read_bytes() == (run / "stage1" / "samples.png").read_bytes()
    assert "the pruned student before training and the trained student" in html


def test_the_run_ends_on_one_screen(tmp_path):
    from vip.orchestrate.status import recovery_line, run_summary
    from vip.store import RunDir

    run = make_run(tmp_path)
    write_report(run)
    screen = run_summary(RunDir(run), [1, 2])
    lines = screen.splitlines()
    assert len(lines) < 25  # one screen
    assert lines[0].startswith("stage 1: removed up_blocks.2.motion_modules.1, down_blocks.0.motion_modules.0")
    assert "target TC: kept 21 of 48 candidate pairs\n" in screen + "\n"
    c = json.loads((run / "stage1" / "curation.json").read_text())
    c.update(targets=["visual_quality"], primary_targets=["temporal_consistency"], tried={"temporal_consistency": 2,
                                                                                       "visual_quality": 21})
    _w(run / "stage1" / "curation.json", c)
    assert "target VQ: kept 21 of 48 candidate pairs (the largest drop, TC, kept 2)" in run_summary(RunDir(run), [1])
    assert "stage 1  ReDPO" in screen and f"report: {run / 'report.html'}" in screen
    # TC 2.8125 -> 3.1875 of the 0.4375 lost: +86%; total 9.456 -> 9.987 of 0.667: +80%
    assert recovery_line(OUTCOME) == ("stage 1: TC 2.812 -> 3.188 (+86% of the 0.438 lost); "
                                      "total 9.456 -> 9.987 (+80% of the 0.667 lost)")
    assert "stage 1: TC 2.812 -> 3.188" in screen
    lost_nothing = {**OUTCOME, "full": {**OUTCOME["full"], "total": 9.0}}
    assert "pruning lost nothing here" in recovery_line(lost_nothing)
    assert recovery_line({**OUTCOME, "training": "3 pairs < train.min_pairs=16"}) == \
        "stage 1: not trained (3 pairs < train.min_pairs=16)"
