"""The Slurm executor (submitit): job arrays for fanned-out steps, single jobs for the rest.

    submit_array(ctx, "loo")                       -> array job ids (only tasks neither done nor queued)
    submit_job(ctx, "select", fn, kind="cpu", depends_on=ids)
    submit_job(ctx, "train", fn, kind="train", depends_on=ids)   # nodes x GPUs, one task per GPU
    wait(ids) / job_states(ids) / active_tasks(ledger, step)

Every submission is recorded in the stage's ledger (<stage>/jobs.json) under a file lock, after the
recorded jobs were checked against the queue (squeue) and accounting (sacct): a task whose job is
pending, running or requeued is never submitted again. Logs and the generated sbatch scripts of
each job are under <run>/logs/stage<N>/<step>/ (submitit's folder).

Array tasks are Checkpointable: on the preemption / time-limit signal submitit asks them to
checkpoint and requeues them; a restarted task reruns its work unless its shard is already done.
Every restart is recorded as a ledger event; past slurm.max_requeues the task fails instead.

Nothing outside vip/orchestrate/ imports this module (or submitit).
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import submitit
import submitit.slurm.slurm as submitit_slurm
from submitit.helpers import Checkpointable

from vip.config import Config, ConfigError, SlurmConfig, has_control_chars
from vip.orchestrate import packed
from vip.orchestrate.ledger import Ledger, ledger_for
from vip.orchestrate.stepjobs import ARRAY_STEPS, KINDS, ArrayStep, job_name, packed_ranks  # noqa: F401 - re-exported
from vip.steps.context import StageContext
from vip.store import RunDir

EXIT_REQUEUE = 75  # a step function returning this (or exiting with it) asks to be requeued (the trainer does)

# States in which a job element is over; anything else squeue or sacct shows (PENDING, RUNNING,
# REQUEUED, REQUEUE_HOLD, SUSPENDED, COMPLETING, CONFIGURING, ...) counts as still in the queue.
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "UNKNOWN"}


class SlurmError(RuntimeError):
    """A Slurm command failed or answered something unexpected; the message is one line."""


# ----------------------------------------------------------------------------- Slurm commands

def _run(cmd: list[str], timeout: float = 60) -> str:
    exe = shutil.which(cmd[0])
    if exe is None:
        raise SlurmError(f"'{cmd[0]}' is not on PATH: --executor slurm (runtime.executor=slurm) needs the Slurm "
                         "client commands; run on a Slurm login node, or here with --executor local")
    try:
        r = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"'{' '.join(cmd[:3])} ...' did not answer in {timeout:.0f}s") from None
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise SlurmError(f"'{' '.join(cmd[:3])} ...' failed (exit {r.returncode}): {msg[-1] if msg else 'no output'}")
    return r.stdout


@functools.lru_cache(maxsize=1)
def max_array_size() -> int:
    """MaxArraySize of the cluster (array indices must stay below it)."""
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", _run(["scontrol", "show", "config"]), re.MULTILINE)
    return int(m.group(1)) if m else 1001  # Slurm's default


def expand_ids(token: str) -> list[str]:
    """'123_[0-2,5%2]' -> ['123_0', '123_1', '123_2', '123_5']; '123_4' and '124' stay as they are."""
    m = re.fullmatch(r"(\d+)_\[([^\]]*)\]", token)
    if not m:
        return [token]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out = []
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def queue_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Element id -> state for the given jobs (array or not) that the controller still knows.
    Raises SlurmError when squeue fails: then nothing can be known and nothing may be submitted."""
    bases = {str(j).split("_")[0] for j in job_ids}
    if not bases:
        return {}
    out = {}
    for line in _run(["squeue", "-h", "-r", "--me", "-t", "all", "-o", "%i|%T"]).splitlines():
        jid, _, state = line.strip().partition("|")
        if jid.split("_")[0] in bases:
            for e in expand_ids(jid):
                out[e] = state.strip()
    return out


