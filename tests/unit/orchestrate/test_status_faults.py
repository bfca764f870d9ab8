"""What `--wait` and `--status` say after faults (no cluster: the job states are given).

  - every job of a run cancelled mid-pairs: the pending jobs end at once, the running pair tasks only
    after KillWait (COMPLETING meanwhile); the failure report names the pair tasks too;
  - a stage merged, a shard damaged or removed later: `--status` says merged and names the shard,
    not "partial" (nothing reads it any more, nothing will be recomputed);
  - submission intents: a job found under its tag is adopted, one never submitted is dropped.
"""
import io
import json

import numpy as np
import pytest

from vip import config
from vip.orchestrate import slurm, status, watch
from vip.orchestrate.ledger import Ledger
from vip.store import RunDir, ShardSet, write_h5

PAIR_TASKS = [0, 1, 2]


def _run_with_jobs(tmp_path) -> tuple[RunDir, config.Config]:
    """A stage-1 ledger as the continuation writes it: a pairs array, then curate, train and outcome."""
    cfg = config.load(None, ["runtime.executor=slurm"])
    run = RunDir(tmp_path / "run")
    ledger = Ledger(run.stage(1))
    logs = run.path / "logs" / "stage1"
    ledger.add("pairs", {"job_id": "11", "kind": "array", "elements": {f"11_{t}": t for t in PAIR_TASKS},
                         "depends_on": [], "log_dir": str(logs / "pairs")})
    for i, step in enumerate(("curate", "train", "outcome")):
        jid = str(12 + i)
        ledger.add(step, {"job_id": jid, "kind": "cpu", "elements": {jid: None}, "depends_on": [str(11 + i)],
                          "log_dir": str(logs / step)})
    return run, cfg


def _cancel_everything(monkeypatch, polls: list[dict]) -> None:
    """slurm.job_states answers poll after poll (the last one for ever)."""
    seen = []

    def states(elements):
        answer = polls[min(len(seen), len(polls) - 1)]
        seen.append(1)
        return {e: answer.get(e, "UNKNOWN") for e in elements}

    monkeypatch.setattr(slurm, "job_states", states)


CANCELLING = {**{f"11_{t}": "COMPLETING" for t in PAIR_TASKS}, "12": "CANCELLED", "13": "CANCELLED",
              "14": "CANCELLED"}  # right after `scancel` of all: the pending ones are over, the running ones not
CANCELLED = {**{f"11_{t}": "CANCELLED" for t in PAIR_TASKS}, "12": "CANCELLED", "13": "CANCELLED", "14": "CANCELLED"}


def test_after_a_cancel_of_every_job_mid_pairs_the_report_names_the_pair_tasks(tmp_path, monkeypatch):
    run, cfg = _run_with_jobs(tmp_path)
    _cancel_everything(monkeypatch, [CANCELLING, CANCELLING, CANCELLED])
    out = io.StringIO()
    assert watch.wait_stages(run, cfg, 1, 1, poll=0, progress=False, stream=out) == 1
    text = out.getvalue()
    report = text[text.index("a job failed:"):]
    for t in PAIR_TASKS:
        assert f"stage 1 pairs task {t}: job 11_{t} CANCELLED" in report, report
    for step, jid in (("curate", 12), ("train", 13), ("outcome", 14)):
        assert f"stage 1 {step}: job {jid} CANCELLED" in report, report
    lines = [ln for ln in report.splitlines() if ln.startswith("stage 1 ")]
    assert [ln.split(":")[0] for ln in lines] == ["stage 1 pairs task 0", "stage 1 pairs task 1",
                                                  "stage 1 pairs task 2", "stage 1 curate", "stage 1 train",
                                                  "stage 1 outcome"]  # the cause first, then its dependents


def test_a_report_that_cannot_wait_longer_names_the_tasks_still_being_stopped(tmp_path, monkeypatch):
    run, cfg = _run_with_jobs(tmp_path)
    _cancel_everything(monkeypatch, [CANCELLING])  # never over
    monkeypatch.setattr(watch, "SETTLE_S", 0)
    out = io.StringIO()
    assert watch.wait_stages(run, cfg, 1, 1, poll=0, progress=False, stream=out) == 1
    report = out.getvalue()
    for t in PAIR_TASKS:
        assert f"stage 1 pairs task {t}: job 11_{t} COMPLETING (being stopped)" in report, report
    assert "stage 1 curate: job 12 CANCELLED" in report


