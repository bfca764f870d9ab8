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
# Worker seconds of the heavy modules, rounded, from the full run of 2026-12-02 at 5595df3 (30:33); any other
# module counts 8 s per integration test and 1 s per unit test. Only the order depends on them.
MODULE_SECONDS = {
    "tests/integration/test_train_redpo.py": 1050, "tests/integration/test_stage_loop.py": 520,
    "tests/integration/test_whole_stage.py": 510, "tests/integration/test_experiment.py": 280,
    "tests/integration/test_stage_bad_input.py": 260, "tests/integration/test_shard_provenance.py": 140,
    "tests/integration/test_train_world_size.py": 130, "tests/integration/test_adaptive_loo_step.py": 100,
    "tests/unit/bench/test_gpu.py": 90, "tests/integration/test_gemini_http.py": 70,
    "tests/integration/test_teacher_quality.py": 60, "tests/integration/test_render_sbatch_cli.py": 60,
}


# Heavy modules with no module-scoped fixture are shared out test by test, not kept whole (the trainer's tests
# were 17 of the 30 minutes on one worker; they use free ports, or fixed ones no other test uses). Their heaviest tests' seconds; the module's other tests share the rest.
SPLIT_MODULES = ("tests/integration/test_train_redpo.py", "tests/integration/test_whole_stage.py")
TEST_SECONDS = {
    "tests/integration/test_train_redpo.py::test_every_block_checkpointing_and_regional_compile_train_the_same_student": 280,
    "tests/integration/test_train_redpo.py::test_resumed_run_matches_an_uninterrupted_one_bit_for_bit": 200,
    "tests/integration/test_train_redpo.py::test_other_launchers_agree_on_ranks[deepspeed]": 130,
    "tests/integration/test_train_redpo.py::test_dropped_prompts_train_on_the_empty_prompt": 110,
    "tests/integration/test_whole_stage.py::test_whole_stage_animatediff": 200,
    "tests/integration/test_whole_stage.py::test_whole_stage_animatediff_lightning": 160,
}


def _seconds(module: str, items: list) -> int:
    return MODULE_SECONDS.get(module) or sum(8 if "integration" in i.nodeid else 1 for i in items)


def _units(modules: dict[str, list]) -> list[tuple[int, list]]:
    """(seconds, items) to share between the halves: a module, or one test of a module that may be split."""
    units = []
    for m, its in modules.items():
        if m not in SPLIT_MODULES:
            units.append((_seconds(m, its), its))
            continue
        named = {i.nodeid: TEST_SECONDS[i.nodeid] for i in its if i.nodeid in TEST_SECONDS}
        each = max(1, (_seconds(m, its) - sum(named.values())) // max(1, len(its) - len(named)))
        units += [(named.get(i.nodeid, each), [i]) for i in its]
    return units


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: the split point counts what runs
def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("PYTEST_XDIST_WORKER_COUNT") != "2":
        return
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    # (dicts and sorted, never sets: every worker must compute the same order, whatever its hash seed)
    heavy_modules = [m for m in modules if _seconds(m, modules[m]) >= 60]
    units = sorted(_units({m: modules[m] for m in heavy_modules}), key=lambda u: -u[0])
    halves, loads = ([], []), [0, 0]
    for seconds, its in units:  # greedy: the next heaviest unit to the lighter half
        i = loads.index(min(loads))
        halves[i].extend(its)
        loads[i] += seconds
    # light tests fill the first half up to the split point (half the items), so the second half starts
    # with its heavy modules; a light module may be cut at the split
    rest = [item for m in modules if m not in heavy_modules for item in modules[m]]
    fill = max(0, len(items) // 2 - len(halves[0]))
    items[:] = halves[0] + rest[:fill] + halves[1] + rest[fill:]