def accounting_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Element id -> state from sacct (the last run of each element); {} when accounting is unavailable."""
    bases = sorted({str(j).split("_")[0] for j in job_ids})
    if not bases:
        return {}
    try:
        text = _run(["sacct", "-n", "-X", "-P", "-j", ",".join(bases), "-o", "JobID,State"])
    except SlurmError:
        return {}
    out = {}
    for line in text.splitlines():
        jid, _, state = line.strip().partition("|")
        for e in expand_ids(jid):
            out[e] = state.split(" ")[0]  # "CANCELLED by 0" -> CANCELLED
    return out


def job_states(elements: Iterable[str]) -> dict[str, str]:
    """State of every element: the queue's word when it still lists the element, else accounting's,
    else UNKNOWN (purged from both: long over)."""
    elements = [str(e) for e in elements]
    queue = queue_states(elements)
    rest = [e for e in elements if e not in queue]
    acct = accounting_states(rest) if rest else {}
    out = {}
    for e in elements:
        if e in queue:
            out[e] = queue[e]
        elif e in acct:
            out[e] = acct[e]
        elif "_" in e and e.split("_")[0] in acct:  # an element sacct still folds into its array
            out[e] = acct[e.split("_")[0]]
        else:
            out[e] = "UNKNOWN"
    return out


def is_active(state: str) -> bool:
    return state not in TERMINAL


def active_tasks(ledger: Ledger, step: str) -> dict[int | None, str]:
    """Task index -> job element, for the step's recorded jobs still pending/running/requeued
    (every task of a packed job maps to that job; a single job's task is None)."""
    elements = ledger.elements(step)
    states = job_states(elements)
    out = {task: e for e, task in elements.items() if is_active(states[e])}
    for entry in ledger.entries(step):
        if entry.get("kind") == "packed" and is_active(states.get(entry["job_id"], "UNKNOWN")):
            out.pop(None, None)
            out.update({t: entry["job_id"] for t in entry["tasks"]})
    return out


def queued_ids(ledger: Ledger, step: str) -> list[str]:
    """Job ids (array ids for arrays) of the step with an element still pending, running or requeued:
    what a dependent job must wait for, whether this call submitted it or an earlier one did."""
    return sorted({e.split("_")[0] for e in active_tasks(ledger, step).values()}, key=lambda j: int(j))


def wait(job_ids: Sequence[str], timeout: float | None = None, poll: float = 2.0) -> dict[str, str]:
    """Block until no element of these jobs is in the queue; returns each element's final state.
    An array id ('123') stands for all its elements; they are looked up again on every poll."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        states = job_states({e for j in job_ids for e in _elements_of(j)})
        if not any(is_active(s) for s in states.values()):
            return {e: s for e, s in states.items() if "_" in e or not any(o.startswith(e + "_") for o in states)}
        if deadline is not None and time.monotonic() > deadline:
            busy = sorted(e for e, s in states.items() if is_active(s))
            raise SlurmError(f"jobs still in the queue after {timeout:.0f}s: {', '.join(busy[:10])}")
        time.sleep(poll)


def _elements_of(job_id: str) -> list[str]:
    """An array job id ('123') stands for its elements: ask the queue and accounting which they are."""
    job_id = str(job_id)
    if "_" in job_id:
        return [job_id]
    found = [e for e in {**accounting_states([job_id]), **queue_states([job_id])} if e.split("_")[0] == job_id]
    return sorted(found) or [job_id]


# ----------------------------------------------------------------------------- checks before submitting

CLIENT_COMMANDS = ("sbatch", "squeue", "scontrol", "sacct", "sinfo")
NODE_LOCAL_ROOTS = ("/tmp", "/var/tmp", "/dev/shm", "/run")  # usually each machine's own disk or memory


def check_client() -> None:
    """The Slurm client commands are on PATH (sacct is optional: accounting may be off)."""
    missing = [c for c in CLIENT_COMMANDS if c != "sacct" and shutil.which(c) is None]
    if missing:
        raise SlurmError(f"'{missing[0]}' is not on PATH ({', '.join(missing)} missing): --executor slurm needs the "
                         "Slurm client commands; run on a Slurm login node, or here with --executor local")


def partitions() -> set[str]:
    return {p.strip() for p in _run(["sinfo", "-h", "-o", "%R"], timeout=30).split() if p.strip()}


def user_accounts() -> set[str] | None:
    """The accounts the user has associations with (sacctmgr); None when that cannot be known."""
    import getpass
    try:
        text = _run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={getpass.getuser()}", "format=account"],
                    timeout=30)
    except SlurmError:
        return None
    found = {a.strip() for a in text.split() if a.strip()}
    return found or None


def check_names(slurm: SlurmConfig) -> None:
    """slurm.partition / slurm.cpu_partition name partitions of this cluster, and slurm.account is one of the
    user's accounts (when sacctmgr can tell): one line before anything is submitted, not half a stage queued."""
    known = partitions()
    for key in ("partition", "cpu_partition"):
        value = getattr(slurm, key)
        if value and value not in known:
            raise SlurmError(f"slurm.{key}={value!r} is not a partition of this cluster (sinfo lists: "
                             f"{', '.join(sorted(known)) or 'none'})")
    if slurm.account:
        accounts = user_accounts()
        if accounts is not None and slurm.account not in accounts:
            raise SlurmError(f"slurm.account={slurm.account!r} is not an account of this user (sacctmgr lists: "
                             f"{', '.join(sorted(accounts))})")


def node_hostnames() -> set[str]:
    try:
        return {h for h in _run(["sinfo", "-h", "-N", "-o", "%n"], timeout=30).split() if h}
    except SlurmError:
        return set()


def run_dir_warning(path: Path, hostnames: set[str] | None = None) -> str | None:
    """A warning line when the run directory is likely invisible to the compute nodes: it lies under a
    machine-local root (/tmp, /var/tmp, /dev/shm, /run) and the cluster's nodes are more than one machine
    (more than one NodeHostName in sinfo). A heuristic only: a shared /tmp would be a false alarm."""
    resolved = Path(os.path.abspath(path))
    local = next((r for r in NODE_LOCAL_ROOTS if resolved == Path(r) or Path(r) in resolved.parents), None)
    if local is None:
        return None
    hosts = node_hostnames() if hostnames is None else hostnames
    if len(hosts) <= 1:
        return None
    return (f"warning: the run directory {resolved} is under {local}, which is usually local to each machine; "
            f"the jobs run on {len(hosts)} hosts ({', '.join(sorted(hosts)[:4])}{', ...' if len(hosts) > 4 else ''}) "
            "and may not see it: use a directory on a shared file system (--run-dir)")


def _sbatch_options(ex: submitit.AutoExecutor) -> str:
    """The options of a submission a person would look for first, as sbatch flags (for messages)."""
    params = ex._executor.parameters
    opts = [f"--job-name={params.get('job_name', '')}"]
    for key in ("partition", "account", "qos", "constraint"):
        if params.get(key):
            opts.append(f"--{key}={params[key]}")
    for key, value in params.get("additional_parameters", {}).items():
        if key == "dependency":
            opts.append(f"--{key}={value}")
    return " ".join(opts)


def _sbatch_failure(ex: submitit.AutoExecutor, said: str) -> SlurmError:
    """sbatch's refusal (its stderr) as one line with the sbatch command that failed."""
    lines = [ln.strip() for ln in str(said).strip().splitlines() if ln.strip()]
    said = "; ".join(dict.fromkeys(lines)) or "no output"
    return SlurmError(f"'sbatch {_sbatch_options(ex)} <script in {ex._executor.folder}>' failed: {said}")


# ----------------------------------------------------------------------------- executors

def sbatch_options(slurm: SlurmConfig, kind: str, ranks: int = 1) -> dict[str, Any]:
    """Resource options of one kind of job, as submitit parameters.
    kind: array (one GPU task per array element), cpu_array (the same without a GPU), packed (`ranks`
    tasks of one GPU each, on as many nodes as Slurm needs), cpu_packed (the same without GPUs),
    gpu (one GPU task), cpu (small job), train (nodes x GPUs)."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    p: dict[str, Any] = {"nodes": 1, "tasks_per_node": 1}
    extra: dict[str, Any] = {}
    if kind in ("packed", "cpu_packed"):
        # --ntasks, not nodes x tasks per node: Slurm places the ranks wherever GPUs are free
        del p["tasks_per_node"]
        extra["ntasks"] = ranks
        extra["nodes"] = f"1-{ranks}" if ranks > 1 else 1
        extra["requeue"] = True  # preempted or timed out: requeued, and the requeued job skips what is done
        if kind == "packed" and slurm.array_gpus:
            p["slurm_gpus_per_task"] = slurm.array_gpus
    if kind in ("cpu", "cpu_array", "cpu_packed"):
        partition, p["timeout_min"], p["cpus_per_task"] = slurm.cpu_partition or slurm.partition, slurm.cpu_time, 2
        if kind in ("cpu_array", "cpu_packed"):  # array work (as the sbatch templates say): an array task's time
            p["timeout_min"] = slurm.time
    else:
        partition, p["timeout_min"], p["cpus_per_task"] = slurm.partition, slurm.time, slurm.cpus_per_task
        if slurm.mem_gb:
            p["mem_gb"] = slurm.mem_gb
    if kind in ("array", "gpu") and slurm.array_gpus:
        p["gpus_per_node"] = slurm.array_gpus
    if kind == "train":
        p["nodes"] = slurm.nodes
        p["tasks_per_node"] = max(1, slurm.gpus_per_node)  # one task per GPU
        if slurm.gpus_per_node:
            p["gpus_per_node"] = slurm.gpus_per_node
        # The trainer handles USR1 itself (flag, all ranks save, exit 75); submitit keeps USR2.
        extra["signal"] = f"USR1@{slurm.signal_delay_s}"
    if partition:
        p["slurm_partition"] = partition
    for key in ("account", "qos", "constraint", "exclude"):
        if getattr(slurm, key):
            p[f"slurm_{key}"] = getattr(slurm, key)
    for opt in slurm.extra:
        key, eq, value = opt.lstrip("-").partition("=")
        extra[key] = value if eq else True
    p["slurm_signal_delay_s"] = slurm.signal_delay_s
    p["slurm_setup"] = ["export HDF5_USE_FILE_LOCKING=FALSE"]
    if extra:
        p["slurm_additional_parameters"] = extra
    return p


def make_executor(folder: Path, slurm: SlurmConfig, kind: str, name: str,
                  depends_on: Sequence[str] = (), ranks: int = 1) -> submitit.AutoExecutor:
    if has_control_chars(str(folder)):
        raise ConfigError(f"the log folder {str(folder)!r} contains a newline or control character, which an "
                          "#SBATCH line cannot hold; use another run directory")
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=slurm.max_requeues)
    params = sbatch_options(slurm, kind, ranks)
    if kind in ("array", "cpu_array"):  # 0 = no cap (submitit's own default would be %256)
        params["slurm_array_parallelism"] = slurm.array_parallelism or 1_000_000
    live = live_dependencies(depends_on)
    if live:
        extra = dict(params.get("slurm_additional_parameters", {}))
        extra["dependency"] = "afterany:" + ":".join(live)
        params["slurm_additional_parameters"] = extra
    ex.update_parameters(name=name, **params)
    return ex


def live_dependencies(job_ids: Sequence[str]) -> list[str]:
    """The ids still in the queue: a job long over needs no dependency (and sbatch would refuse one
    the controller has forgotten)."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return []
    queue = queue_states(ids)

    def live(j: str) -> bool:  # an array id stands for all its elements
        base = j.split("_")[0]
        return any(is_active(s) and (e == j or ("_" not in j and e.split("_")[0] == base)) for e, s in queue.items())

    return [j for j in ids if live(j)]


def map_array(folder: Path, fn: Callable, items: Sequence, slurm: SlurmConfig, name: str,
              depends_on: Sequence[str] = (), kind: str = "array", track: "Tracker | None" = None) -> list[submitit.Job]:
    """fn(item) for every item as Slurm job arrays: one array per MaxArraySize items, each capped at
    slurm.array_parallelism tasks at once; with a cap, each array waits for the one before (afterany)
    so the cap holds over all of them. Returns the jobs, one per item, in order. With `track`, each
    array is recorded as an intent before its sbatch and as a ledger entry after (Tracker)."""
    size = max_array_size()
    jobs: list[submitit.Job] = []
    after = list(depends_on)
    for lo in range(0, len(items), size):
        chunk = list(items[lo:lo + size])
        ex = make_executor(folder, slurm, kind, name, after)
        tag = new_tag(track.prefix if track is not None else name)
        if track is not None:
            track.begin(tag, "array", chunk, after, folder)
        chunk_jobs = submit_tracked(ex, fn, [(item,) for item in chunk], tag, array=True,
                                    found=track.found(tag) if track is not None else None)
        if track is not None:
            track.done(tag, chunk_jobs[0].job_id.split("_")[0])
        jobs += chunk_jobs
        if slurm.array_parallelism:
            after = [chunk_jobs[0].job_id.split("_")[0]]
    return jobs


# ----------------------------------------------------------------------------- submission, recorded first
#
# A driver can be killed at any point, between sbatch and the ledger write too. So every submission
# gets a unique tag, the job's --comment; the ledger records an intent under that tag before sbatch runs,
# and the entry (with the job id sbatch answers) replaces it after. A later submitter that finds an
# intent looks the tag up in squeue and sacct (reconcile): a job found is adopted as if recorded; an
# intent whose job never reached the controller is dropped. Three things make "never reached" certain:
# sbatch runs under a guard that kills it when the submitting process dies (PR_SET_PDEATHSIG) or after
# SUBMIT_TIMEOUT_S, the ledger lock is held from intent to entry (whoever holds it next, the submitter
# is gone), and the lookup waits INTENT_GRACE_S for a request already sent to be answered. The job's
# pickles are written under the tag before sbatch and moved to submitit's job-id names after it; the
# job's own script moves them too when the submitter died before doing it.

SUBMIT_TIMEOUT_S = int(os.environ.get("VIP_SBATCH_TIMEOUT_S") or 180)  # sbatch is killed after this long
INTENT_GRACE_S = float(os.environ.get("VIP_INTENT_GRACE_S") or 10)  # ~MessageTimeout: a sent request's answer
_PDEATHSIG = sys.platform.startswith("linux")

_GUARD = """\
import ctypes, os, signal, sys
parent, limit = int(sys.argv[1]), int(sys.argv[2])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: die with the submitter
except Exception:
    pass
if os.getppid() != parent:
    sys.exit("vip: the submitting process is gone; not submitting")
signal.alarm(limit)  # kept across exec: sbatch cannot outlive SUBMIT_TIMEOUT_S
os.execv(sys.argv[3], sys.argv[3:])
"""


def new_tag(prefix: str) -> str:
    """A unique submission tag: a prefix (a Tracker's: the run's config hash, the stage and the step; else
    the job name) and a random part."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{prefix}.{uuid.uuid4().hex[:16]}")


def _staged(folder: Path, tag: str, index: int | str) -> str:
    return str(folder / f".vip-staged-{tag}-{index}.pkl")


def sbatch_text(inner, tag: str, count: int | None) -> str:
    """The sbatch script of one tracked submission (count: array size, None for a single job): the tag
    as --comment, and a setup line that moves the job's pickle into place if the submitter could not."""
    from submitit.core.utils import JobPaths

    params = dict(inner.parameters)
    if count is not None:
        params["map_count"] = count
    extra = dict(params.get("additional_parameters") or {})
    if "comment" in extra:  # slurm.extra has its own --comment: the tag goes first
        extra["comment"] = f"{tag};{extra['comment']}"
        params["additional_parameters"] = extra
    else:
        params["comment"] = tag
    folder = JobPaths.get_first_id_independent_folder(inner.folder)
    f = shlex.quote(str(folder))
    heal = ('_vip_id="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"; '
            '_vip_id="${_vip_id:-$SLURM_JOB_ID}"; '
            f'[ -e {f}/"${{_vip_id}}_submitted.pkl" ] || mv {f}/.vip-staged-{tag}-"${{SLURM_ARRAY_TASK_ID:-0}}".pkl '
            f'{f}/"${{_vip_id}}_submitted.pkl" 2>/dev/null || true  # vip: the submitter was stopped after sbatch')
    params["setup"] = [*params.get("setup", []), heal]
    return submitit_slurm._make_sbatch_string(command=inner._submitit_command_str, folder=inner.folder, **params)


def place_pickles(folder: Path, tag: str, ids: Sequence[str]) -> None:
    """Move the staged pickles of a submission to submitit's names for its job ids (those not moved yet)."""
    from submitit.core.utils import JobPaths

    staged_dir = JobPaths.get_first_id_independent_folder(folder)
    for a, job_id in enumerate(ids):
        src = Path(_staged(staged_dir, tag, a))
        dst = JobPaths(folder, job_id=job_id).submitted_pickle
        try:
            if not dst.exists():
                os.replace(src, dst)
        except FileNotFoundError:
            pass  # the job's own script moved it first


def _discard_staged(folder: Path, tag: str) -> None:
    from submitit.core.utils import JobPaths

    staged_dir = JobPaths.get_first_id_independent_folder(folder)
    for path in [*staged_dir.glob(f".vip-staged-{tag}-*.pkl"), staged_dir / f".submission_file_{tag}.sh"]:
        path.unlink(missing_ok=True)


def _run_sbatch(ex: submitit.AutoExecutor, script: Path) -> str:
    """sbatch <script> under the guard; returns the job id, or raises SlurmError naming the command."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise SlurmError("'sbatch' is not on PATH: --executor slurm (runtime.executor=slurm) needs the Slurm "
                         "client commands; run on a Slurm login node, or here with --executor local")
    r = subprocess.run([sys.executable, "-I", "-c", _GUARD, str(os.getpid()), str(SUBMIT_TIMEOUT_S), exe, str(script)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        said = r.stderr or r.stdout
        if r.returncode == -signal.SIGALRM:
            said = f"no answer in {SUBMIT_TIMEOUT_S}s (killed; VIP_SBATCH_TIMEOUT_S)"
        raise _sbatch_failure(ex, said)
    m = re.search(r"job (\d+)", r.stdout)
    if m is None:
        raise _sbatch_failure(ex, f"could not read a job id in its answer {r.stdout.strip()[:200]!r}")
    return m.group(1)


def submit_tracked(ex: submitit.AutoExecutor, fn: Callable, calls: Sequence[tuple], tag: str, array: bool,
                   found: Callable[[SlurmError], str | None] | None = None) -> list[submitit.Job]:
    """Submit fn(*args) for every args of `calls` as one job array (array=True) or fn() as one job, with
    `tag` as its --comment. `found`: asked when sbatch fails, returns the job id if the job exists anyway."""
    from submitit.core.utils import DelayedSubmission, JobPaths
    from submitit.slurm.slurm import SlurmJob

    inner = ex._executor
    staged_dir = JobPaths.get_first_id_independent_folder(inner.folder)
    staged_dir.mkdir(parents=True, exist_ok=True)
    timeout_min = inner.parameters.get("time", 5)
    for a, args in enumerate(calls):
        delayed = DelayedSubmission(fn, *args)
        delayed.set_timeout(timeout_min, inner.max_num_timeout)
        delayed.dump(_staged(staged_dir, tag, a))
    script = staged_dir / f".submission_file_{tag}.sh"
    script.write_text(sbatch_text(inner, tag, len(calls) if array else None))
    try:
        job_id = _run_sbatch(ex, script)
    except SlurmError as err:
        job_id = found(err) if found is not None else None
        if job_id is None:
            _discard_staged(inner.folder, tag)
            raise
    ids = [f"{job_id}_{a}" for a in range(len(calls))] if array else [job_id]
    place_pickles(inner.folder, tag, ids)
    JobPaths(inner.folder, job_id=job_id).move_temporary_file(script, "submission_file", keep_as_symlink=True)
    tasks = list(range(inner._num_tasks()))
    return [SlurmJob(folder=inner.folder, job_id=i, tasks=tasks) for i in ids]


def tagged_jobs(tag: str, since: float | None = None) -> dict[str, str]:
    """Element id -> state of the jobs whose --comment is `tag`: from squeue (the jobs the controller
    knows), else sacct (where it stores comments). Raises SlurmError when squeue fails."""
    out: dict[str, str] = {}
    for line in _run(["squeue", "-h", "-r", "--me", "-t", "all", "-o", "%i|%T|%k"]).splitlines():
        jid, _, rest = line.strip().partition("|")
        state, _, comment = rest.partition("|")
        if comment.strip().split(";", 1)[0] == tag:
            out.update({e: state.strip() for e in expand_ids(jid)})
    if out:
        return out
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime((since or time.time()) - 120))
    try:
        text = _run(["sacct", "-n", "-X", "-P", "-S", start, "-o", "JobID,State,Comment"])
    except SlurmError:
        return out
    for line in text.splitlines():
        jid, _, rest = line.strip().partition("|")
        state, _, comment = rest.partition("|")
        if comment.strip().split(";", 1)[0] == tag:
            out.update({e: state.split(" ")[0] for e in expand_ids(jid)})
    return out


class Tracker:
    """Records a step's submissions in its ledger: the intent before sbatch, the entry after (under the
    ledger's lock, which the caller holds)."""

    def __init__(self, ledger: Ledger, ctx: StageContext, step: str):
        self.ledger, self.step = ledger, step
        self.prefix = f"vip-{ctx.cfg.hash()[:12]}-s{ctx.stage}-{step}"
        self.intent: dict = {}

    def begin(self, tag: str, kind: str, tasks: list, depends_on: Sequence[str], folder: Path, **more) -> None:
        self.intent = {"tag": tag, "kind": kind, "tasks": list(tasks), "depends_on": list(depends_on),
                       "log_dir": str(folder), "host": socket.gethostname(), "pid": os.getpid(),
                       "pdeathsig": _PDEATHSIG, **more}
        self.ledger.add_intent(self.step, self.intent)

    def found(self, tag: str) -> Callable[[SlurmError], str | None]:
        """After a failed sbatch: the job if it exists all the same; if not, the intent is dropped unless
        sbatch may still have reached the controller (it timed out): then the next submitter decides."""
        def look(err: SlurmError) -> str | None:
            try:
                elements = tagged_jobs(tag, self.intent.get("time"))
            except SlurmError:
                return None
            if elements:
                return next(iter(elements)).split("_")[0]
            if not any(w in str(err).lower() for w in ("timed out", "no answer in", "timeout")):
                self.ledger.drop_intent(tag)
            return None
        return look

    def done(self, tag: str, job_id: str) -> dict:
        entry = entry_for(self.intent, job_id)
        self.ledger.add(self.step, entry, resolves=tag)
        return entry


def entry_for(intent: dict, job_id: str) -> dict:
    """The ledger entry of an intent's job (what the submitter would have written)."""
    kind, tasks = intent["kind"], intent["tasks"]
    entry: dict = {"job_id": job_id, "kind": kind}
    if kind == "array":
        entry["elements"] = {f"{job_id}_{a}": t for a, t in enumerate(tasks)}
    elif kind == "packed":
        entry.update(elements={job_id: None}, tasks=tasks, ranks=intent["ranks"])
    else:
        entry["elements"] = {job_id: None}
    entry.update(depends_on=intent["depends_on"], log_dir=intent["log_dir"], tag=intent["tag"])
    return entry


def reconcile(ledger: Ledger, step: str) -> list[dict]:
    """Resolve the step's intents left by a submitter that was stopped (call under `ledger.lock()`): a job
    found under the tag is adopted (its ledger entry written, its pickles put in place) and returned; an
    intent whose job never reached the controller is dropped. Raises SlurmError when squeue fails."""
    adopted = []
    for intent in ledger.intents(step):
        tag = intent["tag"]
        now = time.time()
        settled = intent.get("time", 0) + SUBMIT_TIMEOUT_S + INTENT_GRACE_S  # no sbatch of it can be alive
        deadline = now + INTENT_GRACE_S if intent.get("pdeathsig") else max(now + INTENT_GRACE_S, settled)
        if now > settled:
            deadline = now
        while True:
            elements = tagged_jobs(tag, intent.get("time"))
            if elements or time.time() >= deadline:
                break
            time.sleep(1)
        if not elements:
            _discard_staged(Path(intent["log_dir"]), tag)
            ledger.drop_intent(tag)
            ledger.record_event(step, {"event": "not_submitted", "tag": tag, "job_id": tag,
                                       "tasks": intent["tasks"], "reason": "its submitter was stopped before "
                                       "sbatch reached the controller"})
            continue
        job_id = sorted(elements, key=lambda e: int(e.split("_")[1]) if "_" in e else 0)[0].split("_")[0]
        entry = {**entry_for(intent, job_id), "adopted": True}
        ids = list(entry["elements"]) if intent["kind"] == "array" else [job_id]
        place_pickles(Path(intent["log_dir"]), tag, ids)
        ledger.add(step, entry, resolves=tag)
        adopted.append(entry)
    return adopted


def reconcile_step(ctx: StageContext, step: str) -> list[dict]:
    """reconcile() of one step of a stage, under its ledger's lock; [] at once when nothing is pending."""
    ledger = ledger_for(ctx)
    if not ledger.intents(step):
        return []
    with ledger.lock():
        return reconcile(ledger, step)


# ----------------------------------------------------------------------------- what runs on the nodes

def log_dir(ctx: StageContext, step: str) -> Path:
    return ctx.run.path / "logs" / (f"stage{ctx.stage}" if ctx.stage >= 1 else "run") / step


def _restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def _element_id() -> str:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "local")