def _merged_stage(tmp_path, n: int = 3) -> tuple[RunDir, ShardSet]:
    run = RunDir(tmp_path / "run")
    d = run.stage(1)
    (d / "loo").mkdir(parents=True)
    (d / "loo" / "tasks.json").write_text(json.dumps({"tasks": [{"variants": ["full"], "samples": [i, i + 1]}
                                                                for i in range(n)]}))
    shards = ShardSet(d / "loo")
    for t in range(n):
        shards.write(t, {"scores": np.full((1, 1, 4), float(t), dtype=np.float32)}, {"task": t})
    return run, shards


def _row(run, step: str) -> tuple[str, str, str]:
    return next(r for r in status.stage_status(run, 1) if r[0] == step)


def test_a_shard_damaged_after_the_merge_shows_the_stage_merged_and_names_it(tmp_path):
    run, shards = _merged_stage(tmp_path)
    with open(shards.shard(1), "r+b") as f:  # damaged before the merge: partial, as before
        f.truncate(100)
    assert _row(run, "loo")[1] == "partial" and "missing [1]" in _row(run, "loo")[2]
    shards.write(1, {"scores": np.ones((1, 1, 4), dtype=np.float32)}, {"task": 1})
    assert _row(run, "loo") == ("loo", "done", "3/3 tasks")
    write_h5(run.stage(1) / "loo.h5", {"scores": np.zeros((1, 3, 4), dtype=np.float32)}, {})
    assert _row(run, "merge")[1] == "done"

    with open(shards.shard(1), "r+b") as f:  # damaged after the merge
        f.truncate(100)
    step, state, detail = _row(run, "loo")
    assert state == "merged", detail
    assert detail.startswith("3/3 tasks merged into loo.h5; since then the shard of task 1 is damaged (")
    assert str(shards.shard(1)) in detail and "nothing will be recomputed" in detail
    assert "partial" not in detail

    shards.discard(2)  # and one removed outright
    detail = _row(run, "loo")[2]
    assert "the shard of task 1 is damaged" in detail and "the shard of task 2 is removed" in detail, detail

    with open(run.stage(1) / "loo.h5", "r+b") as f:  # the merged file itself unreadable: not merged any more
        f.truncate(10)
    assert _row(run, "merge")[1] == "damaged"
    assert _row(run, "loo")[1] == "partial"


def test_a_pair_shard_damaged_after_curation_shows_merged_too(tmp_path):
    run = RunDir(tmp_path / "run")
    d = run.stage(1)
    (d / "pairs").mkdir(parents=True)
    (d / "pairs" / "tasks.json").write_text(json.dumps({"tasks": [[0, 2], [2, 4]]}))
    shards = ShardSet(d / "pairs")
    for t in range(2):
        shards.write(t, {"x": np.zeros(2)}, {})
    shards.discard(0)
    assert _row(run, "pairs")[1] == "partial"  # not curated yet: task 0 is redone
    write_h5(d / "pairs.h5", {"x": np.zeros(2)}, {})
    (d / "curation.json").write_text(json.dumps({"kept": 2, "candidates": 4}))
    step, state, detail = _row(run, "pairs")
    assert state == "merged" and "2/2 tasks merged into pairs.h5" in detail and "task 0 is removed" in detail


# ----------------------------------------------------------------------------- intents


class FakeQueue:
    """squeue / sacct of a controller that knows the given jobs by comment."""

    def __init__(self, jobs: dict[str, tuple[str, str]]):
        self.jobs = jobs  # element -> (state, comment)

    def __call__(self, cmd, timeout=60):
        if cmd[0] == "squeue":
            return "".join(f"{e}|{s}|{c}\n" for e, (s, c) in self.jobs.items())
        if cmd[0] == "sacct":
            return ""
        raise AssertionError(cmd)


