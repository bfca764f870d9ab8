"""The job ledger: which Slurm jobs were submitted for which step and task, in `<stage>/jobs.json`.

Only a submitting process writes jobs.json, under a file lock held across "check the queue,
submit, record", so two drivers started at once never submit the same task twice. Array tasks
running on the nodes never write it: each requeue or checkpoint event is its own small file under
`<stage>/jobs.events/<step>/`, written atomically, and read back with the ledger.

An entry: {"job_id": "123", "kind": "array"|"cpu"|"gpu"|"train", "elements": {"123_0": 7, ...}
(Slurm job id of each array element -> the step's task index; a job that is not an array has one
element, its own id, with task null), "depends_on": [...], "log_dir": ..., "submitted": ISO time}.
Reading it needs no Slurm: `vip.orchestrate.status` can show it anywhere.

Before each sbatch the submitter records an intent under "intents" (tag -> {step, kind, tasks, ...,
time}); the tag is the job's --comment. The entry that sbatch's reply gives replaces the intent in one
write. An intent left behind (the submitter was killed in between) is reconciled by the next submitter
with squeue / sacct (vip.orchestrate.slurm.reconcile): the job found under its tag is adopted, and one
that never reached the controller is dropped, so no kill at any point submits the same work twice.
"""
from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from vip.store import atomic_write_json


class Ledger:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.path = self.dir / "jobs.json"
        self.events_dir = self.dir / "jobs.events"

    @contextmanager
    def lock(self, timeout: float = 300):
        """Held by a submitter from the queue check to the record (not by array tasks)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=timeout):
            yield self

    def read(self) -> dict:
        if not self.path.is_file():
            return {"steps": {}}
        return json.loads(self.path.read_text())

    def entries(self, step: str) -> list[dict]:
        return self.read()["steps"].get(step, [])

    def steps(self) -> list[str]:
        return list(self.read()["steps"])

    def add(self, step: str, entry: dict, resolves: str | None = None) -> None:
        """Append one submission (call under `lock()`); `resolves`: the tag of the intent it replaces,
        removed in the same write."""
        data = self.read()
        entry = {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}
        data["steps"].setdefault(step, []).append(entry)
        if resolves is not None:
            _drop_intent(data, resolves)
        atomic_write_json(self.path, data)

    def add_intent(self, step: str, intent: dict) -> None:
        """Record what is about to be submitted under its tag (call under `lock()`, before sbatch)."""
        data = self.read()
        data.setdefault("intents", {})[intent["tag"]] = {"step": step, "time": time.time(), **intent}
        atomic_write_json(self.path, data)

    def intents(self, step: str | None = None) -> list[dict]:
        """Submissions begun but never recorded (of one step, or all), oldest first."""
        found = [i for i in self.read().get("intents", {}).values() if step is None or i["step"] == step]
        return sorted(found, key=lambda i: i.get("time", 0))

    def drop_intent(self, tag: str) -> None:
        """An intent whose job never reached the controller (call under `lock()`)."""
        data = self.read()
        if _drop_intent(data, tag):
            atomic_write_json(self.path, data)

    def record_event(self, step: str, event: dict) -> Path:
        """One event of a running job (requeued, checkpointed, gave up), as its own file."""
        name = "_".join(str(event.get(k, "")) for k in ("job_id", "event", "restart"))
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", name) + f".{os.getpid()}.json"
        path = self.events_dir / step / name
        atomic_write_json(path, {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **event})
        return path

    def events(self, step: str) -> list[dict]:
        d = self.events_dir / step
        if not d.is_dir():
            return []
        out = []
        for p in d.glob("*.json"):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue  # a file being replaced right now; the next read sees it
        return sorted(out, key=lambda e: (e.get("time", ""), str(e.get("job_id", "")), e.get("restart", 0)))

    def requeues(self, step: str) -> dict[str, int]:
        """Highest restart count seen per job element (0 for those never requeued are left out)."""
        out: dict[str, int] = {}
        for e in self.events(step):
            if e.get("event") == "restarted":
                out[e["job_id"]] = max(out.get(e["job_id"], 0), int(e.get("restart", 0)))
        return out

    def elements(self, step: str) -> dict[str, int | None]:
        """Every recorded job element of a step -> its task index (None for a single job)."""
        out: dict[str, int | None] = {}
        for e in self.entries(step):
            out.update(e["elements"])
        return out


def _drop_intent(data: dict, tag: str) -> bool:
    intents = data.get("intents", {})
    if tag not in intents:
        return False
    del intents[tag]
    if not intents:
        data.pop("intents")
    return True


def ledger_for(ctx) -> Ledger:
    """A stage's ledger is <stage>/jobs.json; run-wide steps (stage 0, e.g. filter) use <run>/jobs.json."""
    return Ledger(ctx.dir if ctx.stage >= 1 else ctx.run.path)


# ----------------------------------------------------------------------------- the ledger, read

def latest_elements(ledger: Ledger, step: str) -> dict[int | None, tuple[str, dict]]:
    """Task -> (job element, ledger entry) of its latest submission (a packed job: its job id for each
    of its tasks)."""
    out: dict[int | None, tuple[str, dict]] = {}
    for entry in ledger.entries(step):
        if entry.get("kind") == "packed":
            out.update({t: (entry["job_id"], entry) for t in entry["tasks"]})
            continue
        for element, task in entry["elements"].items():
            out[task] = (element, entry)
    return out


def log_path(entry: dict, element: str, failed: bool = False, task: int | None = None) -> Path:
    """submitit's log of a job element (rank 0 for a multi-task job; for a task of a packed job, the
    log of the rank that runs it, as packed.rank_of): .err holds errors, .out the rest."""
    rank = 0
    if entry.get("kind") == "packed" and task in entry.get("tasks", ()):
        rank = list(entry["tasks"]).index(task) % entry["ranks"]
    return Path(entry["log_dir"]) / f"{element}_{rank}_log.{'err' if failed else 'out'}"


def recorded_deps(ledger: Ledger, step: str, job_id: str) -> list[str]:
    deps = [d for e in ledger.entries(step) if e["job_id"] == job_id for d in e.get("depends_on", [])]
    for ev in ledger.events(step):
        if ev.get("event") == "dependency" and ev.get("job_id") == job_id:
            deps += ev.get("depends_on", [])
    return sorted(set(map(str, deps)), key=id_key)


def id_key(job_id: str):
    head = job_id.split("_")[0]
    return (int(head) if head.isdigit() else 0, job_id)


def task_ranges(tasks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, i = [], 0
    while i < len(tasks):
        j = i
        while j + 1 < len(tasks) and tasks[j + 1] == tasks[j] + 1:
            j += 1
        out.append(f"{tasks[i]}-{tasks[j]}" if j > i else str(tasks[i]))
        i = j + 1
    return ",".join(out)