class RequeueLimitError(RuntimeError):
    pass


def own_state() -> str:
    """This job's state as the controller has it (CANCELLED once a user's scancel went through), or ''."""
    try:
        m = re.search(r"\bJobState=(\S+)", _run(["scontrol", "show", "job", "-o", _element_id()], timeout=30))
    except SlurmError:
        return ""
    return m.group(1) if m else ""


class _OnNode(Checkpointable):
    """Shared by array tasks and single jobs: rebuild the StageContext, count restarts, requeue on demand."""

    def __init__(self, step: str, run_path: str, cfg: Config, stage: int):
        self.step, self.run_path, self.cfg, self.stage = step, str(run_path), cfg, stage

    def _ctx(self) -> StageContext:
        return StageContext(RunDir(self.run_path), self.cfg, self.stage)

    def _ledger(self) -> Ledger:
        return ledger_for(self._ctx())

    def _note_restart(self, task) -> None:
        n = _restarts()
        if n == 0:
            return
        self._ledger().record_event(self.step, {"event": "restarted", "job_id": _element_id(), "task": task,
                                                "restart": n, "host": os.environ.get("SLURMD_NODENAME", "")})
        if n > self.cfg.slurm.max_requeues:
            raise RequeueLimitError(f"{self.step} task {task} was requeued {n} times, more than slurm.max_requeues="
                                    f"{self.cfg.slurm.max_requeues}; not running it again")

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on the preemption / time-limit signal: requeue unless over the limit."""
        n = _restarts()
        over = n + 1 > self.cfg.slurm.max_requeues
        self._ledger().record_event(self.step, {"event": "gave_up" if over else "checkpoint", "job_id": _element_id(),
                                                "restart": n, "task": args[0] if args else None})
        if over:
            return None  # submitit then ends the task as failed instead of requeueing it
        return super().checkpoint(*args, **kwargs)

    def _requeue_self(self) -> bool:
        """The work asked to run again (it saved a checkpoint): requeue this job unless over the limit,
        or unless a user cancelled it meanwhile (Slurm says CANCELLED: a cancel is never undone)."""
        n = _restarts()
        if n + 1 > self.cfg.slurm.max_requeues:
            self._ledger().record_event(self.step, {"event": "gave_up", "job_id": _element_id(), "restart": n})
            return False
        if own_state() == "CANCELLED":
            self._ledger().record_event(self.step, {"event": "stopped", "job_id": _element_id(), "restart": n,
                                                    "reason": "cancelled while it asked for a requeue"})
            return False
        self._ledger().record_event(self.step, {"event": "requeue", "job_id": _element_id(), "restart": n})
        subprocess.run(["scontrol", "requeue", _element_id()], check=True, timeout=60)
        return True


class ArrayTask(_OnNode):
    """One task of a fanned-out step, run by a submitit array element: task(index)."""

    def __init__(self, step: str, run_path: str, cfg: Config, stage: int, spec: ArrayStep | None = None):
        super().__init__(step, run_path, cfg, stage)
        self.spec = spec

    def __call__(self, index: int) -> dict:
        t0 = time.time()
        self._note_restart(index)
        ctx = self._ctx()
        spec = self.spec or ARRAY_STEPS[self.step]
        info = {"task": index, "job_id": _element_id(), "host": os.environ.get("SLURMD_NODENAME", socket.gethostname()),
                "restart": _restarts(), "start": t0}
        if spec.done(ctx, index):
            return {**info, "skipped": True, "end": time.time()}
        result = spec.run(ctx, index)
        if result == EXIT_REQUEUE and self._requeue_self():
            return {**info, "requeued": True, "end": time.time()}
        return {**info, "skipped": False, "end": time.time()}


class PackedJob(_OnNode):
    """One packed job of a fanned-out step, run by submitit on every rank (srun, one task per rank):
    rank r of R runs its share of `tasks` (vip.orchestrate.packed), skipping those already done.
    Requeued on preemption like an array task (rank 0 checkpoints); the requeued job skips what is done."""

    def __init__(self, step: str, run_path: str, cfg: Config, stage: int, tasks: Sequence[int],
                 spec: ArrayStep | None = None):
        super().__init__(step, run_path, cfg, stage)
        self.tasks, self.spec = list(tasks), spec

    def __call__(self) -> list[dict]:
        from vip.train.dist import discover

        env = discover()  # srun's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID
        if env.rank == 0:
            self._note_restart(None)
        elif _restarts() > self.cfg.slurm.max_requeues:
            raise RequeueLimitError(f"{self.step} packed job requeued {_restarts()} times, more than "
                                    f"slurm.max_requeues={self.cfg.slurm.max_requeues}; not running it again")
        packed.use_own_gpu(env.local_rank)
        ctx = self._ctx()
        ends = log_dir(ctx, self.step) / f"{_element_id()}.restart{_restarts()}.ended"
        try:
            return packed.run_rank(ctx, self.step, env.rank, env.world_size, self.tasks, self.spec)
        finally:
            ends.mkdir(parents=True, exist_ok=True)
            (ends / str(env.rank)).touch()
            if env.rank == 0:  # submitit lets only rank 0 checkpoint and requeue: it stays while any rank works
                while len(list(ends.iterdir())) < env.world_size:
                    time.sleep(1)


class StepJob(_OnNode):
    """A single job: fn(ctx) on every task of the job (training: one task per GPU, with RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set from Slurm before fn runs).
    fn returning EXIT_REQUEUE (75) or exiting with it on rank 0 requeues the job."""

    def __init__(self, step: str, run_path: str, cfg: Config, stage: int, fn: Callable[[StageContext], Any]):
        super().__init__(step, run_path, cfg, stage)
        self.fn = fn

    def __call__(self) -> Any:
        env = submitit.JobEnvironment()
        if env.global_rank == 0:
            self._note_restart(None)
        set_distributed_env(env)
        try:
            result = self.fn(self._ctx())
        except SystemExit as e:
            if e.code != EXIT_REQUEUE:
                raise
            result = EXIT_REQUEUE
        if result == EXIT_REQUEUE and env.global_rank == 0:
            self._requeue_self()
        return result


def set_distributed_env(env: "submitit.JobEnvironment") -> None:
    """torch.distributed's variables from Slurm's, for launchers that read the environment."""
    os.environ.setdefault("RANK", str(env.global_rank))
    os.environ.setdefault("WORLD_SIZE", str(env.num_tasks))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(max(1, env.num_tasks // max(1, env.num_nodes))))
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = node_address(env.hostnames[0])
    jid = int(re.sub(r"\D", "", str(os.environ.get("SLURM_JOB_ID", "0"))) or 0)
    os.environ.setdefault("MASTER_PORT", str(20000 + jid % 20000))


def node_address(node: str) -> str:
    """The address of a Slurm node (NodeAddr: on a test cluster all nodes are localhost)."""
    try:
        m = re.search(r"NodeAddr=(\S+)", _run(["scontrol", "show", "node", "-o", node], timeout=30))
        return m.group(1) if m else node
    except SlurmError:
        return node


# ----------------------------------------------------------------------------- submission

def submit_array(ctx: StageContext, step: str, indices: Sequence[int] | None = None,
                 depends_on: Sequence[str] = (), spec: ArrayStep | None = None) -> list[str]:
    """Submit the step's tasks that are neither done nor already queued, as job arrays.

    indices: the tasks to consider (default: the step's missing ones; the plan must be written,
    which spec.missing does). Returns the array job ids submitted ([] when nothing was needed)."""
    custom = spec
    spec = spec or ARRAY_STEPS[step]
    ledger = ledger_for(ctx)
    with ledger.lock():
        reconcile(ledger, step)  # a submission a stopped driver did not record: adopted, not repeated
        todo = _unqueued(ctx, ledger, step, spec, indices)
        if not todo:
            return []
        folder = log_dir(ctx, step)
        task = ArrayTask(step, str(ctx.run.path), ctx.cfg, ctx.stage, custom)
        jobs = map_array(folder, task, todo, ctx.cfg.slurm, job_name(ctx.cfg, ctx.stage, step), depends_on,
                         kind=spec.kind, track=Tracker(ledger, ctx, step))
    return list(dict.fromkeys(job.job_id.split("_")[0] for job in jobs))


def _unqueued(ctx: StageContext, ledger, step: str, spec: ArrayStep, indices: Sequence[int] | None) -> list[int]:
    """The tasks to submit: `indices` (default: the step's missing ones), less those already queued."""
    todo = sorted(set(spec.missing(ctx) if indices is None else indices))
    queued = active_tasks(ledger, step)
    return [i for i in todo if i not in queued]


def submit_packed(ctx: StageContext, step: str, indices: Sequence[int] | None = None,
                  depends_on: Sequence[str] = (), spec: ArrayStep | None = None) -> list[str]:
    """Submit the step's tasks that are neither done nor already queued as one packed job of
    packed_ranks(slurm, tasks) ranks (slurm.packed). Returns [job id], or [] when nothing was needed."""
    custom = spec
    spec = spec or ARRAY_STEPS[step]
    ledger = ledger_for(ctx)
    with ledger.lock():
        reconcile(ledger, step)
        todo = _unqueued(ctx, ledger, step, spec, indices)
        if not todo:
            return []
        ranks = packed_ranks(ctx.cfg.slurm, len(todo))
        kind = "cpu_packed" if spec.kind == "cpu_array" else "packed"
        folder = log_dir(ctx, step)
        name = job_name(ctx.cfg, ctx.stage, step)
        ex = make_executor(folder, ctx.cfg.slurm, kind, name, depends_on, ranks)
        track = Tracker(ledger, ctx, step)
        tag = new_tag(track.prefix)
        track.begin(tag, "packed", todo, depends_on, folder, ranks=ranks)
        (job,) = submit_tracked(ex, PackedJob(step, str(ctx.run.path), ctx.cfg, ctx.stage, todo, custom), [()], tag,
                                array=False, found=track.found(tag))
        track.done(tag, job.job_id)
    return [job.job_id]


def packed_results(ledger: Ledger, step: str, job_id: str) -> list[dict]:
    """The per-task records of a finished packed job (all ranks); ranks that left no result are skipped."""
    from submitit.core.utils import JobPaths, pickle_load

    entry = next(e for e in ledger.entries(step) if e["job_id"] == job_id)
    out = []
    for rank in range(entry["ranks"]):
        path = JobPaths(entry["log_dir"], job_id=job_id, task_id=rank).result_pickle
        if path.is_file():  # a killed rank writes none
            outcome, result = pickle_load(path)
            if outcome == "success":
                out += result
    return out


def submit_job(ctx: StageContext, step: str, fn: Callable[[StageContext], Any], kind: str = "cpu",
               depends_on: Sequence[str] = ()) -> str:
    """Submit fn(ctx) as one job (kind cpu, gpu or train) after depends_on (afterany), unless a job
    of this step is already pending or running: then its id is returned and nothing is submitted.
    fn must be picklable (a module-level function): it runs in another process on a node."""
    if kind not in ("cpu", "gpu", "train"):
        raise ValueError(f"submit_job kind must be cpu, gpu or train, got {kind!r}")
    ledger = ledger_for(ctx)
    with ledger.lock():
        reconcile(ledger, step)
        queued = active_tasks(ledger, step)
        if queued:
            return sorted(queued.values())[0]
        folder = log_dir(ctx, step)
        name = job_name(ctx.cfg, ctx.stage, step)
        ex = make_executor(folder, ctx.cfg.slurm, kind, name, depends_on)
        track = Tracker(ledger, ctx, step)
        tag = new_tag(track.prefix)
        track.begin(tag, kind, [None], depends_on, folder)
        (job,) = submit_tracked(ex, StepJob(step, str(ctx.run.path), ctx.cfg, ctx.stage, fn), [()], tag, array=False,
                                found=track.found(tag))
        track.done(tag, job.job_id)
    return job.job_id
