import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def untrained_dir(tmp_path_factory):
    """A randomly initialised toyvid model in the published layout (fast; no teacher needed)."""
    from vip.models.toyvid import build_untrained

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "untrained"
    build_untrained(steps=3).save(path)
    return path


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
    if item.get_closest_marker("slurm") is None:
        return
    problem = _slurm_problem()
    if not problem:
        return
    if os.environ.get("VIP_REQUIRE_SLURM") == "1":
        pytest.fail(f"VIP_REQUIRE_SLURM=1 but no Slurm cluster: {problem}", pytrace=False)
    pytest.skip(f"no Slurm cluster: {problem}")
