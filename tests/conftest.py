import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker (and for what it starts): -n 2 on 2 cores, without two thread pools spinning
    # against each other on the same cores
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def untrained_dir(tmp_path_factory):
    """A randomly initialised toyvid model in the published layout (fast; no teacher needed)."""
    from vip.models.toyvid import build_untrained

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "untrained"
    build_untrained(steps=3).save(path)
    return path


@pytest.fixture(scope="session")
def scoring_dir():
    """The shipped teacher: a trained model whose leave-one-out variants score differently, for the
    equivalence tests (an untrained model scores every clip 1.0, which no comparison can tell apart)."""
    from vip.models.registry import SHIPPED_TEACHER

    return SHIPPED_TEACHER


# --- Slurm: tests marked `slurm` need a running cluster (.ci/run starts one: scripts/slurm/start_cluster.sh)
import functools  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402


@functools.lru_cache(maxsize=1)
def _slurm_problem() -> str:
    """'' when `sinfo` answers, else why not (one line)."""
    if shutil.which("sinfo") is None:
        return "sinfo is not on PATH (start a test cluster: sudo bash scripts/slurm/start_cluster.sh)"
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s"
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        return f"sinfo failed: {lines[-1] if lines else 'no output'}"
    return ""


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip(NO_GPU)  # the one skip VIP_NO_SKIP lets through: CI machines have no GPU
    if item.get_closest_marker("slurm") is None:
        return
    problem = _slurm_problem()
    if not problem:
        return
    if os.environ.get("VIP_REQUIRE_SLURM") == "1":
        pytest.fail(f"VIP_REQUIRE_SLURM=1 but no Slurm cluster: {problem}", pytrace=False)
    pytest.skip(f"no Slurm cluster: {problem}")


# --- No silent skip: under VIP_NO_SKIP=1 (.ci/run sets it) a test or test module that skips fails
# instead, with its reason (what is missing) as the line. Only tests marked `gpu`, on a machine
# without CUDA, may still skip: CI machines have none.
NO_GPU = "no CUDA GPU (tests marked gpu run on a GPU machine only)"


def _fail_a_skip(report, allowed: bool = False) -> None:
    if not report.skipped or os.environ.get("VIP_NO_SKIP") != "1" or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if allowed and reason == NO_GPU:
        return
    report.outcome = "failed"
    report.longrepr = f"VIP_NO_SKIP=1 (CI) but it skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_a_skip(outcome.get_result(), allowed=item.get_closest_marker("gpu") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # a module-level skip or importorskip
    outcome = yield
    _fail_a_skip(outcome.get_result())


# --- Order for two xdist workers: pytest-xdist's worksteal hands each worker one half of the collection, in
# order, and a worker that runs dry steals from the END of the other's queue. So the heavy modules go first in
# each half, shared between the halves by their seconds: they start at once instead of ending the run late. A
# module stays whole (its module-scoped fixture, e.g. the stage loop's two stages, runs once).
# Worker seconds of the heavy modules, rounded, from the full run of 2026-12-02 on 2 loaded cores; any other
# module counts 8 s per integration test and 1 s per unit test. Only the order depends on them.
MODULE_SECONDS = {
    "tests/integration/test_stage_bad_input.py": 700, "tests/integration/test_train_redpo.py": 650,
    "tests/integration/test_whole_stage.py": 560, "tests/integration/test_stage_loop.py": 380,
    "tests/integration/test_shard_provenance.py": 350, "tests/integration/test_train_world_size.py": 280,
    "tests/integration/test_adaptive_loo_step.py": 210, "tests/unit/bench/test_gpu.py": 200,
    "tests/integration/test_experiment.py": 120, "tests/integration/test_gemini_http.py": 110,
    "tests/integration/test_teacher_quality.py": 60, "tests/integration/test_render_sbatch_cli.py": 60,
}


def _seconds(module: str, items: list) -> int:
    return MODULE_SECONDS.get(module) or sum(8 if "integration" in i.nodeid else 1 for i in items)


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: the split point counts what runs
def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("PYTEST_XDIST_WORKER_COUNT") != "2":
        return
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    heavy = sorted((m for m in modules if _seconds(m, modules[m]) >= 60), key=lambda m: -_seconds(m, modules[m]))
    halves, loads = ([], []), [0, 0]
    for m in heavy:  # greedy: the next heaviest module to the lighter half
        i = loads.index(min(loads))
        halves[i].extend(modules[m])
        loads[i] += _seconds(m, modules[m])
    # light tests fill the first half up to the split point (half the items), so the second half starts
    # with its heavy modules; a light module may be cut at the split
    rest = [item for m in modules if m not in heavy for item in modules[m]]
    fill = max(0, len(items) // 2 - len(halves[0]))
    items[:] = halves[0] + rest[:fill] + halves[1] + rest[fill:]