def _intent(ledger: Ledger, tag: str, tasks=(3, 5), kind="array", age: float = 0.0) -> None:
    ledger.add_intent("loo", {"tag": tag, "kind": kind, "tasks": list(tasks), "depends_on": ["7"],
                              "log_dir": str(ledger.dir / "logs"), "pdeathsig": True})
    if age:
        data = ledger.read()
        data["intents"][tag]["time"] -= age
        ledger.path.write_text(json.dumps(data))


def test_an_intent_whose_job_is_in_the_queue_is_adopted(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "stage1")
    _intent(ledger, "vip-abc-s1-loo.1")
    monkeypatch.setattr(slurm, "_run", FakeQueue({"40_0": ("RUNNING", "vip-abc-s1-loo.1"),
                                                  "40_1": ("PENDING", "vip-abc-s1-loo.1"),
                                                  "41": ("PENDING", "somebody else")}))
    (entry,) = slurm.reconcile(ledger, "loo")
    assert entry["job_id"] == "40" and entry["elements"] == {"40_0": 3, "40_1": 5} and entry["adopted"]
    assert ledger.entries("loo") == [{**entry, "submitted": ledger.entries("loo")[0]["submitted"]}]
    assert ledger.intents() == [] and "intents" not in ledger.read()
    assert entry["depends_on"] == ["7"] and entry["tag"] == "vip-abc-s1-loo.1"


def test_an_intent_never_submitted_is_dropped_after_the_grace(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "stage1")
    _intent(ledger, "vip-abc-s1-loo.2")
    monkeypatch.setattr(slurm, "_run", FakeQueue({"41": ("PENDING", "somebody else")}))
    monkeypatch.setattr(slurm, "INTENT_GRACE_S", 0.0)
    assert slurm.reconcile(ledger, "loo") == []
    assert ledger.intents() == [] and ledger.entries("loo") == []
    (event,) = ledger.events("loo")
    assert event["event"] == "not_submitted" and event["tag"] == "vip-abc-s1-loo.2" and event["tasks"] == [3, 5]


def test_an_intent_waits_for_a_request_that_may_still_be_answered(tmp_path, monkeypatch):
    """The job shows during the grace (a slow controller answering a request already sent): adopted."""
    ledger = Ledger(tmp_path / "stage1")
    _intent(ledger, "vip-abc-s1-loo.3", kind="cpu", tasks=[None])
    queue = FakeQueue({})
    calls = []

    def slow(cmd, timeout=60):
        calls.append(cmd[0])
        if calls.count("squeue") == 3:
            queue.jobs["42"] = ("PENDING", "vip-abc-s1-loo.3")
        return queue(cmd)

    monkeypatch.setattr(slurm, "_run", slow)
    monkeypatch.setattr(slurm.time, "sleep", lambda s: None)
    (entry,) = slurm.reconcile(ledger, "loo")
    assert entry["job_id"] == "42" and entry["elements"] == {"42": None} and calls.count("squeue") == 3


def test_an_old_intent_is_settled_without_waiting(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "stage1")
    _intent(ledger, "vip-abc-s1-loo.4", age=slurm.SUBMIT_TIMEOUT_S + slurm.INTENT_GRACE_S + 5)
    monkeypatch.setattr(slurm, "_run", FakeQueue({}))
    monkeypatch.setattr(slurm.time, "sleep", lambda s: pytest.fail("waited for an intent no sbatch can answer"))
    assert slurm.reconcile(ledger, "loo") == [] and ledger.intents() == []


def test_squeue_failing_leaves_the_intent_and_submits_nothing(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "stage1")
    _intent(ledger, "vip-abc-s1-loo.5")

    def down(cmd, timeout=60):
        raise slurm.SlurmError("'squeue -h -r ...' failed (exit 1): slurm_load_jobs error: Unable to contact")

    monkeypatch.setattr(slurm, "_run", down)
    with pytest.raises(slurm.SlurmError):
        slurm.reconcile(ledger, "loo")
    assert [i["tag"] for i in ledger.intents()] == ["vip-abc-s1-loo.5"]
