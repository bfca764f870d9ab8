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
