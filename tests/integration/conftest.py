import pytest

from helpers.gemini_server import KEY, serving
from helpers.train import make_train_run


@pytest.fixture
def train_run(tmp_path, untrained_dir):
    def make(name="run", **kw):
        return make_train_run(tmp_path / name, untrained_dir, **kw)
    return make


@pytest.fixture
def server():
    """The stand-in Gemini HTTP server (helpers.gemini_server)."""
    with serving() as s:
        yield s


@pytest.fixture
def key_env(monkeypatch, tmp_path):
    """An API key for the stand-in server, and an answer cache of the test's own."""
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("VIP_CACHE_DIR", str(tmp_path / "cache"))
