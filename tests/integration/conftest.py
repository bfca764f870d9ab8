import pytest

from helpers.train import make_train_run


@pytest.fixture
def train_run(tmp_path, untrained_dir):
    def make(name="run", **kw):
        return make_train_run(tmp_path / name, untrained_dir, **kw)
    return make
